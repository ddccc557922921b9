"""OpenVINO backend (``pip install 'fastemb[openvino]'``): the bundle's ``model.onnx`` compiled for the CPU.

Same contract as :class:`fastemb.backends.ort.OrtBackend`: ``inputs``, ``outputs``, ``provider``
and ``run(feed, output)``. OpenVINO reads the ONNX graph itself (no conversion step, nothing
written): a static int8 (QuantizeLinear / DequantizeLinear) graph runs as int8, and on a CPU with
AVX-512 BF16 or AMX the float parts may run in bfloat16 (``precision="bf16"``; ``"f32"`` keeps
float32). One infer request per calling thread.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np

PRECISIONS = ("f32", "bf16")


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), as OpenVINO reports it."""
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in caps


class OpenVinoBackend:
    """An OpenVINO compiled model for one encoder graph, latency-tuned (one stream)."""

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "f32") -> None:
        try:
            import openvino as ov
        except ImportError:
            raise ImportError("the OpenVINO backend needs openvino: pip install 'fastemb[openvino]'") from None
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        from fastemb.backends.ort import physical_cores

        self.threads = int(threads or physical_cores())
        core = ov.Core()
        try:
            model = _read(core, Path(path))
        except Exception as e:  # OpenVINO raises its own exception types for a bad file
            raise ValueError(f"OpenVINO cannot read ONNX graph {path}: {e}") from None
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(self.threads),
                  "INFERENCE_PRECISION_HINT": precision}
        self.compiled = core.compile_model(model, "CPU", config)
        self.inputs = [p.get_any_name() for p in model.inputs]
        self.outputs = [p.get_any_name() for p in model.outputs]
        self.precision = precision
        self.provider = f"OpenVINO CPU ({precision})"
        self._local = threading.local()

    def run(self, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer(feed, share_inputs=True)
        return np.array(request.get_tensor(output).data, dtype=np.float32)  # a copy: the request reuses it


def _read(core, path: Path):
    """``core.read_model``; a per-row int8 graph (fastemb.export.rowquant) is read as its
    weight-only form: the same int8 weights, activations quantized by OpenVINO's CPU plugin."""
    import onnx

    model = onnx.load(str(path))
    from fastemb.export.rowquant import is_per_row, weight_only

    if not is_per_row(model):
        return core.read_model(str(path))
    with tempfile.TemporaryDirectory(prefix="fastemb-ov-") as tmp:
        onnx.save(weight_only(model), f"{tmp}/model.onnx")
        return core.read_model(f"{tmp}/model.onnx")

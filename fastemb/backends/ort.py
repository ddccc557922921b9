"""ONNX Runtime backend: one InferenceSession, fed only the inputs the graph declares."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def physical_cores() -> int:
    """Cores this process may run on (affinity-aware); ORT's intra-op pool gets one thread each."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def choose_providers(device: str, providers: Sequence[str] | None = None) -> list[str]:
    """The execution providers to ask for, checked against those this onnxruntime build has."""
    available = ort.get_available_providers()
    if providers is None:
        if device not in DEVICE_PROVIDERS:
            raise ValueError(f"device must be one of {', '.join(DEVICE_PROVIDERS)}, got {device!r}")
        wanted = DEVICE_PROVIDERS[device]
        if wanted[0] not in available:
            raise ValueError(
                f"device={device!r} needs {wanted[0]}, which this onnxruntime does not have "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or use device='cpu'"
            )
        return [p for p in wanted if p in available]
    providers = list(providers)
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise ValueError(f"provider(s) {', '.join(unknown)} not available; this onnxruntime has {', '.join(available)}")
    return providers


class OrtBackend:
    """An onnxruntime session for one encoder graph."""

    def __init__(self, path: str | Path, device: str = "cpu", providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
        self.providers = choose_providers(device, providers)
        opts = ort.SessionOptions()
        self.threads = int(threads or physical_cores())
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise ValueError(f"cannot load ONNX graph {path}: {e}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        running = self.session.get_providers()
        self.provider = running[0]
        if self.provider != self.providers[0]:
            # onnxruntime falls back silently when a provider's libraries (CUDA, cuDNN, TensorRT)
            # fail to load; serving on the CPU by surprise is a 10-100x slowdown.
            where = "the CPU" if self.provider == "CPUExecutionProvider" else self.provider
            warnings.warn(f"asked for {self.providers[0]} but onnxruntime fell back to {where} "
                          f"(session providers: {', '.join(running)}); check the CUDA/TensorRT libraries",
                          RuntimeWarning, stacklevel=3)
        # On a GPU provider, bind the output to device memory: only the [batch, dim] result is
        # copied to the host, once, and onnxruntime does no per-run output allocation dance.
        self._io_device = "cuda" if self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else None

    def run(self, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
        if self._io_device is None:
            return self.session.run([output], feed)[0]
        io = self.session.io_binding()
        for name, value in feed.items():
            io.bind_cpu_input(name, value)
        io.bind_output(output, self._io_device, 0)
        self.session.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()[0]

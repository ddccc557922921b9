"""ONNX Runtime on a GPU, and the Encoder's GPU plumbing, against stand-ins: provider choice, the
fall-back warning, IO binding, ``.plan`` dispatch, OOM retry, and imports that stay light."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastemb.backends.ort as ort_backend
from fastemb.backends.ort import OrtBackend, choose_providers
from fastemb.encoder import Encoder

GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_provider_choice(monkeypatch) -> None:
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: GPU_PROVIDERS[1:])
    assert choose_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="needs TensorrtExecutionProvider.*available: CUDAExecutionProvider, CPUExecutionProvider"):
        choose_providers("tensorrt")
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: GPU_PROVIDERS)
    assert choose_providers("tensorrt") == GPU_PROVIDERS
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="device='cuda' needs CUDAExecutionProvider"):
        choose_providers("cuda")  # no GPU when one was asked for


class FakeIO:
    def __init__(self) -> None:
        self.inputs: dict[str, np.ndarray] = {}
        self.output: tuple | None = None

    def bind_cpu_input(self, name: str, value: np.ndarray) -> None:
        self.inputs[name] = value

    def bind_output(self, name: str, device_type: str, device_id: int) -> None:
        self.output = (name, device_type, device_id)

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        return [self.inputs["input_ids"].astype(np.float32)]


class FakeSession:
    running = ["CPUExecutionProvider"]

    def __init__(self, path, opts, providers) -> None:
        self.ios: list[FakeIO] = []

    def get_inputs(self):
        return [type("I", (), {"name": "input_ids"})()]

    def get_outputs(self):
        return [type("O", (), {"name": "sentence_embedding"})()]

    def get_providers(self) -> list[str]:
        return self.running

    def run(self, outputs, feed):
        raise AssertionError("a GPU session must run through IO binding")

    def io_binding(self) -> FakeIO:
        self.ios.append(FakeIO())
        return self.ios[-1]

    def run_with_iobinding(self, io: FakeIO) -> None:
        assert io.output is not None


def test_silent_cpu_fallback_warns(monkeypatch) -> None:
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: GPU_PROVIDERS)
    monkeypatch.setattr(ort_backend.ort, "InferenceSession", FakeSession)
    with pytest.warns(RuntimeWarning, match="asked for CUDAExecutionProvider but onnxruntime fell back to the CPU"):
        be = OrtBackend("x.onnx", device="cuda")
    assert be.provider == "CPUExecutionProvider"
    monkeypatch.setattr(FakeSession, "running", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(RuntimeWarning, match="asked for TensorrtExecutionProvider but onnxruntime fell back to CUDAExecutionProvider"):
        OrtBackend("x.onnx", device="tensorrt")


def test_gpu_session_uses_io_binding(monkeypatch, recwarn) -> None:
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: GPU_PROVIDERS)
    monkeypatch.setattr(ort_backend.ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(FakeSession, "running", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    be = OrtBackend("x.onnx", device="cuda")
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    np.testing.assert_array_equal(be.run({"input_ids": ids}, "sentence_embedding"), ids)
    assert be.session.ios[0].output == ("sentence_embedding", "cuda", 0)


@pytest.fixture()
def plan_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    from fastemb.backends.profiles import EngineMeta
    from fastemb.bundle import Bundle, write_manifest

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    (b / "model.plan").write_bytes(b"not really an engine")
    EngineMeta("NVIDIA H100 80GB HBM3", "9.0", "10.13.0.35", "fp16", {"batch": [1, 4, 4], "seq": [1, 64, 128]},
               ["input_ids", "attention_mask", "token_type_ids"], ["sentence_embedding"]).save(b / "model.plan.json")
    write_manifest(b, Bundle(b, verify=False).manifest)
    return b


def test_plan_path_dispatches_to_tensorrt(plan_bundle: Path, monkeypatch) -> None:
    import fastemb.backends.tensorrt as trt_backend

    seen = []

    class StandIn(OrtBackend):  # the ONNX graph behind TensorRT's interface
        def __init__(self, plan: Path) -> None:
            seen.append(Path(plan).name)
            super().__init__(plan_bundle / "model.onnx")
            self.provider = "TensorRT"

    monkeypatch.setattr(trt_backend, "TensorRTBackend", StandIn)
    texts = ["one", "two words", "three words here"]
    enc = Encoder(plan_bundle / "model.plan")
    assert seen == ["model.plan"] and enc.provider == "TensorRT"
    np.testing.assert_allclose(enc.encode(texts), Encoder(plan_bundle).encode(texts), atol=1e-6)


def test_plan_without_tensorrt_names_the_extra(plan_bundle: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ImportError, match=r"pip install 'fastemb\[tensorrt\]'"):
        Encoder(plan_bundle / "model.plan")


def test_encoder_retries_oom_in_smaller_batches(tiny_bundle: Path) -> None:
    enc = Encoder(tiny_bundle)
    texts = [f"sentence number {i} " + "word " * (i % 7) for i in range(20)]
    ref = enc.encode(texts, batch_size=16)
    real_run, sizes = enc.backend.run, []

    def flaky(feed, output):
        sizes.append(len(feed["input_ids"]))
        if len(feed["input_ids"]) > 3:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory")
        return real_run(feed, output)

    enc.backend.run = flaky
    np.testing.assert_allclose(enc.encode(texts, batch_size=16), ref, atol=1e-6)
    assert max(sizes) == 16 and min(sizes) <= 3


def test_gpu_modules_import_without_torch_or_tensorrt() -> None:
    code = (
        "import sys\n"
        "import fastemb.backends.profiles, fastemb.backends.kernels, fastemb.backends.tensorrt\n"
        "import fastemb.backends.torch_cuda, fastemb.export.tensorrt, fastemb.encoder\n"
        "print(','.join(m for m in ('torch', 'transformers', 'tensorrt', 'cuda') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

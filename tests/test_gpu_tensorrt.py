"""TensorRT: the runtime backend's binding, buffer and batching logic against stand-ins for
TensorRT and CUDA (everywhere), the int8 Q/DQ graph on ONNX Runtime's CPU (everywhere), and a
real plan built and run (only where tensorrt imports and a GPU exists)."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from fastemb.backends.profiles import ProfileError
from fastemb.backends.tensorrt import TensorRTBackend, require_tensorrt


class FakeCuda:
    """Device memory as host byte arrays; counts allocations."""

    def __init__(self) -> None:
        self.mem: dict[int, np.ndarray] = {}
        self.mallocs = 0

    def malloc(self, nbytes: int) -> int:
        self.mallocs += 1
        ptr = 4096 * self.mallocs
        self.mem[ptr] = np.zeros(nbytes, dtype=np.uint8)
        return ptr

    def free(self, ptr: int) -> None:
        del self.mem[ptr]

    def stream(self) -> int:
        return 7

    def htod(self, dst: int, src: np.ndarray, stream: int) -> None:
        raw = src.view(np.uint8).reshape(-1)
        self.mem[dst][: raw.size] = raw

    def dtoh(self, dst: np.ndarray, src: int, stream: int) -> None:
        dst.view(np.uint8).reshape(-1)[:] = self.mem[src][: dst.nbytes]

    def sync(self, stream: int) -> None:
        pass


FAKE_TRT = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"), nptype=lambda t: t)
DIM = 3


class FakeContext:
    """'Computes' each row's embedding as [mean of masked ids, tokens, rows] from device memory."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.shapes, self.addr, self.shape_calls = engine, {}, {}, []

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addr[name] = ptr

    def set_input_shape(self, name: str, shape: tuple[int, int]) -> bool:
        self.shape_calls.append((name, tuple(shape)))
        lo, _, hi = self.engine.profile
        ok = all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))
        if ok:
            self.shapes[name] = tuple(shape)
        return ok

    def execute_async_v3(self, stream: int) -> bool:
        cuda = self.engine.cuda
        b, s = self.shapes["input_ids"]
        ids = cuda.mem[self.addr["input_ids"]][: b * s * 4].view(np.int32).reshape(b, s)
        mask = cuda.mem[self.addr["attention_mask"]][: b * s * 4].view(np.int32).reshape(b, s)
        n = mask.sum(1)
        out = np.stack([(ids * mask).sum(1) / np.maximum(n, 1), n, np.full(b, b)], axis=1).astype(np.float32)
        cuda.mem[self.addr["sentence_embedding"]][: out.nbytes] = out.view(np.uint8).reshape(-1)
        return True


class FakeEngine:
    """Inputs int32 (as older ONNX parsers made them), listed output-first to test name binding."""

    def __init__(self, cuda: FakeCuda, profile=((1, 2), (4, 8), (4, 16))) -> None:
        self.cuda, self.profile = cuda, profile
        self.tensors = {"sentence_embedding": ("OUTPUT", np.float32, (-1, DIM)),
                        "attention_mask": ("INPUT", np.int32, (-1, -1)), "input_ids": ("INPUT", np.int32, (-1, -1))}
        self.num_io_tensors = len(self.tensors)
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, i: int) -> str:
        return list(self.tensors)[i]

    def get_tensor_mode(self, n: str) -> str:
        return self.tensors[n][0]

    def get_tensor_dtype(self, n: str):
        return self.tensors[n][1]

    def get_tensor_shape(self, n: str):
        return self.tensors[n][2]

    def get_tensor_profile_shape(self, n: str, index: int):
        assert index == 0
        return [list(x) for x in self.profile]

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


def _feed(rows: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows * 100 + seq)
    ids = rng.integers(1, 1000, (rows, seq)).astype(np.int64)
    mask = (np.arange(seq)[None, :] < rng.integers(1, seq + 1, rows)[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


def _expected(feed: dict[str, np.ndarray]) -> np.ndarray:
    ids, mask = feed["input_ids"], feed["attention_mask"]
    return ((ids * mask).sum(1) / mask.sum(1)).astype(np.float32)


def test_bindings_by_name_buffers_reused_shapes_set_per_batch() -> None:
    cuda = FakeCuda()
    engine = FakeEngine(cuda)
    be = TensorRTBackend.from_engine(FAKE_TRT, engine, cuda)
    assert be.inputs == ["attention_mask", "input_ids"] and be.outputs == ["sentence_embedding"]
    assert be.profile.batch == (1, 4, 4) and be.profile.seq == (2, 8, 16)
    ctx = engine.contexts[0]
    assert set(ctx.addr) == {"input_ids", "attention_mask", "sentence_embedding"}
    assert cuda.mem[ctx.addr["input_ids"]].size == 4 * 16 * 4  # sized for the profile's max, int32
    for rows, seq in [(3, 5), (1, 16), (10, 7), (4, 1)]:
        feed = _feed(rows, seq)
        out = be.run(feed, "sentence_embedding")
        assert out.shape == (rows, DIM) and out.dtype == np.float32
        np.testing.assert_allclose(out[:, 0], _expected(feed), rtol=1e-6)
        np.testing.assert_array_equal(out[:, 1], feed["attention_mask"].sum(1))
    assert cuda.mallocs == 3  # one buffer per tensor, allocated once
    ids_shapes = [s for n, s in ctx.shape_calls if n == "input_ids"]
    # (10, 7) ran as 4 + 4 + 2 rows; (4, 1) was padded to the profile's min sequence of 2
    assert ids_shapes == [(3, 5), (1, 16), (4, 7), (4, 7), (2, 7), (4, 2)]


def test_out_of_profile_sequence_raises_and_large_batch_can_raise() -> None:
    cuda = FakeCuda()
    be = TensorRTBackend.from_engine(FAKE_TRT, FakeEngine(cuda), cuda)
    with pytest.raises(ProfileError, match=r"sequence length 17 is outside the engine's profile \(sequence 2\.\.16\)"):
        be.run(_feed(2, 17), "sentence_embedding")
    strict = TensorRTBackend.from_engine(FAKE_TRT, FakeEngine(cuda), cuda, on_large_batch="raise")
    with pytest.raises(ProfileError, match=r"batch of 5 is outside the engine's profile \(batch 1\.\.4\)"):
        strict.run(_feed(5, 3), "sentence_embedding")
    with pytest.raises(ValueError, match="no output 'pooled_embedding'"):
        be.run(_feed(2, 3), "pooled_embedding")
    with pytest.raises(ValueError, match=r"input\(s\) \['attention_mask'\] not in the feed"):
        be.run({"input_ids": np.ones((1, 3), np.int64)}, "sentence_embedding")


def test_missing_tensorrt_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ImportError, match=r"pip install 'fastemb\[tensorrt\]'"):
        require_tensorrt()


def test_int8_qdq_graph_runs_and_keeps_head_in_float32(tiny_bundle, tmp_path) -> None:
    import onnx
    import onnxruntime as ort

    from fastemb.backends.profiles import Profile
    from fastemb.bundle import Bundle
    from fastemb.export.tensorrt import calibration_feeds, quantize_qdq_int8

    bundle = Bundle(tiny_bundle)
    profile = Profile.create(batch="1,8,16", max_length=bundle.manifest.max_length)
    feeds = calibration_feeds(bundle, profile)
    assert all(f["input_ids"].shape[0] <= 16 for f in feeds)
    out = tmp_path / "int8.onnx"
    quantize_qdq_int8(bundle.graph("encoder"), out, feeds)
    nodes = onnx.load(str(out)).graph.node
    q = [n for n in nodes if n.op_type == "QuantizeLinear"]
    assert q and not [n for n in q if n.name.startswith(("/pooling/", "/normalize/"))]
    fp32 = ort.InferenceSession(str(bundle.graph("encoder")), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    a = fp32.run(["sentence_embedding"], feeds[0])[0]
    b = int8.run(["sentence_embedding"], feeds[0])[0]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98, cos.min()  # random tiny model; the real check is on the GPU


def _trt_available() -> tuple[bool, str]:
    if importlib.util.find_spec("tensorrt") is None:
        return False, "tensorrt is not importable (pip install 'fastemb[tensorrt]'; not installable on these machines)"
    try:
        from fastemb.backends.tensorrt import CudaRuntime

        CudaRuntime().device()
    except Exception as e:  # noqa: BLE001
        return False, f"no usable CUDA GPU for TensorRT ({e})"
    return True, ""


TRT_OK, TRT_WHY = _trt_available()


@pytest.mark.skipif(not TRT_OK, reason=TRT_WHY or "tensorrt unavailable")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_plan_matches_onnx(tiny_bundle, tmp_path, precision: str) -> None:
    import shutil

    from fastemb.encoder import Encoder
    from fastemb.export.tensorrt import export_tensorrt

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    plan = export_tensorrt(b, batch="1,8,16", seq="1,32,128", precision=precision, log=None)
    texts = ["hello world", "a much longer sentence about the weather in spring", "x"] * 7
    ref = Encoder(b).encode(texts)
    enc = Encoder(plan)
    assert enc.provider == "TensorRT"
    got = enc.encode(texts, batch_size=32)  # 21 rows > profile max 16: split
    assert (ref * got).sum(1).min() >= (0.9999 if precision == "fp32" else 0.999)


@pytest.mark.skipif(TRT_OK, reason="tensorrt is importable here: the missing-library error cannot be provoked")
def test_cli_tensorrt_fails_before_exporting(tiny_bert, tmp_path, capsys) -> None:
    from fastemb.cli import main

    out = tmp_path / "b"
    assert main(["export", str(tiny_bert), str(out), "--tensorrt", "--no-check"]) == 2
    assert "pip install 'fastemb[tensorrt]'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["export", str(tiny_bert), str(out), "--tensorrt", "--tensorrt-batch", "8,4,16"]) == 2
    assert "1 <= min <= opt <= max" in capsys.readouterr().err


def test_export_tensorrt_refuses_bad_requests_before_building(tiny_bundle, tmp_path) -> None:
    import json
    import shutil

    from fastemb.bundle import BundleError
    from fastemb.export.tensorrt import export_tensorrt

    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, int8"):
        export_tensorrt(tiny_bundle, precision="int4", log=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sequence max 512 is above the bundle's max_length 128"):
        export_tensorrt(tiny_bundle, seq="1,64,512", log=None)
    b = tmp_path / "b16"
    shutil.copytree(tiny_bundle, b)
    manifest = json.loads((b / "fastemb.json").read_text())
    manifest.pop("manifest_sha256")  # an edited manifest without its checksum: judged on its fields
    manifest["precision"] = "fp16"
    (b / "fastemb.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="already float16; build a fp32 plan from an fp32 bundle"):
        export_tensorrt(b, precision="fp32", log=None)
    manifest["precision"] = "int8"
    (b / "fastemb.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="dynamically quantized for the CPU"):
        export_tensorrt(b, log=None)

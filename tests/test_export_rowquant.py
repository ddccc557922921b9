"""fastemb.export.rowquant: per-row int8 MatMuls equal a numpy reference and ignore batch-mates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fastemb.encoder import Encoder
from fastemb.export import export
from fastemb.export.rowquant import quantize_per_row

onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

TEXTS = ["A man is playing a guitar.", "Two dogs run on the beach", "hello", "The quick brown fox jumps " * 5]


def reference_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-row int8 written out: each row of x symmetric with its own scale (max |x| / 127),
    w symmetric per column, the integer product exact, scaled back by both scales."""
    ws = np.abs(w).max(axis=0).astype(np.float32) / np.float32(127)
    wq = np.clip(np.round(w / ws), -127, 127).astype(np.int64)
    xs = np.maximum(np.abs(x).max(axis=-1, keepdims=True) * np.float32(1 / 127), np.float32(1e-12))
    xq = np.clip(np.round(x / xs), -127, 127).astype(np.int64)
    return ((xq @ wq).astype(np.float64) * xs * ws).astype(np.float32)


def two_matmul_graph(path: Path, w1: np.ndarray, w2: np.ndarray) -> None:
    """y1 = x @ w1, y2 = x @ w2 (one shared input, like Q, K and V), and y3 = x @ w1 in a node
    named ``keep`` (excluded from quantization: must stay float32)."""
    k = w1.shape[0]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", k])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y1", "y2", "y3")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["y1"], name="mm1"),
             helper.make_node("MatMul", ["x", "w2"], ["y2"], name="mm2"),
             helper.make_node("MatMul", ["x", "w1"], ["y3"], name="keep")]
    graph = helper.make_graph(nodes, "g", [x], outs, [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_per_row_matmul_equals_numpy_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(48, 20)).astype(np.float32)
    w2 = (rng.normal(size=(48, 7)) * np.linspace(0.01, 5, 7)).astype(np.float32)  # columns of very different range
    two_matmul_graph(tmp_path / "f.onnx", w1, w2)
    assert quantize_per_row(tmp_path / "f.onnx", tmp_path / "q.onnx", exclude=["keep"]) == 2
    q = onnx.load(str(tmp_path / "q.onnx"))
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count("QuantizeLinear") == 1  # the shared input once
    assert ops.count("MatMul") == 1  # the excluded node
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    # rows of very different magnitude, one all-zero row, an outlier channel
    x = rng.normal(size=(3, 5, 48)).astype(np.float32) * rng.uniform(0.001, 50, size=(3, 5, 1)).astype(np.float32)
    x[1, 2] = 0.0
    x[2, :, 3] *= 40
    y1, y2, y3 = session.run(["y1", "y2", "y3"], {"x": x})
    for got, w in ((y1, w1), (y2, w2)):
        ref = reference_matmul(x, w)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
        # and it is int8: not the float32 product
        assert np.abs(got - x @ w).max() > 1e-4 * np.abs(x @ w).max()
    np.testing.assert_array_equal(y1[1, 2], 0.0)
    np.testing.assert_allclose(y3, x @ w1, rtol=1e-5, atol=1e-4)  # excluded: float32
    # a row's result depends on that row only: change every other row, this one stays bit-identical
    other = rng.normal(size=x.shape).astype(np.float32) * 100
    other[0, 1] = x[0, 1]
    assert np.array_equal(session.run(["y1"], {"x": other})[0][0, 1], y1[0, 1])
    # and on nothing of the batch's shape: the row alone gives the same numbers
    assert np.array_equal(session.run(["y1"], {"x": x[:1, 1:2]})[0][0, 0], y1[0, 1])


def reference_int8_bert(model_dir: Path, texts: list[str]) -> np.ndarray:
    """The tiny BERT in transformers with every encoder Linear replaced by ``reference_matmul``
    (numpy), mean pooling and L2 normalization, one text at a time."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()

    def int8_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.detach().numpy().T.astype(np.float32)
        y = reference_matmul(x.detach().numpy().astype(np.float32), w) + self.bias.detach().numpy()
        return torch.from_numpy(y)

    for layer in model.encoder.modules():
        if isinstance(layer, torch.nn.Linear):
            layer.forward = int8_forward.__get__(layer)
    out = []
    with torch.no_grad():
        for t in texts:
            h = model(**tok(t, return_tensors="pt", truncation=True, max_length=128)).last_hidden_state[0]
            v = h.mean(0)
            out.append((v / v.norm()).numpy())
    return np.stack(out)


def test_int8_bundle_equals_per_row_reference_and_ignores_batch_mates(tiny_bert: Path, tmp_path: Path) -> None:
    # no SmoothQuant here, so the reference needs no calibration: the export's default method is per-row
    out = export(tiny_bert, tmp_path / "q", quantize="int8", smooth_alpha=None, check=False, log=None)
    enc = Encoder(out, backend="onnxruntime")
    got = enc.encode(TEXTS)
    ref = reference_int8_bert(tiny_bert, TEXTS)
    fp32 = Encoder(export(tiny_bert, tmp_path / "f", check=False, log=None), backend="onnxruntime").encode(TEXTS)
    err_ref, err_fp32 = np.abs(got - ref).max(), np.abs(got - fp32).max()
    # measured: 7e-8 from the reference, 1.2e-4 from float32 (a code may round the other way when
    # float32 sums are added in another order, hence not 0)
    assert err_ref <= 1e-5, err_ref
    assert err_ref < err_fp32 / 100, (err_ref, err_fp32)  # it is the int8 model, not merely near float32
    # one text, one vector: alone, among 100 copies, among longer batch-mates at other batch sizes
    probe = TEXTS[0]
    mates = ["x", "a much longer text that sets the padding " * 6, "?!"]
    rows = np.concatenate([enc.encode(probe)[None], enc.encode([probe] * 100 + mates)[:100],
                           enc.encode(mates * 5 + [probe], batch_size=4)[-1:], enc.encode([probe] + TEXTS, batch_size=64)[:1]])
    assert (rows @ rows[0]).min() >= 0.99999


def test_openvino_reads_the_per_row_bundle_as_weight_only_int8(tiny_bert: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    out = export(tiny_bert, tmp_path / "q", quantize="int8", check=False, log=None)
    ours = Encoder(out, backend="onnxruntime").encode(TEXTS)
    ov = Encoder(out, backend="openvino")
    assert ov.provider.startswith("OpenVINO")
    got = ov.encode(TEXTS)
    # OpenVINO quantizes the activations its own way (groups along each row), so close, not equal
    assert (got * ours).sum(1).min() >= 0.99
    fp32 = Encoder(export(tiny_bert, tmp_path / "f", check=False, log=None), backend="onnxruntime").encode(TEXTS)
    assert (got * fp32).sum(1).min() >= 0.99

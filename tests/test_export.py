"""fastemb.export: bundles reproduce the source model, and bad input leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastemb.bundle import MANIFEST, Bundle
from fastemb.encoder import Encoder
from fastemb.export import export
from fastemb.export.check import ExportCheckError
from tests.conftest import make_tiny_bert, make_tiny_st, minilm_dir

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["A man is playing a guitar.", "Two dogs run on the beach", "hello", "The quick brown fox jumps over the lazy dog " * 3]


def reference_hf_mean(model_dir: Path, texts: list[str]) -> np.ndarray:
    """Mean pooling + L2 computed directly with transformers, one text at a time (no padding)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tok(t, return_tensors="pt", truncation=True, max_length=128)
            h = model(**enc).last_hidden_state[0]
            v = h.mean(0)
            out.append((v / v.norm()).numpy())
    return np.stack(out)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_tiny_bert_bundle_matches_transformers(tiny_bert: Path, tiny_bundle: Path) -> None:
    got = Encoder(tiny_bundle).encode(TEXTS)
    ref = reference_hf_mean(tiny_bert, TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    assert cosines(got, ref).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_manifest_fields_and_checksums(tiny_bundle: Path) -> None:
    raw = json.loads((tiny_bundle / MANIFEST).read_text())
    assert raw["kind"] == "encoder" and raw["dim"] == 32 and raw["pooling"] == "mean"
    assert raw["precision"] == "fp32" and raw["format_version"] == 1
    assert raw["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]  # type_vocab_size 2: kept
    assert set(raw["files"]) == {"model.onnx", "tokenizer.json"}
    assert all(len(h) == 64 for h in raw["files"].values())
    assert raw["extra"]["checks"][0]["min_cosine"] >= 0.9999
    assert sorted(p.name for p in tiny_bundle.iterdir()) == ["fastemb.json", "model.onnx", "tokenizer.json"]


def test_token_type_ids_dropped_when_model_ignores_them(tmp_path: Path) -> None:
    src = make_tiny_bert(tmp_path / "m", type_vocab_size=1)
    out = export(src, tmp_path / "b", log=None)
    assert Bundle(out).manifest.inputs == ["input_ids", "attention_mask"]
    assert Encoder(out).backend.inputs == ["input_ids", "attention_mask"]


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_sentence_transformers_poolings_match(tmp_path: Path, pooling: str) -> None:
    from sentence_transformers import SentenceTransformer

    src = make_tiny_st(tmp_path / "st", pooling=pooling, normalize=pooling != "max")
    out = export(src, tmp_path / "b", log=None)
    m = Bundle(out).manifest
    assert m.pooling == pooling and m.normalize == (pooling != "max") and m.max_length == 64
    ref = SentenceTransformer(str(src), device="cpu").encode(TEXTS, normalize_embeddings=True)
    got = Encoder(out).encode(TEXTS)
    assert cosines(got, ref).min() >= 0.9999
    raw = Encoder(out).encode(TEXTS, normalize=False)
    ref_raw = SentenceTransformer(str(src), device="cpu").encode(TEXTS, normalize_embeddings=False)
    if pooling != "max":  # ST's Normalize module already normalized these
        ref_raw = ref_raw / np.linalg.norm(ref_raw, axis=1, keepdims=True)
        raw = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(raw, ref_raw, atol=2e-4, rtol=1e-3)


def test_dense_module_is_exported(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    src = make_tiny_st(tmp_path / "st", dense=16)
    out = export(src, tmp_path / "b", log=None)
    assert Bundle(out).manifest.dim == 16
    ref = SentenceTransformer(str(src), device="cpu").encode(TEXTS)
    assert cosines(Encoder(out).encode(TEXTS), ref).min() >= 0.9999


def test_int8_and_optimized_exports(tiny_bert: Path, tmp_path: Path) -> None:
    fp32 = Encoder(export(tiny_bert, tmp_path / "opt", optimize=True, log=None)).encode(TEXTS)
    q = export(tiny_bert, tmp_path / "q", quantize="int8", log=None, max_int8_drop=100.0)
    m = Bundle(q).manifest
    assert m.precision == "int8"
    assert [c["precision"] for c in m.extra["checks"]] == ["fp32", "int8"]
    got = Encoder(q).encode(TEXTS)
    assert cosines(got, fp32).min() > 0.9  # a random tiny model; the real model's numbers are in bench/
    import onnx

    ops = {n.op_type for n in onnx.load(str(q / "model.onnx")).graph.node}
    # per-row scales on the integer GEMM (the default), not per-batch ones, not MatMulNBits
    assert "MatMulInteger" in ops and not ops & {"DynamicQuantizeLinear", "MatMulNBits"}
    assert "Attention" in {n.op_type for n in onnx.load(str(tmp_path / "opt" / "model.onnx")).graph.node}


def test_failed_check_leaves_nothing_behind(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastemb.export import check

    monkeypatch.setattr(check, "FP32_MIN_COSINE", 1.5)
    with pytest.raises(ExportCheckError, match="minimum cosine"):
        export(tiny_bert, tmp_path / "b", log=None)
    assert list(tmp_path.iterdir()) == []


def test_failed_int8_check_leaves_nothing_behind(tiny_bert: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the int8 graph's STS-B dev score is lowered by 5 points (torch's is real): a drop beyond the
    # allowed 1.0 must raise, name both scores, and leave neither the bundle nor a staging directory
    from fastemb.export import check

    real = check.score_pairs

    def lowered_for_the_bundle(encode, pairs):
        score = real(encode, pairs)
        return score - 5.0 if isinstance(getattr(encode, "__self__", None), Encoder) else score

    monkeypatch.setattr(check, "score_pairs", lowered_for_the_bundle)
    with pytest.raises(ExportCheckError, match=r"drops (4\.9\d|5\.0\d) points \(.*\), more than the allowed 1\.0"):
        export(tiny_bert, tmp_path / "q", quantize="int8", log=None)
    assert list(tmp_path.iterdir()) == []
    # the same export with a wider allowance passes
    assert (export(tiny_bert, tmp_path / "q", quantize="int8", log=None, max_int8_drop=6.0) / MANIFEST).is_file()


@pytest.mark.parametrize("method", ["per-row", "static", "per-token"])
def test_int8_vector_does_not_depend_on_batch_mates(tiny_bert: Path, tmp_path: Path, method: str) -> None:
    # dynamic int8 takes one activation scale over the whole batch; these methods must not
    q = Encoder(export(tiny_bert, tmp_path / "q", quantize="int8", int8_method=method, check=False, log=None),
                backend="onnxruntime")
    probe = "the same text, many times"
    mates = ["x", "a much longer text that sets the padding and the activation range " * 4, "?!"]
    calls = [q.encode([probe] * 100 + mates, batch_size=32)[:100], q.encode(probe)[None],
             q.encode(mates * 5 + [probe], batch_size=4)[-1:], q.encode([probe] + TEXTS, batch_size=64)[:1]]
    vecs = np.concatenate(calls)
    assert cosines(vecs, np.repeat(vecs[:1], len(vecs), 0)).min() >= 0.9999
    with pytest.raises(ValueError, match="int8_method must be one of"):
        export(tiny_bert, tmp_path / "r", quantize="int8", int8_method="sometimes", log=None)


def test_existing_output_is_refused_unless_overwrite(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        export(tiny_bert, out, log=None)
    assert (out / "keep.txt").read_text() == "mine"
    export(tiny_bert, out, overwrite=True, log=None)
    assert not (out / "keep.txt").exists() and (out / MANIFEST).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export(tmp_path / "nope", tmp_path / "b", log=None)
    bad = tmp_path / "gpt"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        export(bad, tmp_path / "b", log=None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not a supported model directory"):
        export(empty, tmp_path / "b", log=None)
    with pytest.raises(ValueError, match="quantize"):
        export(empty, tmp_path / "b", quantize="int4", log=None)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "gpt"]


def test_cli_export_and_info(tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fastemb.cli import main

    assert main(["export", str(tiny_bert), str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "b" / "model.onnx")]) == 0  # any file in the bundle resolves
    info = json.loads(capsys.readouterr().out)
    assert info["bundle"] == str(tmp_path / "b") and info["dim"] == 32 and info["kind"] == "encoder"
    assert main(["export", str(tiny_bert), str(tmp_path / "b")]) == 2
    assert "output exists" in capsys.readouterr().err


def test_cli_refuses_bad_arguments_before_loading_the_model(tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One ``error:`` line, exit 2, no model loaded (seconds) and nothing written."""
    import fastemb.export.source as source
    from fastemb.cli import main

    monkeypatch.setattr(source, "load_source", lambda *a, **k: pytest.fail("the model was loaded"))
    taken = tmp_path / "taken"
    taken.mkdir()
    cases = [
        (["--max-length", "-5", "--no-check"], "max_length must be an integer >= 2, got -5"),
        (["--max-length", "0"], "max_length must be an integer >= 2, got 0"),
        (["--quantize", "int8", "--fp16"], "choose one of quantize='int8' (CPU) and fp16=True (GPU), not both"),
        (["--eval-pairs", str(tiny_bert / "config.json")],
         "eval_pairs are what the int8 check scores on: pass them with quantize='int8' and check on"),
        (["--quantize", "int8", "--eval-pairs", str(tmp_path / "none.tsv")],
         f"scored pairs file not found: {tmp_path / 'none.tsv'}"),
    ]
    for extra, message in cases:
        assert main(["export", str(tiny_bert), str(tmp_path / "out"), *extra]) == 2
        assert capsys.readouterr().err == f"error: {message}\n"
    assert main(["export", str(tiny_bert), str(taken)]) == 2
    assert capsys.readouterr().err.startswith(f"error: output exists: {taken}")
    assert main(["export", str(tiny_bert), str(tiny_bert), "--overwrite"]) == 2  # would delete the model
    assert "would delete the input" in capsys.readouterr().err
    assert main(["export", str(tiny_bert), str(tiny_bert.parent), "--overwrite"]) == 2  # a folder holding it
    assert "would delete the input" in capsys.readouterr().err
    assert (tiny_bert / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


PAIRS = [("A man is playing a guitar.", "A man plays the guitar.", 4.8),
         ("A woman is slicing an onion.", "A woman is cutting an onion.", 4.2),
         ("A dog runs in the park.", "A cat sleeps on the sofa.", 0.6),
         ("The stock market fell sharply today.", "Shares dropped a lot today.", 3.9),
         ("Two kids are playing football.", "Children play soccer outside.", 3.5),
         ("He is cooking pasta.", "The plane landed on time.", 0.0),
         ("The sun is shining.", "It is a sunny day.", 4.0),
         ("A boy reads a book.", "A girl writes a letter.", 1.2)]


def test_int8_check_scores_the_eval_pairs_given(tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--eval-pairs FILE (here the 3-column format): the int8 check's bundle Spearman is scipy's
    on the bundle's own cosines of those pairs, and the manifest names the file."""
    from scipy.stats import spearmanr

    from fastemb.cli import main

    pairs = tmp_path / "domain.tsv"
    pairs.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS), encoding="utf-8")
    assert main(["export", str(tiny_bert), str(tmp_path / "q"), "--quantize", "int8", "--eval-pairs", str(pairs),
                 "--max-int8-drop", "100"]) == 0
    assert "check int8: domain.tsv Spearman" in capsys.readouterr().out
    report = Bundle(tmp_path / "q").manifest.extra["checks"][-1]
    assert report["precision"] == "int8" and report["eval_pairs"] == "domain.tsv"
    enc = Encoder(tmp_path / "q")
    u, v = enc.encode([a for a, _, _ in PAIRS]), enc.encode([b for _, b, _ in PAIRS])
    expected = 100 * spearmanr(cosines(u, v), [s for _, _, s in PAIRS]).statistic
    assert report["eval_spearman_bundle"] == pytest.approx(expected, abs=1e-3)


def test_default_eval_pairs_are_the_shipped_stsb_dev_split() -> None:
    """STS-B dev, 1,500 pairs, ships inside fastemb with its license (not in distill)."""
    from fastemb.export.check import read_eval_pairs
    from fastemb.sts import STSB_DEV

    assert STSB_DEV.is_relative_to(ROOT / "fastemb") and (STSB_DEV.parent / "LICENSE.txt").is_file()
    pairs = read_eval_pairs(None)
    first = STSB_DEV.read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert len(pairs) == 1500 and (pairs.sentences1[0], pairs.sentences2[0], pairs.scores[0]) == (
        first[5], first[6], float(first[4]))


def test_eval_pairs_too_few_or_all_equal_are_refused(tmp_path: Path) -> None:
    from fastemb.export.check import read_eval_pairs

    same = tmp_path / "same.tsv"
    same.write_text("a\tb\t1\nc\td\t1\ne\tf\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="same.tsv: the evaluation pairs need at least 3 pairs with different scores"):
        read_eval_pairs(same)
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\t1\nc\td\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.tsv:2: expected STS-B format"):
        read_eval_pairs(bad)


def test_max_length_beyond_the_models_positions_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_length 1000 is more than the model's 128 positions"):
        export(tiny_bert, tmp_path / "b", max_length=1000, log=None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_bundles_and_encode_outputs_respect_the_umask(tiny_bert: Path, tiny_bundle: Path, tmp_path: Path,
                                                      umask: int) -> None:
    """Readable by whom the umask allows (other users, a service account), not only the owner."""
    import stat

    from fastemb.cli import main

    (tmp_path / "in.txt").write_text("a text\n")
    old = os.umask(umask)
    try:
        export(tiny_bert, tmp_path / "b", check=False, log=None)
        assert main(["encode", str(tiny_bundle), "--input", str(tmp_path / "in.txt"),
                     "--output", str(tmp_path / "v.npy")]) == 0
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "b") == 0o777 & ~umask
    assert {p.name: mode(p) for p in (tmp_path / "b").iterdir()} == {
        name: 0o666 & ~umask for name in ("fastemb.json", "model.onnx", "tokenizer.json")}
    assert mode(tmp_path / "v.npy") == 0o666 & ~umask


def _export_process(src: Path, out: Path) -> subprocess.Popen:
    """``python -m fastemb export`` in a process, returned once its staging directory exists."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "fastemb", "export", str(src), str(out), "--no-check"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(out.parent.glob(f".{out.name}.tmp-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the export ended before it could be stopped: {proc.communicate()}"
    return proc


def test_sigterm_stops_an_export_like_ctrl_c(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    proc = _export_process(tiny_bert, out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no staging directory, no bundle


def test_the_next_export_cleans_what_a_sigkilled_one_left(tiny_bert: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    from fastemb.cli import main

    out = tmp_path / "b"
    proc = _export_process(tiny_bert, out)
    proc.kill()
    proc.communicate(timeout=60)
    (stage,) = tmp_path.iterdir()
    assert stage.name.startswith(".b.tmp-")  # what SIGKILL leaves: nothing can run on the way out
    assert main(["export", str(tiny_bert), str(out), "--no-check"]) == 0
    assert f"removed {stage}" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    assert Encoder(out).encode("hello").shape == (32,)


@pytest.mark.slow
def test_minilm_bundle_matches_sentence_transformers(minilm_bundle: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from distill.sts import load_stsb

    texts = load_stsb("dev").sentences1[:200]
    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts, batch_size=32)
    got = Encoder(minilm_bundle).encode(texts)
    assert cosines(got, ref).min() >= 0.9999
    assert Bundle(minilm_bundle).manifest.max_length == 256


def test_smoothquant_rescaling_is_exact_in_float32(tiny_bundle: Path, tmp_path: Path) -> None:
    """SmoothQuant moves scale from activations to weights: the float32 graph computes the same."""
    import onnx

    from fastemb.export.smooth import smooth
    from fastemb.tokenize import load_tokenizer, pad_batch

    tok = load_tokenizer(tiny_bundle / "tokenizer.json", 128)
    inputs = ["input_ids", "attention_mask", "token_type_ids"]
    feeds = [pad_batch([e.ids for e in tok.encode_batch(TEXTS)], inputs)]
    n = smooth(tiny_bundle / "model.onnx", tmp_path / "s.onnx", feeds, alpha=0.7)
    assert n == 2 * 4  # per layer: QKV (shared input), attention output, FFN in, FFN out
    assert sum(node.op_type == "Mul" and node.name.startswith("/smooth/") for node in onnx.load(str(tmp_path / "s.onnx")).graph.node) == n
    import onnxruntime as ort

    a = ort.InferenceSession(str(tiny_bundle / "model.onnx")).run(["pooled_embedding"], feeds[0])[0]
    b = ort.InferenceSession(str(tmp_path / "s.onnx")).run(["pooled_embedding"], feeds[0])[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fp16_export_keeps_io_pooling_and_normalization_in_float32(tiny_bert: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto

    out = export(tiny_bert, tmp_path / "h", fp16=True, log=None)
    m = Bundle(out).manifest
    assert m.precision == "fp16"
    assert m.extra["checks"][-1]["precision"] == "fp16" and m.extra["checks"][-1]["min_cosine"] >= 0.999
    g = onnx.load(str(out / "model.onnx")).graph
    assert {o.type.tensor_type.elem_type for o in g.output} == {TensorProto.FLOAT}
    weights = {t.name: t.data_type for t in g.initializer}
    matmuls = [n for n in g.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert matmuls and all(weights[n.input[1]] == TensorProto.FLOAT16 for n in matmuls)
    # the encoder's last hidden state is cast back to float32 before pooling reads it
    producers = {o: n for n in g.node for o in n.output}
    pool_mul = next(n for n in g.node if n.name == "/pooling/Mul")
    cast = producers[pool_mul.input[0]]
    assert cast.op_type == "Cast" and next(a.i for a in cast.attribute if a.name == "to") == TensorProto.FLOAT


def test_quantize_tables_rounds_each_row_within_half_a_step(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from fastemb.export.onnx_graph import quantize_tables

    rng = np.random.default_rng(0)
    big = rng.normal(size=(1500, 6)).astype(np.float32) * rng.uniform(0.01, 10, size=(1500, 1)).astype(np.float32)
    big[7] = 0.0  # an all-zero row (scale 0) must stay zero, not NaN
    small = rng.normal(size=(10, 6)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["big", "ids"], ["a"], axis=0), helper.make_node("Gather", ["small", "sids"], ["b"], axis=0)],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None]),
              helper.make_tensor_value_info("sids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, None), helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(big, "big"), numpy_helper.from_array(small, "small")])
    src, out = tmp_path / "t.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert quantize_tables(src, out) == 1
    kinds = {i.name: i.data_type for i in onnx.load(str(out)).graph.initializer}
    assert kinds == {"small": TensorProto.FLOAT, "big_int8": TensorProto.INT8, "big_row_scale": TensorProto.FLOAT}
    ids = np.array([[0, 7, 1499], [3, 3, 42]], dtype=np.int64)
    sids = np.array([9, 0], dtype=np.int64)
    a, b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"ids": ids, "sids": sids})
    step = np.abs(big).max(axis=1) / 127
    assert np.all(np.abs(a - big[ids]) <= step[ids][..., None] / 2 + 1e-6)
    assert np.array_equal(a[0, 1], np.zeros(6, np.float32))
    assert np.array_equal(b, small[sids])
    # a table another node also reads (tied weights) is left as it is
    shared = helper.make_graph(
        [helper.make_node("Gather", ["big", "ids"], ["a"], axis=0), helper.make_node("Identity", ["big"], ["c"])],
        "s", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, None), helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(big, "big")])
    onnx.save(helper.make_model(shared, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert quantize_tables(src, out) == 0

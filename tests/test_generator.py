"""The generator bundle: export of a tiny random SimBERT, fastemb.Generator on ONNX Runtime gives
the tokens of the torch decoder, runs without torch, and refuses bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")

from test_simbert import tiny_simbert, tiny_tokenizer  # noqa: E402

import fastemb  # noqa: E402
from distill.decoding import BeamSearch, GreedySearch, Sampling, generate_ids  # noqa: E402
from fastemb.bundle import MANIFEST, BundleError  # noqa: E402
from fastemb.export.generator import export_generator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a man is playing guitar", "a cat", "the big dog sits on the mat", "woman plays piano fast"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    model = tiny_simbert(tiny_tokenizer(), seed=1)
    model.save(d / "model")
    export_generator(d / "model", d / "bundle")
    return model, d / "bundle"


@pytest.fixture(scope="module")
def gen(exported):
    return fastemb.Generator(exported[1])


def test_manifest(exported):
    m = json.loads((exported[1] / MANIFEST).read_text())
    assert m["kind"] == "generator" and m["format_version"] == 1 and m["precision"] == "fp32"
    assert m["dim"] == 32 and m["max_length"] == 32 and m["pooling"] == "cls"
    assert m["graphs"] == {"encode_source": "encode_source.onnx", "decode_step": "decode_step.onnx"}
    assert set(m["files"]) == {"encode_source.onnx", "decode_step.onnx", "weights.bin", "tokenizer.json"}
    # the weights are stored once, shared by both graphs
    graphs = sum((exported[1] / g).stat().st_size for g in ("encode_source.onnx", "decode_step.onnx"))
    n_params = sum(p.numel() for p in exported[0].mlm.parameters())  # tied: the embedding counts once
    assert graphs < 100_000 and (exported[1] / "weights.bin").stat().st_size <= 4 * n_params + 64 * 120
    assert m["extra"]["end_id"] == 3 and sorted(m["extra"]["banned_ids"]) == [0, 1, 2, 4]
    assert "past.1.value" in m["extra"]["decode_step"]["inputs"]
    assert not [p for p in exported[1].iterdir() if p.suffix in (".pkl", ".pt", ".pth") or p.name == "pytorch_model.bin"]


@pytest.mark.parametrize(
    "strategy",
    [GreedySearch(), BeamSearch(4, 1.0, 4), BeamSearch(6, 0.5, 3), Sampling(5, top_k=6, seed=11),
     Sampling(4, top_p=0.9, temperature=0.8, seed=2)],
    ids=["greedy", "beam4", "beam6", "topk", "topp"],
)
def test_onnx_tokens_equal_torch_tokens(exported, gen, strategy):
    model, _ = exported
    for text in TEXTS:
        ids = gen.source_ids(text)
        onnx_h = gen.generate_ids(ids, strategy, max_new_tokens=20)
        torch_h = generate_ids(model, ids[0], strategy, max_new_tokens=20)
        assert [h.tokens for h in onnx_h] == [h.tokens for h in torch_h], text
        np.testing.assert_allclose([h.score for h in onnx_h], [h.score for h in torch_h], atol=1e-4)


def test_embed_matches_torch_cls_vectors(exported, gen):
    model, _ = exported
    ref = model.encode(TEXTS)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(gen.embed(TEXTS), ref, atol=1e-5)
    np.testing.assert_allclose(gen.embed(TEXTS[1]), ref[1], atol=1e-5)


def test_generate_and_similar(gen):
    out = gen.generate("a man is playing guitar", num=3, beam_size=5, max_new_tokens=8)
    assert len(out) == 3 and [s for _, s in out] == sorted((s for _, s in out), reverse=True)
    assert gen.generate("a cat", num=4, method="sample", seed=5) == gen.generate("a cat", num=4, method="sample", seed=5)
    sim = gen.similar("a man is playing guitar", num=3, max_new_tokens=8)
    assert 1 <= len(sim) <= 3
    assert [s for _, s in sim] == sorted((s for _, s in sim), reverse=True)
    assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for _, s in sim)
    assert len({t for t, _ in sim}) == len(sim)


def test_bad_input(gen, exported, tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        gen.generate("")
    with pytest.raises(ValueError, match="non-empty"):
        gen.similar("   ")
    with pytest.raises(ValueError, match="num"):
        gen.generate("a cat", num=0)
    with pytest.raises(ValueError, match="num"):
        gen.similar("a cat", num=0)
    with pytest.raises(ValueError, match="beam_size"):
        gen.generate("a cat", beam_size=0)
    with pytest.raises(ValueError, match="beam_size"):
        gen.generate("a cat", beam_size=100_000)
    with pytest.raises(ValueError, match="beam_size"):
        gen.generate("a cat", num=5, beam_size=2)
    with pytest.raises(ValueError, match="positions"):
        gen.generate("a cat", max_new_tokens=200)
    with pytest.raises(ValueError, match="method"):
        gen.generate("a cat", method="magic")
    # an encoder bundle is not a generator bundle
    enc = tmp_path / "enc"
    enc.mkdir()
    m = json.loads((exported[1] / MANIFEST).read_text())
    m.update(kind="encoder", graphs={"encoder": "model.onnx"}, files={})
    (enc / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ValueError, match="not a generator bundle"):
        fastemb.Generator(enc)
    with pytest.raises((BundleError, FileNotFoundError)):
        fastemb.Generator(tmp_path / "nothing")


def test_generator_runs_without_torch(exported):
    code = (
        "import sys, fastemb\n"
        f"g = fastemb.Generator({str(exported[1])!r})\n"
        "g.generate('a cat', num=2, max_new_tokens=5); g.similar('a cat', num=2, max_new_tokens=5)\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)

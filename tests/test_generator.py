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
from fastemb.bundle import MANIFEST, BundleError, Manifest, write_manifest  # noqa: E402
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
    m = Manifest.from_json((exported[1] / MANIFEST).read_text())
    m.kind, m.graphs = "encoder", {"encoder": "model.onnx"}
    write_manifest(enc, m)  # a consistent manifest (its checksum recomputed), of the wrong kind
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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "sample", "temperature": float("inf")}, "temperature must be a finite number > 0.0, got inf"),
        ({"method": "sample", "temperature": float("nan")}, "temperature must be a finite number > 0.0, got nan"),
        ({"method": "sample", "temperature": 0.0}, "temperature must be a finite number > 0.0, got 0.0"),
        ({"length_penalty": float("nan")}, "length_penalty must be a finite number, got nan"),
        ({"length_penalty": float("-inf")}, "length_penalty must be a finite number, got -inf"),
        ({"num": 2.5}, "num must be an integer in 1..128, got 2.5"),
        ({"num": True}, "num must be an integer in 1..128, got True"),
        ({"beam_size": 4.0}, "beam_size must be an integer in 1..128, got 4.0"),
        ({"max_new_tokens": 1.5}, "max_new_tokens must be an integer >= 1, got 1.5"),
        ({"method": "sample", "top_k": 2.5}, "top_k must be an integer >= 0, got 2.5"),
        ({"method": "sample", "top_p": float("nan")}, "top_p must be a finite number > 0.0 and <= 1.0, got nan"),
        ({"method": "sample", "seed": -1}, "seed must be an integer >= 0, got -1"),
    ],
)
def test_generation_numbers_are_refused_with_their_name_and_value(gen, kwargs, message):
    import re

    with pytest.raises(ValueError, match=re.escape(message)):
        gen.generate("a cat", **kwargs)


def test_embed_and_constructor_arguments_are_checked(gen, exported):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        gen.embed(["a cat"], batch_size=0)
    with pytest.raises(TypeError, match="whose order is arbitrary"):
        gen.embed({"a cat", "a dog"})
    with pytest.raises(ValueError, match=r"texts\[1\] has a lone surrogate"):
        gen.embed(["a cat", "a \ud800 dog"])
    for bad in (-1, 0, 1.5):
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            fastemb.Generator(exported[1], threads=bad)


def test_a_tiny_temperature_samples_the_most_probable_tokens(gen):
    """Sampling divides the logits by the temperature: as it goes to 0 the samples become the
    greedy choice (instead of NaN probabilities); scores stay the model's log-probabilities."""
    ((greedy, greedy_score),) = gen.generate("a man is playing guitar", method="greedy", max_new_tokens=8)
    for t in (1e-6, 1e-320):
        samples = gen.generate("a man is playing guitar", num=3, method="sample", temperature=t, seed=0,
                               max_new_tokens=8)
        assert [s for s, _ in samples] == [greedy] * 3
        np.testing.assert_allclose([s for _, s in samples], greedy_score, rtol=1e-5)


def test_edited_max_positions_is_refused_at_load(exported, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(exported[1], b)
    m = json.loads((b / MANIFEST).read_text())
    m["extra"]["max_positions"] = 4096
    (b / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="fastemb.json was changed after export"):
        fastemb.Generator(b)
    m.pop("manifest_sha256", None)  # as an older or hand-written manifest: the graph still says no
    (b / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="max_positions is 4096 but the graph has 64 positions"):
        fastemb.Generator(b)


def test_generator_export_cli_errors_are_one_line_and_exit_2(exported, tmp_path, capsys):
    from fastemb.export.generator import main

    model = tmp_path / "model"
    exported[0].save(model)
    (tmp_path / "taken").mkdir()
    bert = tmp_path / "bert"  # an encoder: BERT weights without a language-model head
    from tests.conftest import make_tiny_bert

    make_tiny_bert(bert)
    capsys.readouterr()  # the progress bars of saving the models above
    cases = [
        ([str(model), str(tmp_path / "taken")], "output exists"),
        ([str(tmp_path / "missing"), str(tmp_path / "o")], "model directory does not exist"),
        ([str(bert), str(tmp_path / "o")], "is not a SimBERT: its weights have no language-model head"),
        ([str(model), str(tmp_path / "o"), "--max-length", "0"], "max_length must be an integer >= 2, got 0"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "o").exists()
    # a real process: no traceback, the one line, status 2
    run = subprocess.run([sys.executable, "-m", "fastemb.export.generator", str(model), str(tmp_path / "taken")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("error: output exists") and "Traceback" not in run.stderr

"""SentenceEncoder: pooling against a direct computation, save/load, and sentence-transformers parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _distill_tiny import SENTENCES, tiny_bert_dir

from distill.model import SentenceEncoder, load_encoder, pool


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory.mktemp("tiny"))


def test_pooling_direct():
    h = torch.tensor([[[1.0, 2.0], [3.0, -4.0], [100.0, 100.0]]])
    m = torch.tensor([[1, 1, 0]])
    assert pool(h, m, "cls").tolist() == [[1.0, 2.0]]
    assert pool(h, m, "mean").tolist() == [[2.0, -1.0]]
    assert pool(h, m, "max").tolist() == [[3.0, 2.0]]
    with pytest.raises(ValueError, match="cls, mean, max"):
        pool(h, m, "median")


def test_pooling_in_float32_for_half_inputs():
    h = torch.full((1, 4, 2), 60000.0, dtype=torch.float16)
    out = pool(h, torch.ones(1, 4, dtype=torch.long), "mean")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_save_load_and_sentence_transformers_parity(tiny_dir, tmp_path, pooling):
    enc = SentenceEncoder.from_pretrained(tiny_dir, pooling=pooling, normalize=True, max_length=32)
    ours = enc.encode(SENTENCES[:4])
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    enc.save(tmp_path / "m")
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == [
        "Transformer",
        "Pooling",
        "Normalize",
    ]
    again = SentenceEncoder.from_pretrained(tmp_path / "m")
    assert (again.pooling, again.normalize, again.max_length) == (pooling, True, 32)
    assert np.allclose(again.encode(SENTENCES[:4]), ours, atol=1e-6)

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert np.allclose(st.encode(SENTENCES[:4]), ours, atol=1e-5)


def test_padding_does_not_change_vectors(tiny_dir):
    enc = SentenceEncoder.from_pretrained(tiny_dir).eval()
    alone = enc(**enc.tokenize(["A short one."]))
    batched = enc(
        **enc.tokenize(["A short one.", "A much longer sentence with many more tokens in it."])
    )
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


def test_not_a_supported_encoder(tmp_path):
    with pytest.raises(ValueError, match="not a supported encoder"):
        load_encoder(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "no-such-model"}')
    with pytest.raises(ValueError, match="not a supported encoder"):
        SentenceEncoder.from_pretrained(tmp_path)


@pytest.mark.slow
def test_minilm_reads_its_sentence_transformers_layout():
    from _distill_tiny import minilm_dir

    enc = SentenceEncoder.from_pretrained(minilm_dir(), attn_implementation="eager")
    assert (enc.pooling, enc.normalize, enc.max_length, enc.dim) == ("mean", True, 256, 384)

"""Whitening: identity covariance after the map, k columns, the linear-layer form, and the saved
Dense module that sentence-transformers applies with no special code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _distill_tiny import SENTENCES, tiny_bert_dir

from distill.model import SentenceEncoder
from distill.whitening import fit_whitening, whiten, whitening_layer


def test_whitened_vectors_have_zero_mean_and_identity_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3.0
    mu, w = fit_whitening(x)
    y = (x - mu) @ w
    assert np.allclose(y.mean(0), 0, atol=1e-9)
    assert np.allclose(np.cov(y, rowvar=False), np.eye(6), atol=1e-8)
    mu4, w4 = fit_whitening(x, k=4)
    assert w4.shape == (6, 4) and np.allclose(w4, w[:, :4])
    layer = whitening_layer(mu4, w4)
    got = layer(torch.from_numpy(x).float()).detach().numpy()
    assert np.allclose(got, (x - mu4) @ w4, atol=1e-3)
    with pytest.raises(ValueError, match="k must be"):
        fit_whitening(x, k=7)


def test_saved_with_the_model_and_loaded_by_sentence_transformers(tmp_path):
    enc = SentenceEncoder.from_pretrained(tiny_bert_dir(tmp_path / "t"), normalize=True)
    whiten(enc, SENTENCES * 3, k=8)
    assert enc.dim == 8 and enc.normalize
    ours = enc.encode(SENTENCES[:4])
    enc.save(tmp_path / "w")
    modules = json.loads((tmp_path / "w" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == [
        "Transformer",
        "Pooling",
        "Dense",
        "Normalize",
    ]
    again = SentenceEncoder.from_pretrained(tmp_path / "w")
    assert np.allclose(again.encode(SENTENCES[:4]), ours, atol=1e-6)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tmp_path / "w"), device="cpu")
    assert np.allclose(st.encode(SENTENCES[:4]), ours, atol=1e-5)

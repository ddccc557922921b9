"""Whitening (closed form): x -> (x - mu) W with W = U S^(-1/2) from the covariance C = U S U^T,
optionally keeping the first k columns (dimension reduction).

It is stored as a linear layer (weight W^T, bias -mu W, identity activation): a
sentence-transformers ``Dense`` module after Pooling and before Normalize, so sentence-transformers
and ``fastemb.export`` apply it with no special code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def fit_whitening(
    vectors: np.ndarray, k: int | None = None, eps: float = 1e-9
) -> tuple[np.ndarray, np.ndarray]:
    """``(mu [d], W [d, k])`` of sentence vectors [n, d], in float64."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"whitening needs [n >= 2, d] vectors, got shape {x.shape}")
    d = x.shape[1]
    if k is not None and not 1 <= k <= d:
        raise ValueError(f"whitening k must be in 1..{d}, got {k}")
    mu = x.mean(axis=0)
    cov = np.cov(x - mu, rowvar=False)
    u, s, _ = np.linalg.svd(cov)  # cov is symmetric PSD: u S u^T, s descending
    w = u / np.sqrt(np.maximum(s, eps))
    return mu, w[:, :k] if k else w


def whitening_layer(mu: np.ndarray, w: np.ndarray) -> nn.Linear:
    """nn.Linear computing (x - mu) W: weight W^T [k, d], bias -mu W [k]."""
    layer = nn.Linear(w.shape[0], w.shape[1], bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
        layer.bias.copy_(torch.from_numpy((-mu @ w).astype(np.float32)))
    return layer


def whiten(
    encoder: nn.Module, sentences: Sequence[str], k: int | None = None, batch_size: int = 64
) -> nn.Module:
    """Fit whitening on the encoder's vectors of ``sentences`` before normalization (after its
    own Dense layers, if any) and attach it (in place).

    Whitening set earlier on this encoder is replaced (a whitened model loaded from disk holds its
    whitening as a Dense layer: whitening it again adds one more); normalization (if the encoder
    has it) stays after it.
    """
    if not hasattr(encoder, "whitening"):
        raise ValueError(
            f"{type(encoder).__name__} does not support whitening (needs a SentenceEncoder)"
        )
    normalize, encoder.normalize, encoder.whitening = encoder.normalize, False, None
    try:
        vectors = encoder.encode(list(sentences), batch_size=batch_size)
    finally:
        encoder.normalize = normalize
    mu, w = fit_whitening(vectors, k)
    encoder.whitening = whitening_layer(mu, w).to(next(encoder.parameters()).device)
    return encoder

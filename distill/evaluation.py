"""Evaluators for training and reports: Spearman x 100 of cosine similarity against gold scores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from distill.data import read_scored_pairs
from distill.sts import SPLITS, ScoredPairs, evaluate_vectors, load_stsb, sts_unique_sentences


def load_scored(split_or_path: str | Path) -> ScoredPairs:
    """An STS-B split name (train/dev/test) or a scored-pairs file (STS-B format or 3-column TSV)."""
    if str(split_or_path) in SPLITS:
        return load_stsb(str(split_or_path))
    rows = read_scored_pairs(split_or_path)
    return ScoredPairs(
        [r.texts[0] for r in rows],
        [r.texts[1] for r in rows],
        np.asarray([r.label for r in rows], dtype=np.float32),
    )


def spearman_of(encoder: object, pairs: ScoredPairs, batch_size: int = 64) -> float:
    """Spearman x 100 of an encoder (anything with ``encode(texts, batch_size)``) on scored pairs."""
    return evaluate_vectors(
        pairs, encoder.encode(sts_unique_sentences(pairs), batch_size=batch_size)
    )


def evaluator(split_or_path: str | Path = "dev", batch_size: int = 64) -> Callable[[object], float]:
    """A trainer ``evaluate`` callable bound to one data set (read once)."""
    pairs = load_scored(split_or_path)
    return lambda encoder: spearman_of(encoder, pairs, batch_size)

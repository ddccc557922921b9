"""Scored sentence pairs (semantic textual similarity): reading them and scoring an encoder on
them, Spearman x 100 of cosine similarity against the gold scores. numpy only.

The int8 export check scores on such pairs (``fastemb export --eval-pairs FILE``); the default,
the STS Benchmark dev split, ships in ``fastemb/resources/stsb`` with its license and readme.
``distill`` evaluates its checkpoints with the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STSB_DEV = Path(__file__).resolve().parent / "resources" / "stsb" / "sts-dev.csv"


@dataclass(frozen=True)
class ScoredPairs:
    """Sentence pairs with a gold similarity score (STS-B: 0..5; any scale works for Spearman)."""

    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray  # float64 [n], as written in the file

    def __len__(self) -> int:
        return len(self.scores)

    def sentences(self) -> list[str]:
        """All sentences, sentences1 then sentences2 (2 x n): what :func:`evaluate_vectors` takes vectors of."""
        return list(self.sentences1) + list(self.sentences2)


def read_scored_pairs(path: str | Path) -> ScoredPairs:
    """Read a TAB-separated file of scored pairs, one pair a line, blank lines skipped:

    - the STS Benchmark format: score in column 4, sentences in columns 5 and 6 (7+ columns), or
    - three columns ``sentence1 TAB sentence2 TAB score`` (the Chinese STS sets, your own data).

    The STS-B files contain unbalanced quotes, so lines are split on tabs, never parsed as CSV.
    A malformed line raises ``ValueError("FILE:LINE: ...")``; an empty file ``"FILE: no rows"``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scored pairs file not found: {path}")
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) >= 7:
                a, b, score = cols[5], cols[6], cols[4]
            elif len(cols) == 3:
                a, b, score = cols
            else:
                raise ValueError(f"{path}:{lineno}: expected STS-B format (7+ tab-separated columns) or "
                                 f"'sentence1<TAB>sentence2<TAB>score', got {len(cols)} columns")
            try:
                value = float(score)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: score is not a number: {score!r}") from None
            if not np.isfinite(value):
                raise ValueError(f"{path}:{lineno}: score is not finite: {score!r}")
            if not a.strip() or not b.strip():
                raise ValueError(f"{path}:{lineno}: empty sentence")
            s1.append(a)
            s2.append(b)
            scores.append(value)
    if not scores:
        raise ValueError(f"{path}: no rows")
    return ScoredPairs(s1, s2, np.asarray(scores, dtype=np.float64))


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties), without scipy."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman needs two 1-D arrays of one length, got {x.shape} and {y.shape}")
    return float(np.corrcoef(_rank(x), _rank(y))[0, 1])


def _rank(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=np.float64)
    sorted_a = a[order]
    # average rank within each run of equal values
    bounds = np.flatnonzero(np.diff(sorted_a)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(a)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e - 1) / 2.0
    return ranks


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, d] arrays, in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1).clip(min=1e-12)
    nb = np.linalg.norm(b, axis=1).clip(min=1e-12)
    return (a * b).sum(axis=1) / (na * nb)


def evaluate_vectors(pairs: ScoredPairs, vectors: np.ndarray) -> float:
    """Spearman x 100 of cosine(u, v) against gold, given the vectors of :meth:`ScoredPairs.sentences`."""
    n = len(pairs)
    if vectors.shape[0] != 2 * n:
        raise ValueError(f"expected {2 * n} vectors (sentences1 then sentences2), got {vectors.shape[0]}")
    return 100.0 * spearman(cosine_rows(vectors[:n], vectors[n:]), pairs.scores)


def evaluate(encode: Callable[[list[str]], np.ndarray], pairs: ScoredPairs | str | Path = STSB_DEV) -> float:
    """Spearman x 100 of ``encode`` (texts -> [n, d] vectors) on ``pairs`` (or a file of them)."""
    if not isinstance(pairs, ScoredPairs):
        pairs = read_scored_pairs(pairs)
    return evaluate_vectors(pairs, np.asarray(encode(pairs.sentences())))

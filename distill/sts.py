"""STS Benchmark: reading the shipped splits and scoring an encoder on them (Spearman x 100)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESOURCES = Path(__file__).resolve().parent / "resources"
STSB_DIR = RESOURCES / "stsb"
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class ScoredPairs:
    """Sentence pairs with a gold similarity score (STS-B: 0..5)."""

    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray  # float32 [n]

    def __len__(self) -> int:
        return len(self.scores)


def read_sts(path: str | Path) -> ScoredPairs:
    """Read an STS-B file: TAB separated, score in column 4, sentences in columns 5 and 6.

    The files contain unbalanced quotes, so they are split on tabs, never parsed as CSV.
    A malformed line raises ``ValueError`` naming the file and the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"STS file not found: {path}")
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 7:
                raise ValueError(f"{path}:{lineno}: expected at least 7 tab-separated columns, got {len(cols)}")
            try:
                score = float(cols[4])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: score column is not a number: {cols[4]!r}") from None
            if not cols[5].strip() or not cols[6].strip():
                raise ValueError(f"{path}:{lineno}: empty sentence")
            s1.append(cols[5])
            s2.append(cols[6])
            scores.append(score)
    if not scores:
        raise ValueError(f"{path}: no rows")
    return ScoredPairs(s1, s2, np.asarray(scores, dtype=np.float32))


def load_stsb(split: str = "test") -> ScoredPairs:
    """One split of the STS Benchmark shipped with the package (``train``, ``dev`` or ``test``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown STS-B split {split!r}; choose one of {', '.join(SPLITS)}")
    return read_sts(STSB_DIR / f"sts-{split}.csv")


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


def sts_unique_sentences(pairs: ScoredPairs) -> list[str]:
    """All sentences of the pairs, in order: sentences1 then sentences2 (2 x n)."""
    return list(pairs.sentences1) + list(pairs.sentences2)


def evaluate_vectors(pairs: ScoredPairs, vectors: np.ndarray) -> float:
    """Spearman x 100 of cosine(u, v) against gold, given the vectors of ``sts_unique_sentences``."""
    n = len(pairs)
    if vectors.shape[0] != 2 * n:
        raise ValueError(f"expected {2 * n} vectors (sentences1 then sentences2), got {vectors.shape[0]}")
    return 100.0 * spearman(cosine_rows(vectors[:n], vectors[n:]), pairs.scores)


def evaluate_sts(encode: Callable[[list[str]], np.ndarray], split: str = "test") -> float:
    """Spearman x 100 of an encode function on an STS-B split (cosine similarity)."""
    pairs = load_stsb(split)
    return evaluate_vectors(pairs, np.asarray(encode(sts_unique_sentences(pairs))))


def sentence_key(text: str) -> str:
    """``text`` lowercased, letters and digits only: the key under which two copies of a sentence
    tokenized or punctuated differently (MRPC's and SNLI's sentences in STS-B) are one."""
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def held_out_keys() -> set[str]:
    """:func:`sentence_key` of every STS-B dev and test sentence: what no training corpus may hold
    (dev picks checkpoints, test is what is reported)."""
    keys: set[str] = set()
    for split in ("dev", "test"):
        pairs = load_stsb(split)
        keys.update(sentence_key(s) for s in pairs.sentences1 + pairs.sentences2)
    return keys

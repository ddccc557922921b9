"""STS Benchmark: the shipped splits and scoring an encoder on them (Spearman x 100).

Reading scored pairs and the Spearman score are fastemb's (:mod:`fastemb.sts`); this module adds
the train and test splits, which only training needs, and the held-out sentence keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fastemb.sts import STSB_DEV, ScoredPairs, cosine_rows, evaluate, evaluate_vectors, spearman
from fastemb.sts import read_scored_pairs as read_sts

__all__ = ["SPLITS", "ScoredPairs", "cosine_rows", "evaluate_sts", "evaluate_vectors", "held_out_keys",
           "load_stsb", "read_sts", "sentence_key", "spearman", "sts_unique_sentences"]

RESOURCES = Path(__file__).resolve().parent / "resources"
STSB_DIR = RESOURCES / "stsb"
SPLITS = ("train", "dev", "test")


def load_stsb(split: str = "test") -> ScoredPairs:
    """One split of the STS Benchmark shipped with the packages (``train``, ``dev`` or ``test``).

    The dev split lives in fastemb (its int8 export check scores on it), the others here."""
    if split not in SPLITS:
        raise ValueError(f"unknown STS-B split {split!r}; choose one of {', '.join(SPLITS)}")
    return read_sts(STSB_DEV if split == "dev" else STSB_DIR / f"sts-{split}.csv")


def sts_unique_sentences(pairs: ScoredPairs) -> list[str]:
    """All sentences of the pairs, in order: sentences1 then sentences2 (2 x n)."""
    return pairs.sentences()


def evaluate_sts(encode: Callable[[list[str]], np.ndarray], split: str = "test") -> float:
    """Spearman x 100 of an encode function on an STS-B split (cosine similarity)."""
    return evaluate(encode, load_stsb(split))


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

"""The check every export must pass: the bundle's vectors against the source model in torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastemb.sts import STSB_DEV, ScoredPairs, evaluate, read_scored_pairs
from fastemb.tokenize import load_tokenizer, pad_batch, pad_id_of

CHECK_SENTENCES = Path(__file__).resolve().parent / "check_sentences.txt"
FP32_MIN_COSINE = 0.9999
FP16_MIN_COSINE = 0.999
# int8 must keep the evaluation pairs' Spearman (STS-B dev by default) within this many points of
# the torch model (README).
INT8_MAX_STSB_DROP = 1.0


class ExportCheckError(RuntimeError):
    """The exported graph does not reproduce the source model closely enough."""


@dataclass
class CheckReport:
    precision: str
    sentences: int
    min_cosine: float
    mean_cosine: float
    eval_pairs: str | None = None  # the int8 check's scored pairs (a file, or the shipped STS-B dev)
    eval_spearman_source: float | None = None
    eval_spearman_bundle: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def check_texts() -> list[str]:
    """The shipped check sentences plus edge cases: one word, punctuation, non-Latin, a text far
    past any max_length (truncation must agree)."""
    texts = [t for t in CHECK_SENTENCES.read_text(encoding="utf-8").splitlines() if t]
    texts += ["a", "?!", "Ünïcödé naïve café — 東京 🙂", " ".join(["long"] * 2000)]
    return texts


def feeds(tokenizer_file: Path, max_length: int, inputs: list[str], texts: list[str],
          batch_size: int = 32) -> list[dict[str, np.ndarray]]:
    """``texts`` tokenized and padded exactly as the runtime does, in batches (input order)."""
    tok = load_tokenizer(tokenizer_file, max_length)
    pad = pad_id_of(tok)
    return [pad_batch([e.ids for e in tok.encode_batch(texts[i : i + batch_size])], inputs, pad)
            for i in range(0, len(texts), batch_size)]


def torch_vectors(module: Any, tokenizer_file: Path, max_length: int, inputs: list[str], texts: list[str],
                  batch_size: int = 32) -> np.ndarray:
    """Normalized vectors from the torch source, tokenized exactly as the runtime tokenizes."""
    import torch

    out = []
    with torch.no_grad():
        for feed in feeds(tokenizer_file, max_length, inputs, texts, batch_size):
            normalized, _ = module(*(torch.from_numpy(feed[n]) for n in inputs))
            out.append(normalized.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def compare(reference: np.ndarray, vectors: np.ndarray, precision: str, min_cosine: float | None) -> CheckReport:
    cos = (reference.astype(np.float64) * vectors.astype(np.float64)).sum(1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(vectors, axis=1)).clip(min=1e-12)
    report = CheckReport(precision, len(cos), float(cos.min()), float(cos.mean()))
    if min_cosine is not None and report.min_cosine < min_cosine:
        worst = int(np.argmin(cos))
        raise ExportCheckError(
            f"{precision} export check failed: minimum cosine to the torch model is {report.min_cosine:.6f} "
            f"(text #{worst}), below the required {min_cosine}"
        )
    return report


def read_eval_pairs(path: str | Path | None) -> ScoredPairs:
    """The int8 check's scored pairs: ``path`` (STS-B or ``s1 TAB s2 TAB score``, see
    :func:`fastemb.sts.read_scored_pairs`), or the shipped STS-B dev split when None (never
    test: export must not look at the test split)."""
    where = STSB_DEV if path is None else Path(path)
    pairs = read_scored_pairs(where)
    if len(pairs) < 3 or np.ptp(pairs.scores) == 0:
        raise ValueError(f"{where}: the evaluation pairs need at least 3 pairs with different scores "
                         f"(got {len(pairs)} pair(s), scores {sorted(set(pairs.scores.tolist()))[:3]})")
    return pairs


def score_pairs(encode: Any, pairs: ScoredPairs) -> float:
    """Spearman x 100 of ``encode``'s cosine similarities against the gold scores of ``pairs``."""
    return evaluate(encode, pairs)

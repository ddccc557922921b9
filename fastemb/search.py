"""Decoding strategies for SimBERT generation: greedy, beam search and sampling, in numpy.

A strategy drives a ``StepModel``, which owns the key/value cache and whatever runs the network
(ONNX Runtime in ``fastemb.Generator``, torch in ``distill.decoding``). The strategy only sees
logits and says which rows to keep: ``step(tokens, order)`` first gathers the cache rows
``order`` (beam reordering, expanding one source row to k beams, dropping finished samples) and
then appends ``tokens``. One implementation of the search for both backends means the torch and
the ONNX generators choose the same tokens whenever their logits agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fastemb._checks import integer, number

__all__ = ["BeamSearch", "GreedySearch", "Hypothesis", "Sampling", "SearchStrategy", "StepModel"]

MAX_BEAM_SIZE = 128


class StepModel(Protocol):
    def start(self, input_ids: np.ndarray) -> np.ndarray:
        """Encode one source ``[1, len]`` into a fresh cache; return logits ``[1, vocab]`` of the
        first target token."""

    def step(self, tokens: np.ndarray, order: np.ndarray) -> np.ndarray:
        """Keep cache rows ``order`` ``[rows]`` (in that order), append ``tokens`` ``[rows]``;
        return logits ``[rows, vocab]`` of the next token."""


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # generated tokens, the end token excluded
    score: float  # sum of log-probabilities / length ** length_penalty (length counts the end token)
    finished: bool  # ended with the end token (False: stopped by max_new_tokens)


@dataclass
class _Vocab:
    end_id: int
    banned_ids: Sequence[int] = field(default_factory=tuple)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 (the logits' precision; float64 here cost a millisecond per step at vocab 30k)."""
    x = logits.astype(np.float32, copy=False)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _mask(logp: np.ndarray, vocab: _Vocab, step: int) -> np.ndarray:
    logp[:, list(vocab.banned_ids)] = -np.inf
    if step == 0:  # at least one token before the end
        logp[:, vocab.end_id] = -np.inf
    return logp


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first, ties broken by the lower index."""
    k = min(k, values.size)
    part = np.argpartition(-values, k - 1)[:k] if k < values.size else np.arange(values.size)
    return part[np.lexsort((part, -values[part]))]


class SearchStrategy(Protocol):
    def search(
        self, model: StepModel, input_ids: np.ndarray, max_new_tokens: int, end_id: int,
        banned_ids: Sequence[int] = (),
    ) -> list[Hypothesis]: ...


@dataclass
class GreedySearch:
    """The most probable token at each step; one hypothesis."""

    def search(self, model, input_ids, max_new_tokens, end_id, banned_ids=()):
        vocab = _Vocab(end_id, banned_ids)
        logits = model.start(input_ids)
        tokens: list[int] = []
        score = 0.0
        for t in range(max_new_tokens):
            logp = _mask(log_softmax(logits), vocab, t)[0]
            tok = int(np.argmax(logp))
            score += float(logp[tok])
            if tok == end_id:
                return [Hypothesis(tokens, score / (t + 1), True)]
            tokens.append(tok)
            if t + 1 < max_new_tokens:
                logits = model.step(np.array([tok], np.int64), np.zeros(1, np.int64))
        return [Hypothesis(tokens, score / max(len(tokens), 1), False)]


@dataclass
class BeamSearch:
    """Beam search: keep the ``beam_size`` best partial sequences by summed log-probability.

    A beam that emits the end token becomes a finished hypothesis scored by
    ``sum log p / length ** length_penalty``; search stops once ``beam_size`` hypotheses have
    finished or after ``max_new_tokens`` (the beams still alive then count as unfinished).
    Returns the ``num_hypotheses`` best (n-best), best first.
    """

    beam_size: int = 4
    length_penalty: float = 1.0
    num_hypotheses: int = 1

    def __post_init__(self) -> None:
        integer("beam_size", self.beam_size, 1, MAX_BEAM_SIZE)
        number("length_penalty", self.length_penalty)
        integer("num_hypotheses", self.num_hypotheses, 1, self.beam_size)

    def search(self, model, input_ids, max_new_tokens, end_id, banned_ids=()):
        vocab = _Vocab(end_id, banned_ids)
        k = self.beam_size
        norm = lambda s, n: s / (n**self.length_penalty)  # noqa: E731
        logits = model.start(input_ids)
        seqs: list[list[int]] = [[]]
        scores = np.zeros(1)
        finished: list[Hypothesis] = []
        for t in range(max_new_tokens):
            logp = _mask(log_softmax(logits), vocab, t)
            cand = (scores.astype(np.float32)[:, None] + logp).ravel()  # ranking in float32
            width = logp.shape[1]
            rows, toks, new_scores = [], [], []
            for i in _top(cand, 2 * k):
                if not np.isfinite(cand[i]):
                    break
                row, tok = divmod(int(i), width)
                total = float(scores[row]) + float(logp[row, tok])  # sums kept in float64
                if tok == end_id:
                    finished.append(Hypothesis(seqs[row], norm(total, t + 1), True))
                else:
                    rows.append(row)
                    toks.append(tok)
                    new_scores.append(total)
                    if len(rows) == k:
                        break
            seqs = [seqs[r] + [tok] for r, tok in zip(rows, toks, strict=True)]
            scores = np.array(new_scores)
            if len(finished) >= k or not rows:
                break
            if t + 1 == max_new_tokens:
                finished += [Hypothesis(s, norm(float(sc), t + 1), False) for s, sc in zip(seqs, scores, strict=True)]
                break
            logits = model.step(np.array(toks, np.int64), np.array(rows, np.int64))
        finished.sort(key=lambda h: -h.score)  # stable: earlier (shorter) first among equals
        return finished[: self.num_hypotheses]


@dataclass
class Sampling:
    """``num`` independent samples, decoded together as ``num`` rows of one batch.

    Logits are divided by ``temperature``, cut to the ``top_k`` most probable tokens (0: all)
    and then to the smallest set whose probability reaches ``top_p``; tokens are drawn with
    ``numpy.random.default_rng(seed)``, so one seed gives the same samples. Scores are the
    model's log-probabilities (before temperature and cuts) divided by the length.
    """

    num: int = 5
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        integer("num", self.num, 1, MAX_BEAM_SIZE)
        integer("top_k", self.top_k, 0)  # 0: no cut
        number("top_p", self.top_p, max=1.0, above=0.0)
        number("temperature", self.temperature, above=0.0)
        integer("seed", self.seed, 0, optional=True)

    def search(self, model, input_ids, max_new_tokens, end_id, banned_ids=()):
        vocab = _Vocab(end_id, banned_ids)
        rng = np.random.default_rng(self.seed)
        logits = np.repeat(model.start(input_ids), self.num, axis=0)
        alive = list(range(self.num))  # sample index of each cache row
        order = np.zeros(self.num, np.int64)
        seqs: list[list[int]] = [[] for _ in range(self.num)]
        scores = np.zeros(self.num)
        done: dict[int, Hypothesis] = {}
        for t in range(max_new_tokens):
            logp = _mask(log_softmax(logits), vocab, t)
            probs = self._filter(logp)
            keep, toks = [], []
            for r, s in enumerate(alive):
                tok = int(rng.choice(probs.shape[1], p=probs[r]))
                scores[s] += float(logp[r, tok])
                if tok == end_id:
                    done[s] = Hypothesis(seqs[s], float(scores[s]) / (t + 1), True)
                else:
                    seqs[s].append(tok)
                    keep.append(r)
                    toks.append(tok)
            alive = [alive[r] for r in keep]
            if not alive or t + 1 == max_new_tokens:
                break
            rows = order[keep] if t == 0 else np.array(keep, np.int64)
            logits = model.step(np.array(toks, np.int64), rows)
        for s in alive:
            done[s] = Hypothesis(seqs[s], float(scores[s]) / max(len(seqs[s]), 1), False)
        return [done[s] for s in range(self.num)]

    def _filter(self, logp: np.ndarray) -> np.ndarray:
        # shift before dividing: the best token stays at 0 for any temperature, so a tiny one
        # (1e-320) gives greedy choice instead of -inf - -inf = NaN
        x = logp.astype(np.float64)
        with np.errstate(over="ignore"):  # overflow to -inf is the intended limit
            x = (x - x.max(axis=1, keepdims=True)) / self.temperature
        if 0 < self.top_k < x.shape[1]:
            kth = -np.partition(-x, self.top_k - 1, axis=1)[:, self.top_k - 1 : self.top_k]
            x = np.where(x >= kth, x, -np.inf)
        p = np.exp(x - x.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        if self.top_p < 1.0:
            order = np.argsort(-p, axis=1, kind="stable")
            sorted_p = np.take_along_axis(p, order, axis=1)
            before = np.cumsum(sorted_p, axis=1) - sorted_p  # mass of the tokens ranked above
            cut = np.zeros_like(p, dtype=bool)
            np.put_along_axis(cut, order, before >= self.top_p, axis=1)
            p = np.where(cut, 0.0, p)
            p /= p.sum(axis=1, keepdims=True)
        return p

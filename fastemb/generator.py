"""Similar-sentence generation from a SimBERT generator bundle, on ONNX Runtime (no torch).

The source is encoded once (``encode_source`` graph: [CLS] vector, first-token logits, key/value
cache); each new token is one ``decode_step`` call on the cache, whose named states are gathered
on beam indices between steps. ``similar`` generates candidates and ranks them by the cosine of
their [CLS] vectors to the source's, from the same bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from fastemb._checks import integer
from fastemb.bundle import Bundle, BundleError, check_graph
from fastemb.search import (
    MAX_BEAM_SIZE,
    BeamSearch,
    GreedySearch,
    Hypothesis,
    Sampling,
    SearchStrategy,
)
from fastemb.tokenize import check_texts

__all__ = ["Generator"]


class _OnnxStepModel:
    """The ``fastemb.search.StepModel`` of a generator bundle: cache as a dict of named arrays."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen

    def start(self, input_ids: np.ndarray) -> np.ndarray:
        g = self.gen
        out = g._encode.run(None, {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)})
        self.cache = dict(zip(g._past, out[2:], strict=True))
        self.length = input_ids.shape[1]
        return out[1]

    def step(self, tokens: np.ndarray, order: np.ndarray) -> np.ndarray:
        g = self.gen
        rows = next(iter(self.cache.values())).shape[0]
        if len(order) != rows or not np.array_equal(order, np.arange(rows)):
            self.cache = {k: np.ascontiguousarray(v[order]) for k, v in self.cache.items()}
        b = len(tokens)
        feed = {
            "input_ids": tokens.reshape(b, 1).astype(np.int64),
            "position_ids": np.full((b, 1), self.length, dtype=np.int64),
            "attention_mask": np.ones((b, self.length + 1), dtype=np.int64),
            **self.cache,
        }
        out = g._step.run(None, feed)
        self.cache = dict(zip(g._past, out[1:], strict=True))
        self.length += 1
        return out[0]


class Generator:
    """``Generator(bundle)``: a SimBERT generator bundle on ONNX Runtime.

    ``generate(text, num=5, method="beam", beam_size=8, ...)`` -> ``[(sentence, score)]``;
    ``similar(text, num=5)`` -> the ``num`` generated sentences most similar to ``text`` by
    cosine of [CLS] vectors, ``[(sentence, cosine)]``; ``embed(texts)`` -> [CLS] vectors.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        threads = integer("threads", threads, min=1, optional=True)
        self.bundle = Bundle(path)
        m = self.bundle.manifest
        if m.kind != "generator":
            raise ValueError(
                f"{self.bundle.dir} is a {m.kind!r} bundle, not a generator bundle; "
                "use fastemb.Encoder for encoders, or export a SimBERT with fastemb.export.generator"
            )
        for role in ("encode_source", "decode_step"):
            if role not in m.graphs:
                raise BundleError(f"{self.bundle.dir}: generator bundle without a {role!r} graph")
        x = m.extra
        try:
            self.max_positions = integer("max_positions", x["max_positions"], 2)
            self.end_id = integer("end_id", x["end_id"], 0)
            self.banned_ids = [integer("banned_ids[]", i, 0) for i in x["banned_ids"]]
            self.pad_id = integer("special_ids.pad", x["special_ids"]["pad"], 0)
            layers = integer("num_layers", x["num_layers"], 1)
            vocab = integer("vocab_size", x["vocab_size"], 1)
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{self.bundle.dir}: generator manifest extra is incomplete or wrong: {e}") from None
        self.max_length = int(m.max_length)
        if self.max_length >= self.max_positions:
            raise BundleError(f"{self.bundle.dir}: max_length {self.max_length} leaves no room to generate within "
                              f"max_positions {self.max_positions}")
        self._past = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        available = ort.get_available_providers()
        providers = list(providers or ["CPUExecutionProvider"])
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise ValueError(f"provider(s) {', '.join(unknown)} not available; available: {', '.join(available)}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self._encode = ort.InferenceSession(str(self.bundle.graph("encode_source")), opts, providers=providers)
        self._step = ort.InferenceSession(str(self.bundle.graph("decode_step")), opts, providers=providers)
        check_graph(self.bundle, self._encode, "cls", max_positions=self.max_positions)
        check_graph(self.bundle, self._step, "logits", dim=vocab, max_positions=self.max_positions)
        self.tokenizer = Tokenizer.from_file(str(self.bundle.file("tokenizer.json")))
        # shipped tokenizers may have padding/truncation switched on: set both explicitly
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)

    # -- generation ------------------------------------------------------------------------------
    def source_ids(self, text: str) -> np.ndarray:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text must be a non-empty string")
        check_texts(text)
        return np.asarray([self.tokenizer.encode(text).ids], dtype=np.int64)

    def generate_ids(self, input_ids: np.ndarray, strategy: SearchStrategy, max_new_tokens: int = 32) -> list[Hypothesis]:
        """Run ``strategy`` on one tokenized source ``[1, len]``."""
        integer("max_new_tokens", max_new_tokens, 1)
        n = input_ids.shape[1]
        if n + max_new_tokens > self.max_positions:
            raise ValueError(
                f"source length {n} + max_new_tokens {max_new_tokens} exceeds the model's "
                f"{self.max_positions} positions"
            )
        return strategy.search(_OnnxStepModel(self), input_ids, max_new_tokens, self.end_id, self.banned_ids)

    def generate(
        self,
        text: str,
        num: int = 5,
        method: Literal["beam", "greedy", "sample"] = "beam",
        beam_size: int | None = None,
        length_penalty: float = 1.0,
        max_new_tokens: int = 32,
        top_k: int = 0,
        top_p: float = 1.0,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> list[tuple[str, float]]:
        """Generated sentences with their scores (mean log-probability per token, with the
        length penalty for beam search), best first for beam search.

        ``beam_size`` defaults to ``max(num, 4)`` and must be >= ``num`` (n-best from one beam).
        """
        integer("num", num, 1, MAX_BEAM_SIZE)
        integer("max_new_tokens", max_new_tokens, 1)
        ids = self.source_ids(text)
        if method == "beam":
            beam = max(num, 4) if beam_size is None else integer("beam_size", beam_size, 1, MAX_BEAM_SIZE)
            if beam < num:
                raise ValueError(f"beam_size ({beam}) must be >= num ({num}): the n-best come from one beam")
            strategy: SearchStrategy = BeamSearch(beam, length_penalty, num)
        elif method == "greedy":
            strategy = GreedySearch()
        elif method == "sample":
            strategy = Sampling(num, top_k, top_p, temperature, seed)
        else:
            raise ValueError(f"unknown method {method!r}; choose beam, greedy or sample")
        hyps = self.generate_ids(ids, strategy, max_new_tokens)
        return [(self.tokenizer.decode(h.tokens, skip_special_tokens=True), h.score) for h in hyps]

    # -- retrieval vectors and ranking ----------------------------------------------------------
    def embed(self, texts: str | Sequence[str], batch_size: int = 32) -> np.ndarray:
        """[CLS] vectors, float32 ``[n, dim]`` (``[dim]`` for one string), L2-normalized."""
        texts, single = check_texts(texts)
        batch_size = integer("batch_size", batch_size, 1)
        encs = [self.tokenizer.encode(t).ids for t in texts]
        out = np.zeros((len(texts), self.bundle.manifest.dim), np.float32)
        order = np.argsort([-len(e) for e in encs], kind="stable")
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            width = max(len(encs[i]) for i in idx)
            ids = np.full((len(idx), width), self.pad_id, np.int64)
            mask = np.zeros((len(idx), width), np.int64)
            for r, i in enumerate(idx):
                ids[r, : len(encs[i])] = encs[i]
                mask[r, : len(encs[i])] = 1
            out[idx] = self._encode.run(["cls"], {"input_ids": ids, "attention_mask": mask})[0]
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out

    def similar(
        self,
        text: str,
        num: int = 5,
        candidates: int | None = None,
        method: Literal["beam", "sample"] = "sample",
        max_new_tokens: int = 32,
        top_k: int = 8,
        top_p: float = 1.0,
        temperature: float = 1.0,
        seed: int | None = 0,
    ) -> list[tuple[str, float]]:
        """The ``num`` generated sentences closest to ``text`` (cosine of [CLS] vectors), best first.

        Generates ``candidates`` (default ``4 * num``) sentences, by top-k sampling (SimBERT's
        recipe: more varied than beam search) or beam search; drops duplicates and the input
        itself (compared case- and space-insensitively), then ranks.
        """
        integer("num", num, 1, MAX_BEAM_SIZE)
        candidates = 4 * num if candidates is None else integer("candidates", candidates, 1)
        if not num <= candidates <= MAX_BEAM_SIZE:
            raise ValueError(f"candidates must be in num..{MAX_BEAM_SIZE} ({num}..), got {candidates}")
        if method == "beam":
            gen = self.generate(text, candidates, "beam", candidates, max_new_tokens=max_new_tokens)
        elif method == "sample":
            gen = self.generate(text, candidates, "sample", max_new_tokens=max_new_tokens, top_k=top_k,
                                top_p=top_p, temperature=temperature, seed=seed)
        else:
            raise ValueError(f"unknown method {method!r}; choose sample or beam")
        key = lambda s: " ".join(s.lower().split())  # noqa: E731
        seen = {key(text)}
        unique = []
        for sentence, _ in gen:
            if sentence.strip() and key(sentence) not in seen:
                seen.add(key(sentence))
                unique.append(sentence)
        if not unique:
            return []
        vecs = self.embed([text, *unique])
        scores = vecs[1:] @ vecs[0]
        best = np.argsort(-scores, kind="stable")[:num]
        return [(unique[i], float(scores[i])) for i in best]

    def __repr__(self) -> str:
        return f"Generator({str(self.bundle.dir)!r})"

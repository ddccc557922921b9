"""SimBERT generation in torch: a cached and a recomputing step model under one search.

``CachedStepModel`` encodes the source once into a ``KVCache`` and then runs one token per step,
gathering the cache rows on beam indices; ``RecomputeStepModel`` re-runs the whole sequence
``[CLS] a [SEP] b_1 .. b_t`` every step (the reference implementation's way). Both drive the
strategies of ``fastemb.search`` (greedy, beam search, sampling), which is also what the ONNX
``fastemb.Generator`` uses; so the only difference between them is the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from distill.simbert import KVCache, SimBERT
from fastemb.search import BeamSearch, GreedySearch, Hypothesis, Sampling, SearchStrategy

__all__ = [
    "BeamSearch", "CachedStepModel", "GreedySearch", "Hypothesis", "RecomputeStepModel",
    "Sampling", "generate", "generate_ids",
]


class CachedStepModel:
    """Source keys/values computed once; each step is one token's forward pass."""

    def __init__(self, model: SimBERT) -> None:
        self.model = model
        self.cache = KVCache(model.num_layers)

    @torch.inference_mode()
    def start(self, input_ids: np.ndarray) -> np.ndarray:
        self.cache.reset()
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        hidden = self.model.hidden_states(ids, cache=self.cache)
        return self.model.lm_logits(hidden[:, -1]).float().numpy()

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, order: np.ndarray) -> np.ndarray:
        order_t = torch.as_tensor(order, dtype=torch.long)
        if len(order) != self.cache.mask.shape[0] or not torch.equal(order_t, torch.arange(len(order))):
            self.cache.reorder(order_t)
        ids = torch.as_tensor(tokens, dtype=torch.long)[:, None]
        hidden = self.model.hidden_states(ids, token_type_ids=torch.ones_like(ids), cache=self.cache)
        return self.model.lm_logits(hidden[:, -1]).float().numpy()


class RecomputeStepModel:
    """No cache: every step runs the full sequence under the UniLM mask."""

    def __init__(self, model: SimBERT) -> None:
        self.model = model

    @torch.inference_mode()
    def start(self, input_ids: np.ndarray) -> np.ndarray:
        self.source = torch.as_tensor(input_ids, dtype=torch.long)
        self.target = torch.zeros((1, 0), dtype=torch.long)
        return self._logits()

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, order: np.ndarray) -> np.ndarray:
        self.target = torch.cat(
            [self.target[torch.as_tensor(order)], torch.as_tensor(tokens, dtype=torch.long)[:, None]], 1
        )
        return self._logits()

    def _logits(self) -> np.ndarray:
        rows = self.target.shape[0]
        ids = torch.cat([self.source.expand(rows, -1), self.target], 1)
        types = torch.cat([torch.zeros_like(self.source).expand(rows, -1), torch.ones_like(self.target)], 1)
        hidden = self.model.hidden_states(ids, token_type_ids=types)
        return self.model.lm_logits(hidden[:, -1]).float().numpy()


def special_ids(tokenizer) -> tuple[int, list[int]]:
    """The end token ([SEP]) and the tokens never generated ([PAD], [CLS], [UNK], [MASK])."""
    end = tokenizer.sep_token_id
    banned = [i for i in (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.unk_token_id,
                          tokenizer.mask_token_id) if i is not None]
    return end, banned


def generate_ids(
    model: SimBERT,
    input_ids: Sequence[int] | np.ndarray,
    strategy: SearchStrategy,
    max_new_tokens: int = 32,
    cached: bool = True,
    end_id: int | None = None,
    banned_ids: Sequence[int] | None = None,
) -> list[Hypothesis]:
    """Decode from one tokenized source ``[CLS] a [SEP]``; returns the strategy's hypotheses."""
    ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
    if ids.shape[1] < 2:
        raise ValueError("the source must hold at least [CLS] and [SEP]")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    limit = model.config.max_position_embeddings
    if ids.shape[1] + max_new_tokens > limit:
        raise ValueError(
            f"source length {ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds the model's "
            f"{limit} positions"
        )
    if end_id is None or banned_ids is None:
        e, b = special_ids(model.tokenizer)
        end_id = e if end_id is None else end_id
        banned_ids = b if banned_ids is None else banned_ids
    was_training = model.training
    model.eval()
    try:
        step_model = CachedStepModel(model) if cached else RecomputeStepModel(model)
        return strategy.search(step_model, ids, max_new_tokens, end_id, banned_ids)
    finally:
        model.train(was_training)


def generate(
    model: SimBERT,
    text: str,
    num: int = 5,
    method: Literal["beam", "greedy", "sample"] = "beam",
    beam_size: int = 8,
    length_penalty: float = 1.0,
    max_new_tokens: int = 32,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    seed: int | None = None,
    cached: bool = True,
    max_source_length: int = 128,
) -> list[tuple[str, float]]:
    """Similar sentences to ``text`` with their scores, best first (beam) or in draw order."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if method == "beam":
        strategy: SearchStrategy = BeamSearch(max(beam_size, num), length_penalty, num)
    elif method == "greedy":
        strategy = GreedySearch()
    elif method == "sample":
        strategy = Sampling(num, top_k, top_p, temperature, seed)
    else:
        raise ValueError(f"unknown method {method!r}; choose beam, greedy or sample")
    tok = model.tokenizer
    ids = tok(text, truncation=True, max_length=max_source_length)["input_ids"]
    hyps = generate_ids(model, ids, strategy, max_new_tokens, cached)
    return [(tok.decode(h.tokens, skip_special_tokens=True), h.score) for h in hyps]

"""Tokenization for the runtime: a Hugging Face fast tokenizer, batched by length, padded per batch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


def load_tokenizer(path: str | Path, max_length: int) -> Tokenizer:
    """Load ``tokenizer.json`` with truncation at ``max_length`` and no padding.

    Some shipped tokenizers (all-MiniLM-L6-v2's among them) come with padding and truncation
    switched on; both are set explicitly so batches are padded only to their own longest text.
    """
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length=int(max_length))
    return tok


def check_texts(texts: object) -> tuple[list[str], bool]:
    """Normalize ``str | Sequence[str]`` to a list; return it and whether a single string was given."""
    if isinstance(texts, str):
        return [texts], True
    if isinstance(texts, (bytes, bytearray)):
        raise TypeError("texts must be str or a sequence of str, got bytes (decode it first)")
    if not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be str or a sequence of str, got {type(texts).__name__}")
    out = list(texts)  # type: ignore[arg-type]
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, not str: {t!r:.60}")
    return out, False


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length, longest first (stable for equal lengths)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(ids: Sequence[Sequence[int]], inputs: Sequence[str], pad_id: int = 0) -> dict[str, np.ndarray]:
    """Right-pad token ids to the batch's longest and build the graph's inputs (int64)."""
    width = max(1, max((len(x) for x in ids), default=1))
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    feed = {"input_ids": input_ids, "attention_mask": mask}
    if "token_type_ids" in inputs:
        feed["token_type_ids"] = np.zeros_like(input_ids)
    return {name: feed[name] for name in inputs}


def pad_id_of(tok: Tokenizer) -> int:
    for token in ("[PAD]", "<pad>"):
        i = tok.token_to_id(token)
        if i is not None:
            return int(i)
    return 0

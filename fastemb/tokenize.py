"""Tokenization for the runtime: a Hugging Face fast tokenizer, batched by length, padded per batch."""

from __future__ import annotations

import re
from collections.abc import KeysView, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

_SURROGATE = re.compile("[\ud800-\udfff]")


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
    """Normalize ``str | Sequence[str]`` to a list; return it and whether a single string was given.

    Refused, with the reason: bytes (decode them first), a mapping (its keys would be encoded), a
    set (its order is arbitrary, so row i would not be text i), non-str items, and strings with a
    lone surrogate (not valid Unicode; named by index and position).
    """
    if isinstance(texts, str):
        out, single = [texts], True
    else:
        if isinstance(texts, (bytes, bytearray)):
            raise TypeError("texts must be str or a sequence of str, got bytes (decode it first)")
        if isinstance(texts, Mapping):
            raise TypeError(f"texts must be str or a sequence of str, got {type(texts).__name__} "
                            "(a mapping: pass list(d.values()) or list(d) to say which)")
        if isinstance(texts, AbstractSet) and not isinstance(texts, KeysView):
            raise TypeError(f"texts must be str or a sequence of str, got {type(texts).__name__}, whose order is "
                            "arbitrary (pass sorted(texts) or a list, so that row i is text i)")
        if not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
            raise TypeError(f"texts must be str or a sequence of str, got {type(texts).__name__}")
        out, single = list(texts), False  # type: ignore[arg-type]
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, not str: {t!r:.60}")
        if not t.isascii() and (m := _SURROGATE.search(t)):
            raise ValueError(f"{'text' if single else f'texts[{i}]'} has a lone surrogate {m.group()!r} at character {m.start()}: "
                             "not valid Unicode (decode the source with errors='replace' or fix it)")
    return out, single


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

"""The objective interface: a small ``nn.Module`` that owns an encoder and computes one loss.

Batch format
------------
Every objective turns a list of :class:`Example` into a batch with :meth:`Objective.collate` and
computes a scalar with :meth:`Objective.loss`. The default batch, used by every sentence-vector
objective here, is a plain dict::

    {
        "features": [f_0, f_1, ...],   # one entry per text column of the examples (anchor, positive, ...)
        "labels": Tensor | None,       # [b] float32 (scores) or int64 (classes); None when unlabeled
    }

where ``f_k = encoder.tokenize([ex.texts[k] for ex in examples])`` is a ``dict[str, Tensor]``
(``input_ids`` [b, L], ``attention_mask`` [b, L], optionally ``token_type_ids`` [b, L]) that the
encoder takes as keyword arguments: ``encoder(**f_k) -> Tensor [b, dim]``.

An objective with other inputs (SimBERT's ``[CLS] a [SEP] b [SEP]`` sequences, a distillation loss
that carries teacher vectors) overrides ``collate`` and documents its own dict; the trainer only
moves every tensor in the dict (nested in lists/dicts) to the device and calls ``loss``.

The encoder protocol (``SentenceEncoder``, ``TextCNN``): ``tokenize(texts) -> dict[str, Tensor]``,
``forward(**features) -> [b, dim]``, ``dim: int``, ``save(dir)``. The trainer saves
``objective.encoder``; parameters of the objective itself (a classifier head) are trained and
checkpointed but not part of the saved encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Example:
    """One training example: its text columns and an optional label (score or class index)."""

    texts: tuple[str, ...]
    label: float | int | None = None


class Objective(nn.Module):
    """Base class: ``loss(batch) -> Tensor`` (a scalar), ``forward`` is ``loss``.

    Class attributes a subclass sets:
        name: the CLI name (``--objective``).
        data_format: which reader of :mod:`distill.data` feeds it
            (``scored-pairs``, ``labeled-pairs``, ``triplets``, ``pairs``, ``sentences``).
        num_texts: text columns per example the objective reads (extra columns are ignored).
        min_batch_size: smallest batch that makes sense (in-batch negatives need 2).
        label_dtype: dtype of ``batch["labels"]``, or None when labels are not used.
    """

    name: ClassVar[str] = ""
    data_format: ClassVar[str] = ""
    num_texts: ClassVar[int] = 1
    min_batch_size: ClassVar[int] = 1
    label_dtype: ClassVar[torch.dtype | None] = None

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        """Sentence vectors [b, dim] of one tokenized column, in float32."""
        return self.encoder(**features).float()

    def collate(self, examples: Sequence[Example]) -> dict[str, Any]:
        """Tokenize each text column; stack labels when the objective uses them."""
        if len(examples) < self.min_batch_size:
            raise ValueError(
                f"objective {self.name!r} needs batches of at least {self.min_batch_size} examples "
                f"(in-batch negatives), got {len(examples)}"
            )
        features = [
            self.encoder.tokenize([ex.texts[k] for ex in examples]) for k in range(self.num_texts)
        ]
        labels = None
        if self.label_dtype is not None:
            labels = torch.tensor([ex.label for ex in examples], dtype=self.label_dtype)
        return {"features": features, "labels": labels}

    def loss(self, batch: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.loss(batch)


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """[n, m] cosine similarities of the rows of a [n, d] and b [m, d]."""
    return nn.functional.normalize(a, dim=-1) @ nn.functional.normalize(b, dim=-1).T

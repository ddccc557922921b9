"""Distillation losses: a student learns the teacher's sentence vectors (METHODS.md, "Distillation").

Batch (from :meth:`DistillationLoss.collate`): ``{"features": [f], "targets": Tensor [b, d]}``,
where ``targets`` are the teacher's vectors of the same sentences. ``Example.label`` holds the
row of each sentence in the teacher-vector matrix given to the constructor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from distill.objectives.base import Example, Objective, cosine_matrix

KINDS = ("mse", "cosine", "similarity")


class DistillationLoss(Objective):
    """``mse``: mean over the batch of ||s(x) - t(x)||^2 (default); ``cosine``: mean of
    1 - cos(s(x), t(x)); ``similarity``: mean squared difference of the batch's n x n cosine
    matrices of student and teacher."""

    name: ClassVar[str] = "distill"
    data_format: ClassVar[str] = "sentences"
    num_texts: ClassVar[int] = 1
    min_batch_size: ClassVar[int] = 1

    def __init__(self, encoder: nn.Module, teacher_vectors: np.ndarray,
                 kind: Literal["mse", "cosine", "similarity"] = "mse") -> None:
        super().__init__(encoder)
        if kind not in KINDS:
            raise ValueError(f"unknown distillation loss {kind!r}; choose one of {', '.join(KINDS)}")
        if kind == "similarity":
            self.min_batch_size = 2  # type: ignore[misc]
        self.kind = kind
        self.teacher_vectors = np.asarray(teacher_vectors, dtype=np.float32)

    def collate(self, examples: Sequence[Example]) -> dict[str, Any]:
        batch = super().collate(examples)
        rows = [int(ex.label) for ex in examples]  # type: ignore[arg-type]
        return {"features": batch["features"], "targets": torch.from_numpy(self.teacher_vectors[rows])}

    def loss(self, batch: dict[str, Any]) -> Tensor:
        s = self.embed(batch["features"][0])
        t = batch["targets"].float()
        return distillation_loss(s, t, self.kind)


def distillation_loss(s: Tensor, t: Tensor, kind: str) -> Tensor:
    if s.shape != t.shape:
        raise ValueError(f"student vectors {tuple(s.shape)} and teacher vectors {tuple(t.shape)} differ in shape")
    if kind == "mse":
        return ((s - t) ** 2).sum(dim=-1).mean()
    if kind == "cosine":
        return (1 - nn.functional.cosine_similarity(s, t, dim=-1)).mean()
    if kind == "similarity":
        return ((cosine_matrix(s, s) - cosine_matrix(t, t)) ** 2).mean()
    raise ValueError(f"unknown distillation loss {kind!r}; choose one of {', '.join(KINDS)}")

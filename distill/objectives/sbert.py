"""Sentence-BERT objectives (siamese, shared weights): classification, cosine regression, triplet."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distill.objectives.base import Objective


class SoftmaxLoss(Objective):
    """logits = W [u; v; |u - v|], W of shape (3d, k), no bias; cross-entropy over k labels.

    Batch: features [premise, hypothesis], labels int64 [b] in 0..k-1
    (NLI: 0 entailment, 1 neutral, 2 contradiction). Only the encoder is kept after training.
    """

    name = "sbert-softmax"
    data_format = "labeled-pairs"
    num_texts = 2
    label_dtype = torch.long

    def __init__(self, encoder: nn.Module, num_labels: int = 3) -> None:
        super().__init__(encoder)
        self.classifier = nn.Linear(3 * encoder.dim, num_labels, bias=False)

    def loss(self, batch: dict[str, Any]) -> Tensor:
        u, v = (self.embed(f) for f in batch["features"])
        logits = self.classifier(torch.cat([u, v, (u - v).abs()], dim=-1))
        return F.cross_entropy(logits, batch["labels"])


class CosineRegressionLoss(Objective):
    """mean((cos(u, v) - score / score_scale)^2): the gold score scaled to [0, 1], then MSE.

    Batch: features [s1, s2], labels float32 [b] in [0, score_scale] (STS-B: 0..5).
    """

    name = "sbert-regression"
    data_format = "scored-pairs"
    num_texts = 2
    label_dtype = torch.float32

    def __init__(self, encoder: nn.Module, score_scale: float = 5.0) -> None:
        super().__init__(encoder)
        self.score_scale = float(score_scale)

    def loss(self, batch: dict[str, Any]) -> Tensor:
        u, v = (self.embed(f) for f in batch["features"])
        return F.mse_loss(F.cosine_similarity(u, v, dim=-1), batch["labels"] / self.score_scale)


class TripletLoss(Objective):
    """mean(max(||a - p|| - ||a - n|| + margin, 0)), Euclidean distance, margin 1.

    Batch: features [anchor, positive, negative], no labels.
    """

    name = "sbert-triplet"
    data_format = "triplets"
    num_texts = 3

    def __init__(self, encoder: nn.Module, margin: float = 1.0) -> None:
        super().__init__(encoder)
        self.margin = float(margin)

    def loss(self, batch: dict[str, Any]) -> Tensor:
        a, p, n = (self.embed(f) for f in batch["features"])
        d_ap = torch.linalg.vector_norm(a - p, dim=-1)
        d_an = torch.linalg.vector_norm(a - n, dim=-1)
        return F.relu(d_ap - d_an + self.margin).mean()

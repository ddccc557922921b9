"""CoSENT: a ranking loss over all ordered pairs of scored pairs in the batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distill.objectives.base import Objective


class CoSENTLoss(Objective):
    """loss = log(1 + sum over (i, j) with gold_i > gold_j of exp(lambda (cos_j - cos_i))), lambda 20.

    cos_i = cosine(u_i, v_i) of pair i. Only the order of the gold scores matters.
    Batch: features [s1, s2], labels float32 [b]; b >= 2 (a single pair has no order).
    """

    name = "cosent"
    data_format = "scored-pairs"
    num_texts = 2
    min_batch_size = 2
    label_dtype = torch.float32

    def __init__(self, encoder: nn.Module, scale: float = 20.0) -> None:
        super().__init__(encoder)
        self.scale = float(scale)

    def loss(self, batch: dict[str, Any]) -> Tensor:
        u, v = (self.embed(f) for f in batch["features"])
        return cosent(F.cosine_similarity(u, v, dim=-1), batch["labels"], self.scale)


def cosent(cos: Tensor, gold: Tensor, scale: float = 20.0) -> Tensor:
    """The CoSENT loss of predicted cosines [n] against gold scores [n]."""
    diff = scale * (cos[None, :] - cos[:, None])  # [i, j] = scale * (cos_j - cos_i)
    ordered = gold[:, None] > gold[None, :]  # gold_i > gold_j
    terms = torch.cat([diff.new_zeros(1), diff[ordered]])  # the 0 is the "1 +" inside the log
    return torch.logsumexp(terms, dim=0)

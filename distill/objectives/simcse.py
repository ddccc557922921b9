"""SimCSE: unsupervised (dropout views) and supervised (NLI triplets with hard negatives),
plus the alignment / uniformity diagnostics."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distill.objectives.base import Objective, cosine_matrix


class SimCSEUnsupLoss(Objective):
    """loss_i = -log( exp(cos(h_i, h_i')/tau) / sum_j exp(cos(h_i, h_j')/tau) ), tau = 0.05.

    The batch is duplicated and sent through the encoder in ONE forward pass with dropout on, so
    the two halves h, h' differ only by dropout; cross-entropy of the [n, n] matrix with labels
    arange(n). Batch: features [sentence], no labels; n >= 2.
    """

    name = "simcse-unsup"
    data_format = "sentences"
    num_texts = 1
    min_batch_size = 2

    def __init__(self, encoder: nn.Module, tau: float = 0.05) -> None:
        super().__init__(encoder)
        self.tau = float(tau)

    def loss(self, batch: dict[str, Any]) -> Tensor:
        (features,) = batch["features"][:1]
        n = features["input_ids"].shape[0]
        doubled = {k: torch.cat([v, v], dim=0) for k, v in features.items()}
        h = self.embed(doubled)
        logits = cosine_matrix(h[:n], h[n:]) / self.tau
        return F.cross_entropy(logits, torch.arange(n, device=logits.device))


class SimCSESupLoss(Objective):
    """Supervised SimCSE: anchor h_i, positive h_i+ (entailment), hard negative h_i- (contradiction).

    logits = [cos(h_i, h_j+) | cos(h_i, h_j-)] / tau, an [n, 2n] matrix; cross-entropy with labels
    arange(n): every other row's positive and every row's hard negative are in the denominator.
    Batch: features [anchor, positive, hard_negative], no labels; n >= 2.
    """

    name = "simcse-sup"
    data_format = "triplets"
    num_texts = 3
    min_batch_size = 2

    def __init__(self, encoder: nn.Module, tau: float = 0.05) -> None:
        super().__init__(encoder)
        self.tau = float(tau)

    def loss(self, batch: dict[str, Any]) -> Tensor:
        a, p, n = (self.embed(f) for f in batch["features"])
        logits = torch.cat([cosine_matrix(a, p), cosine_matrix(a, n)], dim=1) / self.tau
        return F.cross_entropy(logits, torch.arange(a.shape[0], device=logits.device))


def alignment(x: Tensor, y: Tensor) -> Tensor:
    """E ||f(x) - f(x+)||^2 over positive pairs (rows of x, y L2-normalized first); lower is better."""
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).pow(2).sum(dim=-1).mean()


def uniformity(x: Tensor) -> Tensor:
    """log E exp(-2 ||f(x) - f(y)||^2) over all distinct pairs of rows (L2-normalized); lower is better."""
    x = F.normalize(x, dim=-1)
    return torch.pdist(x, p=2).pow(2).mul(-2).exp().mean().log()

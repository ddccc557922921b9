"""Each objective against a direct computation on small tensors (tolerance 1e-5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from distill.objectives import OBJECTIVES, objective_class
from distill.objectives.base import Example
from distill.objectives.cosent import CoSENTLoss
from distill.objectives.sbert import CosineRegressionLoss, SoftmaxLoss, TripletLoss
from distill.objectives.simcse import SimCSESupLoss, SimCSEUnsupLoss, alignment, uniformity

TOL = 1e-5


class LookupEncoder(nn.Module):
    """Sentence vector = a fixed table row chosen by the first token id (no dropout)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.dim = table.shape[1]
        self.calls: list[int] = []

    def tokenize(self, texts):
        ids = torch.tensor([[int(t)] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def forward(self, input_ids, attention_mask):
        self.calls.append(input_ids.shape[0])
        return self.table[input_ids[:, 0]]


def feats(ids):
    t = torch.tensor([[i] for i in ids])
    return {"input_ids": t, "attention_mask": torch.ones_like(t)}


@pytest.fixture
def table():
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, 5, generator=g, dtype=torch.float64).float()


def cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_softmax_matches_direct(table):
    obj = SoftmaxLoss(LookupEncoder(table), num_labels=3)
    labels = torch.tensor([0, 2, 1])
    batch = {"features": [feats([0, 1, 2]), feats([3, 4, 5])], "labels": labels}
    W = obj.classifier.weight.detach().numpy().astype(np.float64)  # [k, 3d]
    T = table.numpy().astype(np.float64)
    total = 0.0
    for i, (a, b) in enumerate(zip([0, 1, 2], [3, 4, 5], strict=False)):
        z = W @ np.concatenate([T[a], T[b], np.abs(T[a] - T[b])])
        total += -(z[labels[i]] - math.log(np.exp(z).sum()))
    assert obj.loss(batch).item() == pytest.approx(total / 3, abs=TOL)


def test_regression_matches_direct(table):
    obj = CosineRegressionLoss(LookupEncoder(table), score_scale=5.0)
    gold = [4.0, 1.0, 2.5]
    batch = {"features": [feats([0, 1, 2]), feats([3, 4, 5])], "labels": torch.tensor(gold)}
    T = table.numpy()
    want = np.mean([(cos(T[a], T[b]) - g / 5) ** 2 for a, b, g in zip([0, 1, 2], [3, 4, 5], gold, strict=False)])
    assert obj.loss(batch).item() == pytest.approx(want, abs=TOL)


def test_triplet_matches_direct(table):
    obj = TripletLoss(LookupEncoder(table), margin=1.0)
    batch = {"features": [feats([0, 1, 2]), feats([3, 4, 5]), feats([6, 7, 8])], "labels": None}
    T = table.numpy().astype(np.float64)
    want = np.mean(
        [
            max(np.linalg.norm(T[a] - T[p]) - np.linalg.norm(T[a] - T[n]) + 1.0, 0.0)
            for a, p, n in zip([0, 1, 2], [3, 4, 5], [6, 7, 8], strict=False)
        ]
    )
    assert obj.loss(batch).item() == pytest.approx(want, abs=TOL)


def test_simcse_unsup_matches_direct_in_one_forward_pass(table):
    enc = LookupEncoder(table)
    obj = SimCSEUnsupLoss(enc, tau=0.05)
    ids = [0, 1, 2, 3]
    loss = obj.loss({"features": [feats(ids)], "labels": None}).item()
    assert enc.calls == [8]  # the duplicated batch, one pass
    T = table.numpy()
    want = 0.0
    for i in ids:  # without dropout both views equal the table row
        logits = np.array([cos(T[i], T[j]) / 0.05 for j in ids])
        want += -(logits[i] - np.log(np.exp(logits).sum()))
    assert loss == pytest.approx(want / 4, abs=1e-4)


def test_simcse_sup_matches_direct(table):
    obj = SimCSESupLoss(LookupEncoder(table), tau=0.05)
    a, p, n = [0, 1, 2], [3, 4, 5], [6, 7, 8]
    loss = obj.loss({"features": [feats(a), feats(p), feats(n)], "labels": None}).item()
    T = table.numpy()
    want = 0.0
    for i in range(3):  # n x 2n logits: all positives then all hard negatives
        logits = (
            np.array(
                [cos(T[a[i]], T[p[j]]) for j in range(3)]
                + [cos(T[a[i]], T[n[j]]) for j in range(3)]
            )
            / 0.05
        )
        want += -(logits[i] - np.log(np.exp(logits).sum()))
    assert loss == pytest.approx(want / 3, abs=1e-4)


def test_cosent_matches_direct(table):
    obj = CoSENTLoss(LookupEncoder(table), scale=20.0)
    gold = [4.0, 1.0, 2.5, 1.0]
    batch = {"features": [feats([0, 1, 2, 3]), feats([4, 5, 6, 7])], "labels": torch.tensor(gold)}
    T = table.numpy()
    c = [cos(T[i], T[j]) for i, j in zip([0, 1, 2, 3], [4, 5, 6, 7], strict=False)]
    s = sum(math.exp(20 * (c[j] - c[i])) for i in range(4) for j in range(4) if gold[i] > gold[j])
    assert obj.loss(batch).item() == pytest.approx(math.log(1 + s), rel=1e-5)


def test_cosent_ignores_label_scale(table):
    obj = CoSENTLoss(LookupEncoder(table))
    f = [feats([0, 1, 2]), feats([3, 4, 5])]
    a = obj.loss({"features": f, "labels": torch.tensor([1.0, 2.0, 3.0])})
    b = obj.loss({"features": f, "labels": torch.tensor([10.0, 200.0, 3000.0])})
    assert a.item() == b.item()


def test_alignment_uniformity_direct():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    xn, yn = (x / x.norm(dim=1, keepdim=True)).numpy(), (y / y.norm(dim=1, keepdim=True)).numpy()
    assert alignment(x, y).item() == pytest.approx(np.mean(((xn - yn) ** 2).sum(1)), abs=TOL)
    pairs = [np.exp(-2 * ((xn[i] - xn[j]) ** 2).sum()) for i in range(5) for j in range(i + 1, 5)]
    assert uniformity(x).item() == pytest.approx(math.log(np.mean(pairs)), abs=TOL)


def test_collate_tokenizes_columns_and_labels(table):
    obj = CosineRegressionLoss(LookupEncoder(table))
    batch = obj.collate([Example(("1", "2"), 3.0), Example(("4", "5"), 0.5)])
    assert batch["features"][1]["input_ids"].tolist() == [[2], [5]]
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [3.0, 0.5]


def test_in_batch_negatives_need_two_examples(table):
    obj = SimCSEUnsupLoss(LookupEncoder(table))
    with pytest.raises(ValueError, match="at least 2"):
        obj.collate([Example(("1",))])


def test_unknown_objective_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        objective_class("simcse-sideways")
    for name in OBJECTIVES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_registry_resolves(name):
    assert objective_class(name).name == name

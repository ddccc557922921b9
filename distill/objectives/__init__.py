"""Training objectives, each a small ``nn.Module`` with one ``loss(batch) -> Tensor``.

See :mod:`distill.objectives.base` for the batch format and the encoder protocol.
``OBJECTIVES`` maps each CLI name to ``module:Class``; classes are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

OBJECTIVES: dict[str, str] = {
    "sbert-softmax": "distill.objectives.sbert:SoftmaxLoss",
    "sbert-regression": "distill.objectives.sbert:CosineRegressionLoss",
    "sbert-triplet": "distill.objectives.sbert:TripletLoss",
    "simcse-unsup": "distill.objectives.simcse:SimCSEUnsupLoss",
    "simcse-sup": "distill.objectives.simcse:SimCSESupLoss",
    "simbert": "distill.simbert:SimBERTLoss",
    "cosent": "distill.objectives.cosent:CoSENTLoss",
}


def objective_class(name: str) -> Any:
    """The class registered under ``name``; an unknown name lists the valid ones."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid objectives: {', '.join(OBJECTIVES)}")
    module_name, _, cls_name = OBJECTIVES[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise NotImplementedError(
                f"objective {name!r} lives in {module_name}, which has not landed yet"
            ) from None
        raise
    if not hasattr(module, cls_name):
        raise NotImplementedError(f"objective {name!r}: {module_name} does not export {cls_name}")
    return getattr(module, cls_name)

"""distill: train sentence-embedding teachers and shrink them into small students.

Heavy dependencies (torch, transformers) are imported inside the functions that need them, so
``import distill`` stays cheap and the error for a missing extra names the ``pip install`` to run.

Importing distill registers its model types with ``fastemb.export`` (by name: nothing heavy is
imported until an export needs them); an installed distribution declares the same ones as entry
points (pyproject.toml), so ``fastemb export`` finds them without importing distill first.
"""

from __future__ import annotations

from fastemb.export import registry as _registry

__version__ = "0.1.0"

EXPORTERS = {
    "sources": {"textcnn": "distill.exporters:textcnn_source"},
    "generators": {"simbert": "distill.exporters:simbert_generator"},
}

for _kind, _loaders in EXPORTERS.items():
    for _name, _loader in _loaders.items():
        _registry.register(_kind, _name, _loader)

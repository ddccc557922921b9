"""Model types that export does not define itself, added by the packages that do.

fastemb exports sentence-transformers and Hugging Face encoders on its own. Another package adds
a model type with a loader, registered under a name in one of two ways:

- an entry point in its distribution's metadata (``pyproject.toml``), found without importing it::

      [project.entry-points."fastemb.export.sources"]
      textcnn = "distill.exporters:textcnn_source"

- or :func:`register` at run time (``distill`` registers its types when it is imported, which
  also covers a source tree on ``PYTHONPATH`` that was never installed).

Two kinds of loader:

``sources``
    keyed by ``config.json``'s ``model_type``: ``loader(path, config, max_length) ->
    fastemb.export.source.Source`` (the torch module of an encoder bundle).
``generators``
    keyed by an architecture name: ``loader(model_dir) ->
    fastemb.export.generator.GeneratorSource`` (the two graphs of a generator bundle).

A loader is a callable or a ``"module:attribute"`` string, imported when first used: registering
costs nothing, and fastemb imports nothing of the package that registers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

KINDS = ("sources", "generators")
GROUP = "fastemb.export.{kind}"

_registered: dict[str, dict[str, Callable[..., Any] | str]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str, loader: Callable[..., Any] | str) -> None:
    """Make ``loader`` the exporter of model type ``name`` (replacing an earlier one)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not callable(loader) and not (isinstance(loader, str) and ":" in loader):
        raise TypeError(f"loader must be a callable or a 'module:attribute' string, got {loader!r}")
    _registered[kind][name] = loader


def names(kind: str) -> list[str]:
    """The model types of ``kind`` registered or declared by an entry point."""
    return sorted(set(_registered[kind]) | {ep.name for ep in entry_points(group=GROUP.format(kind=kind))})


def lookup(kind: str, name: str) -> Callable[..., Any] | None:
    """The loader of ``name``, or None when nothing registers it."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    loader = _registered[kind].get(name)
    if loader is None:
        found = [ep for ep in entry_points(group=GROUP.format(kind=kind)) if ep.name == name]
        if not found:
            return None
        loader = found[0].value
    if isinstance(loader, str):
        module, _, attr = loader.partition(":")
        try:
            loader = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ImportError(f"the exporter of {name!r} ({module}:{attr}) cannot be loaded: {e}") from e
        _registered[kind][name] = loader
    return loader

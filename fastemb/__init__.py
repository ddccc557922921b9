"""fastemb: serve sentence embeddings from ONNX Runtime or TensorRT, search them with a C++ index.

``import fastemb`` needs only numpy, tokenizers and onnxruntime; it never imports torch or
transformers (a test checks this). The C++ index and the generator load on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Batcher", "Bundle", "Encoder", "Generator", "Index", "__version__"]

_LAZY = {
    "Batcher": "fastemb.batcher",
    "Bundle": "fastemb.bundle",
    "Encoder": "fastemb.encoder",
    "Index": "fastemb.index",
    "Generator": "fastemb.generator",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastemb' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

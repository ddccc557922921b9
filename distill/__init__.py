"""distill: train sentence-embedding teachers and shrink them into small students.

Heavy dependencies (torch, transformers) are imported inside the functions that need them, so
``import distill`` stays cheap and the error for a missing extra names the ``pip install`` to run.
"""

from __future__ import annotations

__version__ = "0.1.0"

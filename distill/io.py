"""Crash-safe writes for training outputs: the same primitives as the runtime's (``fastemb._io``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastemb._io import atomic_dir as _atomic_dir
from fastemb._io import atomic_file, atomic_write_bytes


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path`` (an existing one is removed).

    An exception (Ctrl-C included) inside the block leaves ``path`` as it was.
    """
    with _atomic_dir(path, overwrite=True) as tmp:
        yield tmp


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG through a temporary file and a rename; close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_file(path) as f:
            fig.savefig(f, dpi=dpi, format="png")
    finally:
        plt.close(fig)

"""Issue 12, item 4: ``python -m fastemb encode --input`` gives one vector per ``\\n``-terminated
line. ``str.splitlines()`` also splits at form feeds, U+2028, U+0085, U+001D and more, so row i
was no longer line i. Only the CLI and ``Encoder`` are imported, so this runs against any version."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastemb.cli import main
from fastemb.encoder import Encoder


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_one_vector_per_newline_terminated_line(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    encoder = Encoder(tiny_bundle)
    # Characters str.splitlines() splits at stay inside their line; \r\n ends a line; an empty line
    # is a row; the last line needs no \n.
    lines = ["form\x0cfeed inside", "line\u2028separator", "next\x85line and group\x1dseparator",
             "", "windows line", "vertical\x0btab \x1c\x1e", "last line, no newline"]
    data = "\n".join(lines[:4]) + "\n" + lines[4] + "\r\n" + "\n".join(lines[5:])
    src = tmp_path / "texts.txt"
    src.write_bytes(data.encode("utf-8"))
    out = tmp_path / "v.npy"
    assert main(["encode", str(tiny_bundle), "--input", str(src), "--output", str(out)]) == 0
    got = np.load(out)
    assert got.shape == (len(lines), encoder.dim), "row i must be line i"
    assert cosines(got, encoder.encode(lines)).min() >= 0.99999
    assert f"{len(lines)} rows, 0 failed" in capsys.readouterr().out

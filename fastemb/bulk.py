"""Encode a file of texts into a ``.npy`` or ``.parquet`` file, streaming: bounded memory whatever
the input's size, a progress bar, and a bad row reported without losing the others.

Rows come from ``fastemb.rows`` (text, JSON Lines or Parquet), encoded in this process or, with
``ray_address``, by Ray actors (``fastemb.ray``); either way they arrive here in input order and
are written as they come to a temporary file beside the output, renamed over it when complete.

- ``.npy``: float32 ``[n, dim]``, row ``i`` is input row ``i``; a failed row is NaN.
- ``.parquet``: columns ``row`` (int64, from 0), ``embedding`` (fixed-size list of ``dim``
  float32; null for a failed row) and ``error`` (null, or why the row failed).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from fastemb._io import atomic_file
from fastemb.encoder import CHUNK_BATCHES, Encoder
from fastemb.rows import count_lines, encode_rows, input_format, parquet_file, read_rows, row_name

OUTPUTS = (".npy", ".parquet")
NPY_HEADER = 128  # bytes: room for any shape, rewritten when the row count is known


@dataclass
class Report:
    """What ``encode_file`` did: rows written, how many failed and the first failures by name."""

    rows: int = 0
    failed: int = 0
    first_failures: list[str] = field(default_factory=list)

    def add(self, fmt: str, start: int, errors: list[str | None], keep: int = 20) -> None:
        for i, error in enumerate(errors):
            if error is not None:
                self.failed += 1
                if len(self.first_failures) < keep:
                    self.first_failures.append(f"{row_name(fmt, start + i)}: {error}")


def encode_file(bundle: str | Path, input: str | Path, output: str | Path, *, fmt: str | None = None,
                field: str = "text", batch_size: int = 32, normalize: bool = True, progress: bool = True,
                chunk: int | None = None, ray_address: str | None = None, concurrency: int | None = None,
                num_cpus_per_actor: float = 1) -> Report:
    """Encode every row of ``input`` with ``bundle`` into ``output`` (see the module docstring).

    ``chunk`` rows are read, encoded and written at a time (default: 4 of ``Encoder``'s chunks,
    8,192 rows at ``batch_size`` 32). ``ray_address`` runs the encoding on Ray: ``"local"``
    starts a local Ray, anything else is passed to ``ray.init(address=...)`` (``"auto"``,
    ``"ray://head:10001"``, ...).
    """
    output = _checked_output(output)
    fmt = input_format(input, fmt)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    total = _count_rows(input, fmt, field)
    chunk = chunk or batch_size * CHUNK_BATCHES * 4  # rows per step: whole Encoder chunks
    if ray_address is None:
        encoder = Encoder(bundle)
        dim = encoder.dim
        chunks = ((r.start, *encode_rows(encoder, r.texts, r.errors, batch_size, normalize))
                  for r in read_rows(input, fmt, field, chunk))
    else:
        from fastemb.bundle import Bundle
        from fastemb.ray import encode_file_rows

        dim = int(Bundle(bundle).manifest.dim)
        chunks = encode_file_rows(bundle, input, fmt, field, address=ray_address, batch_size=batch_size,
                                  normalize=normalize, chunk=chunk, concurrency=concurrency,
                                  num_cpus_per_actor=num_cpus_per_actor)
    return write_rows(output, dim, chunks, fmt, total, progress)


def write_rows(output: str | Path, dim: int, chunks: Iterator[tuple[int, np.ndarray, list[str | None]]],
               fmt: str = "text", total: int | None = None, progress: bool = True) -> Report:
    """Write ``(start, vectors, errors)`` chunks, in row order, to ``output`` (.npy or .parquet).
    ``fmt`` names failed rows in the report: ``line N`` for text and JSON Lines, else ``row N``."""
    from tqdm.auto import tqdm

    output = _checked_output(output)
    report = Report()
    with _sink(output, dim) as sink, tqdm(total=total, desc="encode", unit="text", disable=not progress) as bar:
        for start, vectors, errors in chunks:
            if start != report.rows:
                raise RuntimeError(f"rows arrived out of order: expected row {report.rows}, got {start}")
            sink.write(start, vectors, errors)
            report.add(fmt, start, errors)
            report.rows += len(vectors)
            bar.update(len(vectors))
    return report


def _checked_output(output: str | Path) -> Path:
    output = Path(output)
    if output.suffix.lower() not in OUTPUTS:
        raise ValueError(f"the output must end with {' or '.join(OUTPUTS)}, got {output}")
    return output


def _count_rows(path: str | Path, fmt: str, field: str) -> int | None:
    """Rows in a local input (for the progress bar and an early 'not found'); None if not local."""
    p = Path(path)
    if "://" in str(path) and not p.exists():
        return None
    if not p.is_file():
        raise FileNotFoundError(f"input file not found: {p}")
    if fmt == "parquet":
        return parquet_file(p, field).metadata.num_rows
    return count_lines(p)


@contextlib.contextmanager
def _sink(output: Path, dim: int) -> Iterator[Any]:
    """A writer into a temporary file beside ``output`` that replaces it only once complete
    (``fastemb._io.atomic_file``): a failed or interrupted run leaves ``output`` as it was."""
    with atomic_file(output) as f:
        writer = _NpyWriter(f, dim) if output.suffix.lower() == ".npy" else _ParquetWriter(f, dim)
        yield writer
        writer.close()


class _NpyWriter:
    """Rows appended after a fixed-size header; the header gets the row count at the end."""

    def __init__(self, f: IO[bytes], dim: int) -> None:
        self.f, self.dim, self.rows = f, dim, 0
        f.write(npy_header((0, dim)))

    def write(self, start: int, vectors: np.ndarray, errors: list[str | None]) -> None:
        self.f.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self.rows += len(vectors)

    def close(self) -> None:
        self.f.seek(0)
        self.f.write(npy_header((self.rows, self.dim)))
        self.f.seek(0, os.SEEK_END)


def npy_header(shape: tuple[int, ...]) -> bytes:
    """An ``.npy`` (version 1.0) header for little-endian float32 C-order ``shape``, padded to
    ``NPY_HEADER`` bytes whatever the shape, so it can be rewritten in place."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    body = text.ljust(NPY_HEADER - 10 - 1) + "\n"  # 10: magic, version, header length
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


class _ParquetWriter:
    def __init__(self, f: IO[bytes], dim: int) -> None:
        import pyarrow as pa

        from fastemb.rows import _pyarrow_parquet

        self.pa, self.dim = pa, dim
        self.schema = pa.schema([("row", pa.int64()), ("embedding", pa.list_(pa.float32(), dim)),
                                 ("error", pa.string())])
        self.writer = _pyarrow_parquet().ParquetWriter(f, self.schema)

    def write(self, start: int, vectors: np.ndarray, errors: list[str | None]) -> None:
        pa = self.pa
        failed = pa.array([e is not None for e in errors], type=pa.bool_())
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        embedding = pa.FixedSizeListArray.from_arrays(flat, self.dim, mask=failed)
        rows = pa.array(np.arange(start, start + len(vectors), dtype=np.int64))
        self.writer.write_table(pa.Table.from_arrays([rows, embedding, pa.array(errors, type=pa.string())],
                                                     schema=self.schema))

    def close(self) -> None:
        self.writer.close()

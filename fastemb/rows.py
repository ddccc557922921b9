"""Rows of text read from a file, and their vectors: a bad row gets an error, never costs the others.

Formats (``input_format`` picks one by suffix):

- ``text``: one row per ``\\n``-terminated line; a last line without ``\\n`` is a row too; ``\\r\\n``
  ends a line like ``\\n``. Nothing else splits a line: a form feed, U+2028, U+0085 or U+001D
  stays inside its row (``str.splitlines`` would split there), and an empty line is a row.
- ``jsonl``: one row per line, each a JSON object whose ``field`` (default ``"text"``) is the text.
- ``parquet``: one row per table row, the text in column ``field``.

A row that cannot give a text (invalid UTF-8, invalid JSON, a missing field, null, not a string, a
lone surrogate) carries an error message instead; ``encode_rows`` encodes the others and leaves
NaN in that row's vector. Files are read in chunks, so memory stays bounded whatever their size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

FORMATS = ("text", "jsonl", "parquet")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
READ_BLOCK = 1 << 20


@dataclass
class Rows:
    """A chunk of consecutive input rows: ``texts[i]`` is None exactly where ``errors[i]`` is set."""

    start: int  # index (from 0) of the chunk's first row in the input
    texts: list[str | None]
    errors: list[str | None]


def input_format(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` if given (checked), else by suffix: .jsonl/.ndjson, .parquet, anything else text."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"input format {fmt!r} is not one of {', '.join(FORMATS)}")
        return fmt
    return SUFFIXES.get(Path(str(path)).suffix.lower(), "text")


def row_name(fmt: str, index: int) -> str:
    """How messages name row ``index`` (from 0): ``line N`` (from 1) in text files, else ``row N``."""
    return f"line {index + 1}" if fmt in ("text", "jsonl") else f"row {index}"


def check_text(value: Any) -> tuple[str | None, str | None]:
    """``(text, None)`` for an encodable string, else ``(None, what is wrong)``."""
    if value is None:
        return None, "text is null"
    if not isinstance(value, str):
        return None, f"text is {type(value).__name__}, not str: {value!r:.60}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: no tokenizer can take it
        return None, f"text has a lone surrogate {value[e.start]!r} at character {e.start}"
    return value, None


def read_rows(path: str | Path, fmt: str, field: str = "text", chunk: int = 8192) -> Iterator[Rows]:
    """Chunks of ``chunk`` rows of a local file, in order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    if fmt == "parquet":
        yield from parquet_rows(path, field, chunk)
        return
    with open(path, "rb") as f:
        yield from line_rows(f, fmt, field, chunk)


def line_rows(f: IO[bytes], fmt: str, field: str = "text", chunk: int = 8192) -> Iterator[Rows]:
    """Chunks of rows of a text or JSON Lines stream (any object with ``read(n) -> bytes``)."""
    rows = Rows(0, [], [])
    for i, raw in enumerate(lines(f)):
        if i == 0 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
            raw = raw[3:]
        text, error = _parse_line(raw, fmt, field)
        rows.texts.append(text)
        rows.errors.append(error)
        if len(rows.texts) == chunk:
            yield rows
            rows = Rows(i + 1, [], [])
    if rows.texts:
        yield rows


def lines(f: IO[bytes]) -> Iterator[bytes]:
    """The lines of a binary stream, split at ``\\n`` only, without it (or a ``\\r`` before it)."""
    pending: list[bytes] = []  # a long line's pieces, joined once (no quadratic copying)
    while block := f.read(READ_BLOCK):
        parts = block.split(b"\n")
        if len(parts) == 1:
            pending.append(block)
            continue
        pending.append(parts[0])
        for line in [b"".join(pending), *parts[1:-1]]:
            yield line[:-1] if line.endswith(b"\r") else line
        pending = [parts[-1]]
    tail = b"".join(pending)
    if tail:
        yield tail


def count_lines(path: str | Path) -> int:
    """Rows ``lines`` yields for ``path``: its ``\\n`` count, plus one for an unterminated last line."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _parse_line(raw: bytes, fmt: str, field: str) -> tuple[str | None, str | None]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 (byte {raw[e.start:e.start + 1]!r} at offset {e.start})"
    if fmt == "text":
        return text, None
    if not text.strip():
        return None, "empty line (JSON Lines needs one JSON object per line)"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at column {e.colno})"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object with a {field!r} field, got {type(obj).__name__}"
    if field not in obj:
        return None, f"no {field!r} field (fields: {', '.join(list(obj)[:10]) or 'none'})"
    return check_text(obj[field])


def parquet_rows(source: Any, field: str = "text", chunk: int = 8192) -> Iterator[Rows]:
    """Chunks of rows of column ``field`` of a Parquet file (a path or a seekable file)."""
    pf = parquet_file(source, field)
    start = 0
    for batch in pf.iter_batches(batch_size=chunk, columns=[field]):
        texts, errors = arrow_texts(batch.column(0))
        yield Rows(start, texts, errors)
        start += len(texts)


def parquet_file(source: Any, field: str = "text") -> Any:
    """A ``pyarrow.parquet.ParquetFile`` whose column ``field`` holds text (checked)."""
    import pyarrow as pa

    pf = _pyarrow_parquet().ParquetFile(source)
    schema = pf.schema_arrow
    if field not in schema.names:
        raise ValueError(f"{source}: no column {field!r} (columns: {', '.join(schema.names)}); "
                         "name the text column with --field")
    kind = schema.field(field).type
    if not any(f(kind) for f in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                 pa.types.is_large_binary, pa.types.is_null)):
        raise ValueError(f"{source}: column {field!r} is {kind}, not text")
    return pf


def arrow_texts(array: Any) -> tuple[list[str | None], list[str | None]]:
    """Texts and errors of an Arrow array; strings are decoded row by row, so one invalid UTF-8
    value is that row's error, not the whole column's."""
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        array = array.cast(pa.large_binary() if pa.types.is_large_string(array.type) else pa.binary())
    texts: list[str | None] = []
    errors: list[str | None] = []
    for value in array.to_pylist():
        if isinstance(value, bytes):
            text, error = _parse_line(value, "text", "")
        else:
            text, error = check_text(value)
        texts.append(text)
        errors.append(error)
    return texts, errors


def encode_rows(encoder: Any, texts: list[Any], errors: list[str | None] | None = None, batch_size: int = 32,
                normalize: bool = True) -> tuple[np.ndarray, list[str | None]]:
    """Vectors of the rows (float32 ``[n, dim]``, NaN where a row failed) and each row's error.

    Rows with an error already, or whose text ``check_text`` refuses, are not encoded. If the
    encoder fails on the batch, the rows are retried one by one, so only the bad ones fail.
    """
    errors = list(errors) if errors is not None else [None] * len(texts)
    if len(errors) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(errors)} errors")
    good: list[int] = []
    for i, (text, error) in enumerate(zip(texts, errors, strict=True)):
        if error is None:
            _, errors[i] = check_text(text)
            if errors[i] is None:
                good.append(i)
    vectors = np.full((len(texts), encoder.dim), np.nan, dtype=np.float32)
    try:
        vectors[good] = encoder.encode([texts[i] for i in good], batch_size=batch_size, normalize=normalize)
    except Exception:  # noqa: BLE001 - find the row(s) that fail, keep the rest
        for i in good:
            try:
                vectors[i] = encoder.encode([texts[i]], batch_size=1, normalize=normalize)[0]
            except Exception as e:  # noqa: BLE001
                errors[i] = f"{type(e).__name__}: {e}"
    return vectors, errors


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("Parquet needs pyarrow: pip install 'fastemb[parquet]' (or pip install pyarrow)") from None
    return pq

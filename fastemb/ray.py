"""Encode a Ray Dataset on a Ray cluster: one ``Encoder`` per actor, loaded once (``fastemb[ray]``).

```python
import ray, fastemb.ray

ds = ray.data.read_parquet("s3://bucket/docs/")           # or read_json(..., lines=True), from_items, ...
ds = fastemb.ray.encode(ds, "minilm-int8", column="text")  # adds "embedding" and "error"
ds.write_parquet("s3://bucket/vectors/")
```

``encode`` is Ray Data's ``map_batches`` with a callable class: every actor loads the bundle once
and encodes blocks with ``fastemb.rows.encode_rows``. The bundle's files travel through Ray's object
store, fetched only by actors on nodes where the driver's path does not hold the same bundle.
Every input column is kept; ``embedding`` is a fixed-width float32 tensor column. A row whose
text is null, not a string or not encodable gets NaN in ``embedding`` and the reason in ``error``
(null for the others): one bad row never fails its block. Rows keep their order when Ray Data's
``DataContext.execution_options.preserve_order`` is set (``connect`` sets it).

Do not use ``ray.data.read_text`` for one text per line: it splits lines with ``str.splitlines``
(a form feed or U+2028 inside a line makes two rows) and drops empty lines. ``read_lines`` here
splits at ``\\n`` only, keeps empty lines and parses JSON Lines row by row (``fastemb.rows``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

try:
    import pyarrow as pa
    import ray
    import ray.data
    from ray.data.datasource import FileBasedDatasource
    from ray.data.extensions import ArrowTensorArray
except ImportError:  # pragma: no cover - exercised where Ray is not installed
    raise ImportError("fastemb.ray needs Ray Data: pip install 'fastemb[ray]'") from None

from fastemb.bundle import MANIFEST, Bundle, BundleError
from fastemb.encoder import CHUNK_BATCHES
from fastemb.rows import arrow_texts, encode_rows, line_rows

__all__ = ["connect", "encode", "encode_file_rows", "encode_texts", "read_lines"]


def encode(dataset: ray.data.Dataset, bundle: str | Path, column: str = "text", output_column: str = "embedding",
           *, error_column: str = "error", batch_size: int | None = None, encode_batch_size: int = 32,
           normalize: bool = True, concurrency: int | tuple[int, ...] | None = None,
           num_cpus_per_actor: float = 1) -> ray.data.Dataset:
    """``dataset`` with ``output_column`` (float32 ``[dim]`` per row) and ``error_column`` added.

    ``batch_size`` rows go to an actor at a time (default ``encode_batch_size`` x 64, the rows
    ``Encoder.encode`` tokenizes and sorts by length together); ``encode_batch_size`` is the
    model's batch. Ray Data cuts blocks its own way, so the model's batches hold other rows than
    in one process: float32 vectors agree to rounding, dynamic int8 ones (each batch quantized with
    its own scale) to about 0.995 cosine (``bench/results/scale.md``).
    ``concurrency``: the number of actors, or ``(min, max)`` for an autoscaling pool (default:
    from 1 to the cluster's CPUs / ``num_cpus_per_actor``; a fixed pool that holds every CPU would
    leave none to the pipeline's read and write tasks, which would then wait forever). Each actor reserves ``num_cpus_per_actor`` CPUs and
    gives ONNX Runtime that many threads. An ``error_column`` already in ``dataset`` (as
    ``read_lines`` makes) marks rows not to encode; its messages are kept.
    """
    b = Bundle(bundle)  # refuse a missing or corrupt bundle here, not in every actor
    if b.manifest.kind != "encoder":
        raise BundleError(f"{b.dir} is a {b.manifest.kind} bundle, not an encoder")
    batch_size = encode_batch_size * CHUNK_BATCHES if batch_size is None else batch_size
    for name, value in (("batch_size", batch_size), ("encode_batch_size", encode_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not num_cpus_per_actor > 0:
        raise ValueError(f"num_cpus_per_actor must be > 0, got {num_cpus_per_actor!r}")
    if len({column, output_column, error_column}) < 3:
        raise ValueError(f"column, output_column and error_column must differ, got {column!r}, "
                         f"{output_column!r}, {error_column!r}")
    schema = dataset.schema(fetch_if_missing=False)  # known without running anything, or None
    if schema is not None:
        _check_columns(schema.names, column, output_column)
    return dataset.map_batches(
        _EncodeBatch,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=_actor_pool(concurrency, num_cpus_per_actor),
        num_cpus=num_cpus_per_actor,
        udf_modifying_row_count=False,
        fn_constructor_kwargs={
            "bundle": _ShippedBundle(b),
            "columns": (column, output_column, error_column),
            "batch_size": encode_batch_size,
            "normalize": normalize,
            "threads": max(1, int(num_cpus_per_actor)),
        },
    )


def read_lines(path: str | list[str], fmt: str = "text", field: str = "text", chunk: int = 8192,
               **read_args: Any) -> ray.data.Dataset:
    """A Dataset of columns ``text`` and ``error``: one row per ``\\n``-terminated line of a text
    file (``fmt="text"``) or per line of a JSON Lines file (``fmt="jsonl"``, the text in ``field``),
    in file order; ``error`` says why a row has no text (``fastemb.rows``). Read tasks reserve no
    CPU by default (parsing is light), so a pool of actors holding every CPU cannot starve them."""
    if fmt not in ("text", "jsonl"):
        raise ValueError(f"read_lines reads 'text' or 'jsonl', got {fmt!r}")
    read_args.setdefault("num_cpus", 0)
    return ray.data.read_datasource(_Lines(path, fmt=fmt, field=field, chunk=chunk), **read_args)


def connect(address: str = "local") -> None:
    """Join Ray unless this process already has: ``"local"`` starts a local Ray, anything else goes
    to ``ray.init(address=...)``. Rows then keep their order through Ray Data, which shows no
    progress bars of its own."""
    if not ray.is_initialized():
        if address == "local":
            ray.init(include_dashboard=False)
        else:
            ray.init(address=address)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the caller shows one bar of rows written


def encode_file_rows(bundle: str | Path, path: str | Path, fmt: str, field: str = "text", *, address: str = "local",
                     **options: Any) -> Iterator[tuple[int, np.ndarray, list[str | None]]]:
    """``(start, vectors, errors)`` chunks of a file's rows in input order, encoded on Ray: what
    ``fastemb.bulk.encode_file`` writes with ``ray_address``. ``options``: as ``encode_texts``."""
    connect(address)
    if fmt == "parquet":
        ds, column = ray.data.read_parquet(str(path), columns=[field], num_cpus=0), field
    else:
        ds, column = read_lines(str(path), fmt, field, _block(options)), "text"
    yield from _in_order(ds, bundle, column, **options)


def encode_texts(bundle: str | Path, texts: list[str], *, address: str = "local",
                 **options: Any) -> Iterator[tuple[int, np.ndarray, list[str | None]]]:
    """``(start, vectors, errors)`` chunks of ``texts`` in order, encoded on Ray (the texts go
    to the object store in blocks of ``batch_size`` x 64 rows).
    ``options``: ``batch_size`` (the model's), ``normalize``, ``chunk`` (rows per chunk returned),
    ``concurrency`` (as in ``encode``: an autoscaling pool by default; a fixed pool of every CPU
    hung a second pipeline in one process while the first one's actors still held the CPUs) and
    ``num_cpus_per_actor``."""
    connect(address)
    table = pa.table({"text": pa.array(texts, type=pa.string())})
    # blocks of what one actor call takes, smaller for a short list so that every actor gets some
    block = max(1, min(_block(options), -(-len(texts) // int(4 * ray.cluster_resources().get("CPU", 1)))))
    ds = ray.data.from_arrow([table.slice(i, block) for i in range(0, len(table), block)] or [table])
    yield from _in_order(ds, bundle, "text", **options)


def _block(options: dict[str, Any]) -> int:
    """Rows per block these pipelines read: one actor call."""
    return options.get("batch_size", 32) * CHUNK_BATCHES


def _in_order(ds: ray.data.Dataset, bundle: str | Path, column: str, *, batch_size: int = 32,
              normalize: bool = True, chunk: int = 8192, concurrency: int | tuple[int, ...] | None = None,
              num_cpus_per_actor: float = 1) -> Iterator[tuple[int, np.ndarray, list[str | None]]]:
    ds = encode(ds, bundle, column=column, encode_batch_size=batch_size, normalize=normalize,
                concurrency=concurrency, num_cpus_per_actor=num_cpus_per_actor)
    start = 0
    for batch in ds.iter_batches(batch_size=chunk, batch_format="pyarrow"):
        vectors = tensor_column(batch.column("embedding"))
        yield start, vectors, batch.column("error").to_pylist()
        start += len(vectors)


def tensor_column(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-width tensor column (what ``encode`` adds) as one float32 ``[n, dim]`` array."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    return np.concatenate([np.asarray(c.to_numpy(), dtype=np.float32) for c in chunks]) if chunks else \
        np.empty((0, 0), np.float32)


def _actor_pool(concurrency: int | tuple[int, ...] | None, num_cpus: float) -> ray.data.ActorPoolStrategy:
    if concurrency is None:  # autoscaling: a fixed pool holding every CPU would starve reads and writes
        cpus = ray.cluster_resources().get("CPU", 1)
        return ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(cpus // num_cpus)))
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        return ray.data.ActorPoolStrategy(size=concurrency)
    if isinstance(concurrency, tuple) and len(concurrency) in (2, 3) and all(
            isinstance(c, int) and c >= 1 for c in concurrency):
        return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1],
                                          initial_size=concurrency[2] if len(concurrency) == 3 else None)
    raise ValueError(f"concurrency must be an integer >= 1 or (min, max[, initial]), got {concurrency!r}")


class _ShippedBundle:
    """A bundle's path plus its files in Ray's object store, for nodes that do not have the path.

    The files are put once by the driver; an actor fetches them only if the path on its node does
    not hold a manifest with the same sha256, and unpacks them once per node into a directory
    named after that checksum."""

    def __init__(self, b: Bundle) -> None:
        self.path = str(b.dir)
        manifest = (b.dir / MANIFEST).read_bytes()
        self.sha = hashlib.sha256(manifest).hexdigest()
        files = {MANIFEST: manifest, **{name: (b.dir / name).read_bytes() for name in b.manifest.files}}
        self.files = [ray.put(files)]  # in a list: Ray must not fetch it with the constructor's args

    def local_path(self) -> Path:
        if _sha256_of(Path(self.path) / MANIFEST) == self.sha:
            return Path(self.path)
        target = Path(tempfile.gettempdir()) / f"fastemb-bundle-{self.sha[:16]}"
        if _sha256_of(target / MANIFEST) != self.sha:
            stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
            for name, data in ray.get(self.files[0]).items():
                (stage / name).write_bytes(data)
            try:
                os.replace(stage, target)
            except OSError:  # another actor on this node unpacked it first
                for p in stage.iterdir():
                    p.unlink()
                stage.rmdir()
        return target


def _sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _check_columns(names: list[str], column: str, output_column: str) -> None:
    if column not in names:
        raise ValueError(f"the dataset has no column {column!r} (columns: {', '.join(names)}); pass column=")
    if output_column in names:
        raise ValueError(f"the dataset already has a column {output_column!r}; pass another output_column=")


class _EncodeBatch:
    """The actor: one Encoder, loaded once; a block in, the block with vectors and errors out."""

    def __init__(self, bundle: _ShippedBundle, columns: tuple[str, str, str], batch_size: int, normalize: bool,
                 threads: int) -> None:
        from fastemb.encoder import Encoder

        self.encoder = Encoder(bundle.local_path(), threads=threads)
        self.column, self.output, self.error = columns
        self.batch_size, self.normalize = batch_size, normalize

    def __call__(self, table: pa.Table) -> pa.Table:
        names = table.column_names
        _check_columns(names, self.column, self.output)
        texts, errors = arrow_texts(table.column(self.column))
        if self.error in names:
            errors = [p if p is not None else e for p, e in zip(table.column(self.error).to_pylist(), errors,
                                                                strict=True)]
            table = table.drop_columns([self.error])
        vectors, errors = encode_rows(self.encoder, texts, errors, self.batch_size, self.normalize)
        table = table.append_column(self.output, ArrowTensorArray.from_numpy(vectors))
        return table.append_column(self.error, pa.array(errors, type=pa.string()))


class _Lines(FileBasedDatasource):
    """Text or JSON Lines files, read by ``fastemb.rows.line_rows`` in blocks of ``chunk`` rows."""

    def __init__(self, paths: str | list[str], *, fmt: str, field: str, chunk: int, **kwargs: Any) -> None:
        super().__init__(paths, **kwargs)
        self.fmt, self.field, self.chunk = fmt, field, chunk

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        for rows in line_rows(f, self.fmt, self.field, self.chunk):
            yield pa.table({"text": pa.array(rows.texts, type=pa.string()),
                            "error": pa.array(rows.errors, type=pa.string())})

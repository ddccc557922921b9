"""Exact top-k search over embeddings: ``fastemb.Index``, a thin wrapper over the C++ core.

The wrapper owns the input policy, so that it is the same for every method:

- vectors and queries: any floating dtype (float16/32/64) and any strides are converted to a
  C-contiguous float32 copy; integer, bool, complex and object arrays are refused (ValueError).
  A 1-D array is one vector.
- ids: integer arrays (or one integer), converted to int64; ids must be >= 0 and unique.

The C++ side (``fastemb._C.Index``) refuses anything but float32 C-contiguous input, checks
dimensions and finite values, and releases the GIL while it works.

File format (``save`` / ``load``), little endian::

    b"FEMBIDX\\0"  u32 version  u32 header_len  header (JSON: dim, metric, storage, count, next_id)
    ids int64 [count]  vectors float32 [count, dim]  u32 crc32 of everything before it

Vectors are stored as the index scores them (L2-normalized for cosine); compressed storage is
rebuilt from them on load, deterministically.
"""

from __future__ import annotations

import json
import operator
import os
import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from fastemb import _C

Metric = Literal["cosine", "ip"]
Storage = Literal["float32", "bfloat16", "int8"]

_MAGIC = b"FEMBIDX\x00"
_VERSION = 1
_PREFIX = struct.Struct("<8sII")  # magic, version, header length
_CRC = struct.Struct("<I")


def _as_matrix(x: object, dim: int, what: str) -> np.ndarray:
    """A C-contiguous float32 [n, dim] copy (or view) of ``x``; ValueError for non-float input."""
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise ValueError(f"{what} must be a floating-point array, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2:
        raise ValueError(f"{what} must be 1-D [{dim}] or 2-D [n, {dim}], got shape {a.shape}")
    if a.shape[1] != dim:
        raise ValueError(f"{what} have dimension {a.shape[1]}, the index has dimension {dim}")
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf: C++ reports it
        return np.ascontiguousarray(a, dtype=np.float32)


def _as_ids(ids: object, what: str = "ids") -> np.ndarray:
    """int64 [n] from an integer array or a single integer."""
    a = np.asarray(ids)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{what} must fit in int64, got {int(a.max())}")
    return np.ascontiguousarray(a, dtype=np.int64)


class Index:
    """Exact top-k search by cosine similarity or inner product.

    Args:
        dim: vector dimension, 1..65536.
        metric: "cosine" L2-normalizes vectors on add and queries on search; "ip" uses them as given.
        storage: "float32" (exact), or "bfloat16" / "int8": the scan runs on compressed vectors and
            the best ``k * oversample`` candidates are re-scored in float32, so results match float32
            search nearly always. Compressed storage buys speed, not memory: the float32 rows are
            kept for re-scoring (bytes per vector: float32 4*dim, bfloat16 6*dim, int8 5*dim + 8).
        threads: threads per search; 0 uses every core.

    Concurrent ``search`` calls are safe; ``add`` / ``remove`` wait for running searches.
    """

    def __init__(
        self, dim: int, metric: Metric = "cosine", storage: Storage = "float32", *, threads: int = 0
    ) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0: all cores), got {threads}")
        self._c = _C.Index(int(dim), metric, storage)
        self.threads = int(threads)

    @property
    def dim(self) -> int:
        return self._c.dim

    @property
    def metric(self) -> str:
        return self._c.metric

    @property
    def storage(self) -> str:
        return self._c.storage

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the stored vectors and ids (not the id -> position map)."""
        return self._c.memory_bytes

    @staticmethod
    def kernels() -> dict[str, str]:
        """The scan kernel each storage uses on this CPU, e.g. {"int8": "avx512_vnni", ...}."""
        return dict(_C.kernels())

    def __len__(self) -> int:
        return len(self._c)

    def __repr__(self) -> str:
        return f"Index(dim={self.dim}, metric={self.metric!r}, storage={self.storage!r}, len={len(self)})"

    def add(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """Add ``vectors`` [n, dim] (or one [dim]); returns their ids, int64 [n].

        Without ``ids`` the index numbers them from one past the largest id it has seen. Raises
        ValueError for a wrong dimension, NaN/inf, a zero vector under cosine, negative ids, or ids
        that repeat or are already present; a failed add changes nothing.
        """
        x = _as_matrix(vectors, self.dim, "vectors")
        return self._c.add(x, None if ids is None else _as_ids(ids))

    def search(
        self, queries: np.ndarray, k: int = 10, *, oversample: int = 4
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by score for each query.

        Args:
            queries: [q, dim], or one query [dim].
            k: results per query, >= 1. When the index holds fewer than k vectors the rest of each
                row is padded with score -inf and id -1.
            oversample: compressed storage only: candidates kept per query = k * oversample.

        Returns:
            (scores float32 [q, k], ids int64 [q, k]), best first; equal scores are ordered by
            smaller id. For a 1-D query both are [k].
        """
        q = _as_matrix(queries, self.dim, "queries")
        # operator.index: a float k (2.5) is a TypeError, not silently truncated.
        scores, ids = self._c.search(q, operator.index(k), operator.index(oversample), self.threads)
        if np.asarray(queries).ndim == 1:
            return scores[0], ids[0]
        return scores, ids

    def remove(self, ids: np.ndarray | int) -> None:
        """Remove vectors by id. Unknown or repeated ids raise ValueError and remove nothing."""
        self._c.remove(_as_ids(ids))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to ``path`` atomically (temporary file in the same folder, then rename)."""
        ids, vectors, next_id = self._c.snapshot()
        header = json.dumps(
            {
                "format": "fastemb.Index",
                "dim": self.dim,
                "metric": self.metric,
                "storage": self.storage,
                "count": int(ids.shape[0]),
                "next_id": int(next_id),
            },
            sort_keys=True,
        ).encode()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        crc = 0
        try:
            with open(tmp, "wb") as f:
                for part in (
                    _PREFIX.pack(_MAGIC, _VERSION, len(header)),
                    header,
                    ids.reshape(-1).view(np.uint8),  # views, no copy: vectors can be gigabytes
                    vectors.reshape(-1).view(np.uint8),
                ):
                    crc = zlib.crc32(part, crc)
                    f.write(part)
                f.write(_CRC.pack(crc))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, threads: int = 0) -> Index:
        """Read an index written by ``save``. A truncated, corrupt or foreign file raises ValueError."""
        data = Path(path).read_bytes()
        if len(data) < _PREFIX.size + _CRC.size:
            raise ValueError(f"{path}: {len(data)} bytes is too short for a fastemb index")
        magic, version, hlen = _PREFIX.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError(f"{path}: not a fastemb index (magic {magic!r})")
        if version != _VERSION:
            raise ValueError(
                f"{path}: index format version {version}, this fastemb reads {_VERSION}"
            )
        (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
        crc = zlib.crc32(memoryview(data)[: len(data) - _CRC.size])
        if crc != stored_crc:
            raise ValueError(
                f"{path}: checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x}): file is corrupt"
            )
        try:
            h = json.loads(data[_PREFIX.size : _PREFIX.size + hlen])
            dim, count, next_id = int(h["dim"]), int(h["count"]), int(h["next_id"])
            metric, storage = str(h["metric"]), str(h["storage"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: bad index header: {e}") from e
        if dim < 1 or count < 0:
            raise ValueError(f"{path}: bad index header: dim {dim}, count {count}")
        body = _PREFIX.size + hlen
        expected = body + count * 8 + count * dim * 4 + _CRC.size
        if len(data) != expected:
            raise ValueError(
                f"{path}: {len(data)} bytes, the header implies {expected}: file is truncated or corrupt"
            )
        ids = np.frombuffer(data, dtype="<i8", count=count, offset=body)
        vectors = np.frombuffer(
            data, dtype="<f4", count=count * dim, offset=body + count * 8
        ).reshape(count, dim)
        index = cls(dim, metric, storage, threads=threads)  # type: ignore[arg-type]
        index._c.add(vectors, ids, normalize=False)  # stored as scored: no second normalization
        index._c.next_id = next_id
        return index

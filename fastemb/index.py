"""Top-k search over embeddings: ``fastemb.Index``, a thin wrapper over the C++ core.

The wrapper owns the input policy, so that it is the same for every method:

- vectors and queries: any floating dtype (float16/32/64) and any strides are converted to a
  C-contiguous float32 copy (float32 C-contiguous input is used as is, without a copy);
  integer, bool, complex and object arrays are refused (ValueError). A 1-D array is one vector.
- ids: integer arrays (or one integer), converted to int64; ids must be in 0 ..= 2**63 - 2 and
  unique.

The C++ side (``fastemb._C.Index``) refuses anything but float32 C-contiguous input, checks
dimensions and finite values, and releases the GIL while it works.

Files: ``save`` writes format version 2 (csrc/format.cpp: the index's arrays as they are in
memory, so that ``load(path, mmap=True)`` uses them in place), through a temporary file
``.NAME.tmp-PID-RANDOM`` in the same folder that is locked while written, fsynced and renamed.
``load`` also reads version 1 (written by fastemb before the compressed modes)::

    b"FEMBIDX\\0"  u32 version = 1  u32 header_len  header (JSON: dim, metric, storage, count, next_id)
    ids int64 [count]  vectors float32 [count, dim]  u32 crc32 of everything before it
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import operator
import os
import secrets
import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from fastemb import _C

Metric = Literal["cosine", "ip"]
Storage = Literal["float32", "bfloat16", "int8", "binary"]

MAX_ID = 2**63 - 2
MAX_PAD = 1024  # k may exceed the number of stored vectors by padding only up to this (C++ kMaxPad)
# Candidates kept per result (k * oversample) when search() is not told: exact modes keep enough
# that the bound proves the result in one scan on ordinary data (bench/results/search.md);
# approximate ones re-score these from the codes, so more buys recall.
DEFAULT_OVERSAMPLE = {"exact": 16, "approximate": 8, "binary": 16}

_MAGIC = b"FEMBIDX\x00"
_PREFIX = struct.Struct("<8sII")  # magic, version, header length (version 1)
_CRC = struct.Struct("<I")
_CHUNK = 1 << 16  # rows per step when reading a version-1 file


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
    """Top-k search by cosine similarity or inner product.

    Args:
        dim: vector dimension, 1..65536.
        metric: "cosine" L2-normalizes vectors on add and queries on search; "ip" uses them as given.
        storage: what the scan reads. "float32": exact. "bfloat16" / "int8": 2 / 1 bytes per
            dimension; "binary": 1 bit per dimension (sign codes, re-scored from int8 codes).
        exact: bfloat16 / int8 only. True (the default) keeps the float32 rows and re-scores every
            candidate whose error bound reaches the k-th best float32 score, so search returns
            exactly the float32 index's top k (same ids, same scores, ties by id), on any data.
            False keeps no float32 rows (about 1 byte per dimension for int8) and re-scores the
            ``k * oversample`` best candidates from the codes: approximate.
            Binary is always approximate.
        threads: threads per search; 0 uses the CPUs this process may run on (its affinity and
            cgroup quota).

    Bytes per vector in memory (d = dim): float32 4d; int8 exact 5d + 24, approximate d + 24;
    bfloat16 exact 6d + 16, approximate 2d + 16; binary d / 8 + 8 + (d + 8) for the int8
    records; plus 8 for the id and 16-32 for the id map. ``Index.load(path, mmap=True)`` keeps
    the float32 rows and int8 records on disk and reads them for candidates only.

    Thread safety: ``search``, ``reconstruct``, ``ids``, ``save`` and pickling may run
    concurrently with each other; ``add``, ``remove`` and ``reset`` wait for them and run alone.
    Every call sees the index either before or after a whole ``add`` / ``remove``.
    """

    def __init__(
        self,
        dim: int,
        metric: Metric = "cosine",
        storage: Storage = "float32",
        *,
        exact: bool | None = None,
        threads: int = 0,
    ) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0: the CPUs this process may use), got {threads}")
        if exact is None:
            exact = storage != "binary"
        self._c = _C.Index(int(dim), metric, storage, bool(exact))
        self.threads = int(threads)

    @classmethod
    def _wrap(cls, c: _C.Index, threads: int) -> Index:
        index = cls.__new__(cls)
        index._c = c
        index.threads = int(threads)
        return index

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
    def exact(self) -> bool:
        """True when search returns exactly the float32 top k (float32, or exact compressed)."""
        return self._c.exact

    @property
    def mmap(self) -> bool:
        """True when loaded with ``mmap=True``: read-only, float32 rows / int8 records on disk."""
        return self._c.mapped

    @property
    def ntotal(self) -> int:
        """Number of stored vectors (FAISS's name; the same as ``len(index)``)."""
        return len(self._c)

    @property
    def memory_bytes(self) -> int:
        """Bytes of memory the index occupies once searched: its arrays (the scan's arrays of a
        memory-mapped index included, its on-disk float32 rows not), ids and id map."""
        return self._c.memory_bytes

    @staticmethod
    def kernels() -> dict[str, str]:
        """The scan kernel each storage uses on this CPU, e.g. {"int8": "avx512_vnni", ...}."""
        return dict(_C.kernels())

    def __len__(self) -> int:
        return len(self._c)

    def __repr__(self) -> str:
        extra = ", mmap=True" if self.mmap else ""
        return (
            f"Index(dim={self.dim}, metric={self.metric!r}, storage={self.storage!r}, "
            f"exact={self.exact}, len={len(self)}{extra})"
        )

    def add(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """Add ``vectors`` [n, dim] (or one [dim]); returns their ids, int64 [n].

        Without ``ids`` the index numbers them from one past the largest id it has seen. Raises
        ValueError for a wrong dimension, NaN/inf, a zero vector under cosine, ids outside
        0 ..= 2**63 - 2 (automatic ones included), or ids that repeat or are already present;
        a failed add changes nothing.
        """
        x = _as_matrix(vectors, self.dim, "vectors")
        return self._c.add(x, None if ids is None else _as_ids(ids))

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        oversample: int | None = None,
        allowed_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by score for each query.

        Args:
            queries: [q, dim], or one query [dim].
            k: results per query, >= 1 and at most ``max(len(index), 1024)``. When fewer than k
                vectors can be returned the rest of each row is padded with score -inf and id -1.
            oversample: compressed storage: the scan keeps k * oversample candidates per query
                (default ``DEFAULT_OVERSAMPLE``: 16 exact, 8 approximate, 16 binary). Exact modes
                scan once more, collecting every vector whose bound reaches the k-th score, when
                the bound does not separate the candidates from the rest.
            allowed_ids: return only these ids (filtered search); ids not in the index are
                ignored.

        Returns:
            (scores float32 [q, k], ids int64 [q, k]), best first; equal scores are ordered by
            smaller id. For a 1-D query both are [k].
        """
        q = _as_matrix(queries, self.dim, "queries")
        allowed = None if allowed_ids is None else _as_ids(allowed_ids, "allowed_ids")
        if oversample is None:
            kind = "binary" if self.storage == "binary" else "exact" if self.exact else "approximate"
            oversample = DEFAULT_OVERSAMPLE[kind]
        # operator.index: a float k (2.5) is a TypeError, not silently truncated.
        scores, ids = self._c.search(
            q, operator.index(k), operator.index(oversample), self.threads, False, allowed
        )
        if np.asarray(queries).ndim == 1:
            return scores[0], ids[0]
        return scores, ids

    def remove(self, ids: np.ndarray | int) -> None:
        """Remove vectors by id; their memory is returned at once. Unknown or repeated ids raise
        ValueError and remove nothing. Ids are never reused (until ``reset``)."""
        self._c.remove(_as_ids(ids))

    def reset(self) -> None:
        """Remove everything (a memory-mapped index lets its file go); ids start again at 0."""
        self._c.reset()

    def reconstruct(self, ids: np.ndarray | int) -> np.ndarray:
        """The stored vector(s) as scored (normalized for cosine): [dim] for one id, [m, dim] for
        an array. Exact for float32 storage and exact modes; decoded from the codes otherwise."""
        single = np.ndim(ids) == 0
        out = self._c.reconstruct(_as_ids(ids))
        return out[0] if single else out

    def ids(self) -> np.ndarray:
        """The stored ids, int64 [len(index)], in storage order."""
        return self._c.ids()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to ``path`` atomically: a locked temporary file in the same folder,
        fsynced, then renamed over ``path``; concurrent saves to one path each write their own
        temporary file, and the last rename wins. Temporaries that a killed process left behind
        are removed first (only those no live process holds)."""
        path = Path(path)
        _remove_debris(path)
        fd, tmp = _create_locked_temp(path)
        try:
            self._c.write_fd(fd)
            os.fsync(fd)
            os.replace(tmp, path)
            tmp = None
            _fsync_dir(path.parent)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            os.close(fd)  # releases the lock

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        mmap: bool = False,
        verify: bool = False,
        threads: int = 0,
    ) -> Index:
        """Read an index written by ``save`` (format version 2, or version 1).

        ``mmap=False`` copies it into memory, checking every checksum and value: a truncated,
        corrupt or foreign file raises ValueError. ``mmap=True`` maps the file instead: loading
        reads only its header (a 10M-vector index opens in milliseconds), the scan's arrays are
        paged in by the first search, float32 rows and int8 records are read from disk only for
        the candidates; the index is read-only and the file must stay as it is while the index is
        open. The header and sizes are checked, the data only with ``verify=True``.
        """
        path = Path(path)
        with open(path, "rb") as f:  # FileNotFoundError / IsADirectoryError as usual
            prefix = f.read(_PREFIX.size)
        _remove_debris(path)
        if len(prefix) < _PREFIX.size or prefix[:8] != _MAGIC:
            raise ValueError(f"{path}: not a fastemb index (magic {prefix[:8]!r})")
        version = struct.unpack_from("<I", prefix, 8)[0]
        if version == 1:
            if mmap:
                raise ValueError(
                    f"{path}: index format version 1 cannot be memory-mapped; load it without "
                    "mmap and save it again to convert it to version 2"
                )
            return _load_v1(cls, path, threads)
        if version != 2:
            raise ValueError(f"{path}: index format version {version}, this fastemb reads 1 and 2")
        return cls._wrap(_C.Index.load(str(path), mmap, verify), threads)

    def __reduce__(self):
        # Pickled through the same bytes as save (multiprocessing, joblib): no pickle of C++ state.
        return (_from_bytes, (self._c.to_bytes(), self.threads))


def _from_bytes(data: bytes, threads: int = 0) -> Index:
    return Index._wrap(_C.Index.from_bytes(data), threads)


def _load_v1(cls: type[Index], path: Path, threads: int) -> Index:
    """Version 1: JSON header, ids, float32 vectors as scored, crc32 of everything. Streamed in
    chunks (the checksum first, then the vectors), so memory never holds the file twice."""
    size = path.stat().st_size
    if size < _PREFIX.size + _CRC.size:
        raise ValueError(f"{path}: {size} bytes is too short for a fastemb index")
    with open(path, "rb") as f:
        crc, left = 0, size - _CRC.size
        while left:
            block = f.read(min(left, 1 << 24))
            crc, left = zlib.crc32(block, crc), left - len(block)
        (stored,) = _CRC.unpack(f.read(_CRC.size))
        if crc != stored:
            raise ValueError(
                f"{path}: checksum mismatch (stored {stored:#010x}, computed {crc:#010x}): file is corrupt"
            )
        f.seek(0)
        _, _, hlen = _PREFIX.unpack(f.read(_PREFIX.size))
        try:
            h = json.loads(f.read(hlen))
            dim, count, next_id = int(h["dim"]), int(h["count"]), int(h["next_id"])
            metric, storage = str(h["metric"]), str(h["storage"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: bad index header: {e}") from e
        if dim < 1 or count < 0:
            raise ValueError(f"{path}: bad index header: dim {dim}, count {count}")
        expected = _PREFIX.size + hlen + count * 8 + count * dim * 4 + _CRC.size
        if size != expected:
            raise ValueError(
                f"{path}: {size} bytes, the header implies {expected}: file is truncated or corrupt"
            )
        ids = np.fromfile(f, dtype="<i8", count=count)
        index = cls(dim, metric, storage, threads=threads)  # type: ignore[arg-type]
        for s in range(0, count, _CHUNK):
            rows = min(_CHUNK, count - s)
            x = np.fromfile(f, dtype="<f4", count=rows * dim).reshape(rows, dim)
            index._c.add(x, ids[s : s + rows], normalize=False)  # stored as scored
    index._c.next_id = next_id
    return index


# ---------------------------------------------------------------- atomic save, kill debris


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def _create_locked_temp(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path``, ``.NAME.tmp-PID-RANDOM``, exclusively locked.

    The lock (flock, released when the writer exits, however it exits) tells ``_remove_debris``
    that a live process owns the file. A cleaner may remove the file between our open and our
    lock; then the name no longer leads to our file and we start again with a new name.
    """
    while True:
        tmp = str(path.with_name(f"{_temp_prefix(path)}{os.getpid()}-{secrets.token_hex(6)}"))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:  # another call drew the same name
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(tmp, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except (BlockingIOError, FileNotFoundError):
            pass
        os.close(fd)


def _remove_debris(path: Path) -> None:
    """Remove the temporary files of saves to ``path`` whose writer died (SIGKILL, power loss).

    A file is removed only if no process holds its lock; for the lock-less names of fastemb
    before format version 2 (``.NAME.tmp-PID``) also only if process PID no longer exists.
    Never raises: cleaning is a courtesy, not part of the save or load.
    """
    prefix = _temp_prefix(path)
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        pid_text, sep, _ = name[len(prefix) :].partition("-")
        if not pid_text.isdigit():
            continue
        old_style = not sep
        tmp = path.with_name(name)
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if old_style and _process_exists(int(pid_text)):
                continue
            if os.stat(tmp, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(tmp)
        except OSError:  # locked by a live writer, or already gone
            pass
        finally:
            os.close(fd)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

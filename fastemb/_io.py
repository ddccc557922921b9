"""Atomic files and directories: a crash, an error or a kill never leaves a half-written artifact.

Every writer builds its output under a hidden sibling name (``.NAME.tmp-XXXXXXXX``) and renames it
into place only once it is complete. While it works, the writer holds an exclusive ``flock`` on
that temporary file or directory; the kernel drops the lock when the process dies, however it
dies. :func:`recover` (run by every writer before it starts) therefore tells the debris of a
killed writer (unlocked) from the work of a live one (locked), and removes only the former.

Replacing a directory swaps the two in one ``renameat2(RENAME_EXCHANGE)`` call where the kernel and
the file system support it, so ``NAME`` always holds the old or the new version. Elsewhere the old
directory is first parked as ``.NAME.old-XXXXXXXX``; a kill between the two renames leaves it there,
and :func:`recover` renames it back to ``NAME``.

New files and directories get the permissions the umask allows (``0644`` / ``0755`` under umask
022), like any file the process creates: the temporary names are created with ``os.open(...,
0o666)`` and ``os.mkdir(..., 0o777)``, not with ``tempfile``'s private ``0600`` / ``0700``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TMP, OLD = "tmp", "old"
_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def debris_name(path: Path, kind: str) -> Path:
    """A fresh hidden sibling of ``path``: ``.NAME.tmp-XXXXXXXX`` or ``.NAME.old-XXXXXXXX``."""
    return path.with_name(f".{path.name}.{kind}-{secrets.token_hex(4)}")


def _debris(path: Path) -> list[Path]:
    prefixes = (f".{path.name}.{TMP}-", f".{path.name}.{OLD}-")
    try:
        return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefixes))
    except FileNotFoundError:
        return []


def _lock(fd: int, wait: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _same(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover(path: str | Path) -> list[str]:
    """Clean up after writers of ``path`` that were killed; returns one line per action.

    A ``.NAME.tmp-*`` nobody holds is removed. A ``.NAME.old-*`` nobody holds is the previous
    version of a directory whose replacement was cut short: it is renamed back to ``NAME`` if
    ``NAME`` is missing, else removed. Work in progress (locked) is left alone.
    """
    path = Path(path)
    done = []
    for p in _debris(path):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile, a symlink, or not ours to read
            continue
        try:
            if not _lock(fd, wait=False) or not _same(fd, p):
                continue  # a live writer's, or renamed meanwhile
            if p.name.startswith(f".{path.name}.{OLD}-") and not os.path.lexists(path):
                os.rename(p, path)
                done.append(f"restored {path} from {p.name}, left by an interrupted replacement")
            else:
                _remove(p)
                done.append(f"removed {p}, left by an interrupted write")
        finally:
            os.close(fd)
    return done


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(2)``; False where the C library, kernel or file system lacks it."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


@contextlib.contextmanager
def _created_locked(target: Path, make) -> Iterator[tuple[Path, int]]:
    """Create a fresh ``.NAME.tmp-*`` sibling of ``target`` with ``make(path) -> fd``; hold an
    flock on it for the block. Yields the path and the descriptor."""
    while True:
        path = debris_name(target, TMP)
        try:
            fd = make(path)
        except FileExistsError:  # a name another writer drew: draw again
            continue
        _lock(fd, wait=True)
        if _same(fd, path):  # not removed by a recover() that ran between create and lock
            break
        os.close(fd)
    try:
        yield path, fd
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for p in directory.rglob("*"):
        if p.is_file() and not p.is_symlink():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_target(out: Path, overwrite: bool) -> None:
    if os.path.lexists(out):
        if out.is_symlink() or not out.is_dir():
            raise FileExistsError(f"output exists and is not a directory: {out} (remove it or choose another path)")
        if not overwrite:
            raise FileExistsError(f"output exists: {out} (pass overwrite=True / --overwrite to replace it)")


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory beside ``out``; rename it to ``out`` on success.

    On any exception (Ctrl-C, and SIGTERM in the CLIs, included) the staging directory is removed
    and ``out`` is left as it was; after a kill, the next writer of ``out`` removes it (see
    :func:`recover`). An existing ``out`` is an error unless ``overwrite`` is true; it is replaced
    only after the new directory is complete, and ``out`` never goes missing on the way.
    """
    out = Path(out)
    recover(out)
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)

    def make(p: Path) -> int:
        os.mkdir(p, 0o777)  # the umask decides, as for any new directory
        return os.open(p, os.O_RDONLY)

    with _created_locked(out, make) as (stage, _fd):
        try:
            yield stage
            _fsync_tree(stage)
            _check_target(out, overwrite)
            _install(stage, out)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    _fsync_dir(out.parent)


def _install(stage: Path, out: Path) -> None:
    """Move the finished ``stage`` to ``out``; an existing ``out`` is swapped out and removed."""
    if not os.path.lexists(out):
        if not _renameat2(stage, out, _RENAME_NOREPLACE):
            os.rename(stage, out)
        return
    if _renameat2(stage, out, _RENAME_EXCHANGE):  # stage now holds the old version
        shutil.rmtree(stage, ignore_errors=True)
        return
    fd = os.open(out, os.O_RDONLY)  # park the old version under a name recover() restores
    try:
        _lock(fd, wait=True)
        old = debris_name(out, OLD)
        os.rename(out, old)
        try:
            os.rename(stage, out)
        except BaseException:  # an error or Ctrl-C between the renames: put the old one back now
            if not os.path.lexists(out):
                os.rename(old, out)
            raise
    finally:
        os.close(fd)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` (by rename, after fsync) when the block ends.

    On an exception the temporary file is removed and ``path`` is untouched; after a kill, the
    next writer of ``path`` removes it (see :func:`recover`).
    """
    path = Path(path)
    recover(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def make(p: Path) -> int:
        return os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides

    with _created_locked(path, make) as (tmp, fd):
        try:
            with os.fdopen(os.dup(fd), "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    with atomic_file(path) as f:
        f.write(data)


def refuse_overwriting_source(out: str | Path, *sources: str | Path | None) -> None:
    """Refuse an output that is, or contains, one of ``sources``: replacing it would delete them."""
    target = Path(out).resolve()
    for src in sources:
        if src is not None and (target == Path(src).resolve() or target in Path(src).resolve().parents):
            raise ValueError(f"output {out} is or contains the input {src}: writing it would delete the input; "
                             "choose another output path")

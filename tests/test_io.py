"""fastemb._io: atomic writes survive kills (the next writer cleans or restores what a killed one
left), never touch a live writer's work, and create files with the permissions the umask allows."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fastemb._io import atomic_dir, atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]


def debris(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def start_writer(code: str) -> subprocess.Popen:
    """A Python process running ``code``; it prints ``ready`` once its writer is mid-way."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()
    return proc


def kill(proc: subprocess.Popen, sig: int) -> None:
    proc.send_signal(sig)
    proc.wait(timeout=60)


WRITE_DIR = """
    import sys, time
    from fastemb._io import atomic_dir
    with atomic_dir({out!r}, overwrite=True) as d:
        (d / "part").write_bytes(b"x" * 100_000)
        print("ready", flush=True)
        time.sleep(600)
"""

WRITE_FILE = """
    import os, time
    from fastemb._io import atomic_write_bytes
    def stuck(fd):  # the data is written; the writer is killed before its rename
        print("ready", flush=True)
        time.sleep(600)
    os.fsync = stuck
    atomic_write_bytes({out!r}, b"new data")
"""


def test_sigkilled_directory_writer_is_cleaned_by_the_next_writer(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    proc = start_writer(WRITE_DIR.format(out=str(out)))
    kill(proc, signal.SIGKILL)
    assert len(debris(tmp_path)) == 1  # the killed writer's staging directory
    with atomic_dir(out) as d:
        (d / "new").write_text("new")
    assert debris(tmp_path) == [] and os.listdir(out) == ["new"]


def test_sigkilled_file_writer_is_cleaned_by_the_next_writer(tmp_path: Path) -> None:
    out = tmp_path / "vectors.npy"
    out.write_bytes(b"old")
    for _ in range(3):  # debris does not pile up, however many writers are killed
        kill(start_writer(WRITE_FILE.format(out=str(out))), signal.SIGKILL)
    assert len(debris(tmp_path)) == 1 and out.read_bytes() == b"old"  # each writer cleans the last one's
    atomic_write_bytes(out, b"new")
    assert debris(tmp_path) == [] and out.read_bytes() == b"new"


def test_a_live_writers_staging_directory_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    proc = start_writer(WRITE_DIR.format(out=str(out)))
    try:
        (live,) = debris(tmp_path)
        with atomic_dir(out, overwrite=True) as d:  # a second writer of the same path meanwhile
            (d / "mine").write_text("mine")
        assert debris(tmp_path) == [live] and os.listdir(out) == ["mine"]
        assert (tmp_path / live / "part").stat().st_size == 100_000
    finally:
        kill(proc, signal.SIGKILL)


def test_kill_between_the_two_renames_of_a_replacement_is_restored(tmp_path: Path) -> None:
    """Where the swap cannot be one renameat2(RENAME_EXCHANGE) (other systems, some file systems),
    the old directory is parked first; a kill right after parking loses nothing."""
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old").write_text("old")
    code = f"""
        import os, signal
        import fastemb._io as io
        io._renameat2 = lambda *a: False  # as on a system without renameat2
        calls = []
        real_rename, real_replace = os.rename, os.replace
        def dying(real):
            def rename(src, dst):
                calls.append(src)
                if len(calls) == 2:  # the second rename of the replacement: die before it
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(src, dst)
            return rename
        os.rename, os.replace = dying(real_rename), dying(real_replace)
        print("ready", flush=True)
        with io.atomic_dir({str(out)!r}, overwrite=True) as d:
            (d / "new").write_text("new")
    """
    proc = start_writer(code)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # what the kill left: no bundle at OUT, the old one parked
    with pytest.raises(FileExistsError, match="output exists"):
        with atomic_dir(out):  # the next writer restores the old version, then refuses to replace it
            pass
    assert (out / "old").read_text() == "old" and debris(tmp_path) == []


def test_replacing_keeps_the_old_directory_until_the_new_one_is_complete(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with atomic_dir(out) as d:
        (d / "v").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True) as d:
            (d / "v").write_text("2")
            raise RuntimeError("export failed")
    assert (out / "v").read_text() == "1" and debris(tmp_path) == []
    with atomic_dir(out, overwrite=True) as d:
        (d / "v").write_text("2")
    assert (out / "v").read_text() == "2" and debris(tmp_path) == []


def test_existing_file_or_symlink_is_not_replaced_by_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file")
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    for name in ("f", "link"):
        with pytest.raises(FileExistsError, match="not a directory"):
            with atomic_dir(tmp_path / name, overwrite=True):
                pass
    assert (tmp_path / "f").read_text() == "a file" and (tmp_path / "link").is_symlink()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_new_files_and_directories_respect_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "d") as d:
            (d / "inner").write_text("x")
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o666 & ~umask


def test_sigterm_during_an_atomic_write_in_a_cli_cleans_up(tmp_path: Path) -> None:
    """The CLIs handle SIGTERM as Ctrl-C: the staging directory goes, the exit status is 143."""
    out = tmp_path / "bundle"
    code = f"""
        import time
        from fastemb._cli import run_command
        from fastemb._io import atomic_dir
        def work():
            with atomic_dir({str(out)!r}) as d:
                (d / "part").write_bytes(b"x")
                print("ready", flush=True)
                time.sleep(600)
        raise SystemExit(run_command(work))
    """
    proc = start_writer(code)
    time.sleep(0.2)
    kill(proc, signal.SIGTERM)
    assert proc.returncode == 143, proc.stderr.read()
    assert debris(tmp_path) == [] and not out.exists()

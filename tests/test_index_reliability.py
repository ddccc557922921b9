"""fastemb.Index used as a careless or hostile user would (issue 12), and its memory (issue 14):
id range, concurrent saves, what a killed save leaves, huge k, pickling, search threads under a
CPU affinity, peak memory of add / load, memory returned by remove. Each test failed on main at
797eb32 (the reason is in its docstring)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastemb
from fastemb import _C
from fastemb.index import Index

ROOT = Path(fastemb.__file__).resolve().parents[1]  # the checkout under test, for subprocesses
MAX_ID = 2**63 - 2


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- 1. ids


def test_ids_never_leave_the_valid_range() -> None:
    """main: the automatic ids after id 2**63 - 100 wrapped to negative numbers, and id
    2**63 - 1 was handed out twice; save then succeeded and load refused the file."""
    index = Index(4, "ip")
    index.add(np.ones((1, 4)), ids=[2**63 - 100])
    with pytest.raises(ValueError, match=r"automatic ids 9223372036854775709 \.\. .* \+ 199 would pass the largest id 9223372036854775806"):
        index.add(np.ones((200, 4)))
    assert len(index) == 1
    last = index.add(np.ones((98, 4)))  # exactly up to the largest id
    assert last[-1] == MAX_ID and len(index) == 99
    with pytest.raises(ValueError, match="would pass the largest id"):
        index.add(np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"ids must be <= 9223372036854775806 .*got 9223372036854775807"):
        Index(4).add(np.ones((1, 4)), ids=[2**63 - 1])
    assert sorted(index.ids()) == [2**63 - 100 + i for i in range(99)]
    again = pickle.loads(pickle.dumps(index))  # and the index still saves and loads
    assert sorted(again.ids()) == sorted(index.ids())


# ---------------------------------------------------------------- 2. concurrent saves


def test_concurrent_saves_to_one_path_never_fail_or_corrupt(tmp_path: Path) -> None:
    """main: two threads saving to one path (a third adding) mostly got FileNotFoundError (one
    temporary name per process), and a save that returned could leave a file failing its
    checksum."""
    rng = np.random.default_rng(0)
    index = Index(32, storage="int8")
    index.add(rng.standard_normal((3000, 32)))
    path = tmp_path / "shared.fe"
    errors: list[BaseException] = []
    stop = threading.Event()

    def saver() -> None:
        try:
            for _ in range(25):
                index.save(path)
                assert len(Index.load(path)) >= 3000  # what a returned save left is whole
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def adder() -> None:
        try:
            while not stop.is_set():
                index.remove(index.add(rng.standard_normal((20, 32))))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    savers = [threading.Thread(target=saver) for _ in range(2)]
    other = threading.Thread(target=adder)
    for t in [*savers, other]:
        t.start()
    for t in savers:
        t.join(timeout=120)
    stop.set()
    other.join(timeout=60)
    assert not errors, errors
    # The last save saw the index before or after one whole add (+20) / remove, never between.
    assert len(Index.load(path)) in (3000, 3020)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.fe"]  # no temporary left
    index.save(path)  # with the adder stopped: exactly the 3,000 vectors
    assert len(Index.load(path)) == 3000


# ---------------------------------------------------------------- 3. what a kill leaves

# A child that saves `path` and stops inside the save (after writing, before the rename): the
# state a SIGKILL at that moment leaves. It prints "writing" when it is there.
_STUCK_SAVE = """
    import os, sys, time, numpy as np
    from fastemb.index import Index
    index = Index(16, storage="int8")
    index.add(np.random.default_rng(0).standard_normal((2000, 16)))
    def stuck(fd):
        print("writing", flush=True)
        time.sleep(120)
    os.fsync = stuck
    index.save(sys.argv[1])
"""


def _stuck_saver(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_STUCK_SAVE), str(path)], env=env,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    return child


def _debris(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.tmp-"))


def test_the_next_save_or_load_removes_what_a_killed_save_left(tmp_path: Path) -> None:
    """main: a save killed with SIGKILL left `.NAME.tmp-PID` files that nothing removed."""
    path = tmp_path / "i.fe"
    for killed in range(2):
        child = _stuck_saver(path)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert len(_debris(path)) == 1, _debris(path)
        index = Index(4)
        index.add(np.eye(4))
        if killed == 0:
            index.save(path)
        else:
            Index.load(path)
        assert _debris(path) == [], _debris(path)
    assert len(Index.load(path)) == 4


def test_cleaning_never_removes_a_file_a_live_process_is_writing(tmp_path: Path) -> None:
    """Debris is recognized by its lock: a temporary file whose writer is alive (it holds the
    lock) stays while other processes save and load the same path; a version-1-style name
    `.NAME.tmp-PID` (no lock) stays while process PID exists and goes once it does not."""
    path = tmp_path / "i.fe"
    child = _stuck_saver(path)
    try:
        live = _debris(path)
        assert len(live) == 1
        index = Index(4)
        index.add(np.eye(4))
        index.save(path)
        Index.load(path)
        assert _debris(path) == live  # still there: its writer holds the lock
    finally:
        child.kill()
        child.wait()
    old_alive = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    old_dead = path.with_name(f".{path.name}.tmp-{int(dead.stdout)}")
    old_alive.write_bytes(b"partial")
    old_dead.write_bytes(b"partial")
    index.save(path)
    assert _debris(path) == [old_alive.name]  # the killed child's and the dead PID's are gone


# ---------------------------------------------------------------- 8. huge k


def test_huge_k_is_refused_before_anything_is_allocated() -> None:
    """main: k = 10**8 on 1,000 vectors allocated 1.12 GiB and returned it full of -1."""
    rng = np.random.default_rng(1)
    index = Index(8)
    index.add(rng.standard_normal((1000, 8)))
    q = rng.standard_normal((3, 8))
    for k in (10**8, 10**18, 1025):
        with pytest.raises(ValueError, match=rf"k = {k} is larger than the index \(1000 vectors\); .*only up to 1024"):
            index.search(q, k)
    s, i = index.search(q, 1024)  # up to 1024 the rest is padding
    assert i.shape == (3, 1024) and np.all(i[:, 1000:] == -1) and np.all(s[:, 1000:] == -np.inf)
    assert sorted(index.search(q, 1000)[1][0]) == list(range(1000))
    big = Index(8, storage="int8")
    big.add(rng.standard_normal((3000, 8)))
    assert big.search(q, 3000)[1].shape == (3, 3000)  # k up to the index size is fine


# ---------------------------------------------------------------- pickling


def _search_in_child(args: tuple[Index, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    index, q = args
    return index.search(q, 5)


@pytest.mark.parametrize("storage,exact", [("float32", True), ("int8", True), ("int8", False), ("binary", False)])
def test_pickling_goes_through_the_save_bytes_and_works_across_processes(storage: str, exact: bool) -> None:
    """main: TypeError: cannot pickle 'fastemb._C.Index'."""
    rng = np.random.default_rng(2)
    index = Index(24, storage=storage, threads=1, **({} if exact else {"exact": False}))
    index.add(rng.standard_normal((400, 24)), ids=rng.permutation(10_000)[:400])
    q = rng.standard_normal((6, 24))
    want = index.search(q, 5)
    copy = pickle.loads(pickle.dumps(index))
    assert copy.threads == 1 and copy.storage == storage and copy.exact == exact
    for a, b in zip(copy.search(q, 5), want, strict=True):
        np.testing.assert_array_equal(a, b)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got = pool.map(_search_in_child, [(index, q)])[0]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- search threads


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell 1 allowed CPU from all")
def test_search_threads_follow_the_cpu_affinity() -> None:
    """main: search started std::thread::hardware_concurrency() threads whatever CPUs the process
    may use. Here the process may use one CPU: searches must start no thread."""
    out = run_python("""
        import os, threading, numpy as np
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        from fastemb import _C
        from fastemb.index import Index
        index = Index(32, "ip", "int8")
        index.add(np.random.default_rng(0).standard_normal((60000, 32)).astype(np.float32))
        q = np.random.default_rng(1).standard_normal((50, 32)).astype(np.float32)
        seen, stop = [], threading.Event()
        def poll():
            while not stop.is_set():
                seen.append(len(os.listdir("/proc/self/task")))
        poller = threading.Thread(target=poll)
        poller.start()
        import time; time.sleep(0.2)
        base = max(seen)
        for _ in range(40):
            index.search(q, 10)
        stop.set(); poller.join()
        print(max(seen) - base)
    """)
    assert out.returncode == 0, out.stderr
    extra = int(out.stdout)
    assert extra == 0, f"{extra} extra threads under a 1-CPU affinity"


def test_usable_cpus_counts_the_affinity_mask() -> None:
    out = run_python("""
        import os
        from fastemb import _C
        print(_C.usable_cpus(), len(os.sched_getaffinity(0)))
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(_C.usable_cpus())
    """)
    assert out.returncode == 0, out.stderr
    cpus, allowed, one = map(int, out.stdout.split())
    assert cpus <= allowed and one == 1


# ---------------------------------------------------------------- memory (issue 14)

# Peak memory in a fresh process: /proc/self/clear_refs "5" resets VmHWM to the current RSS.
_MEMORY = """
    import sys, numpy as np
    from fastemb.index import Index
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    storage, exact, path = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
    x = np.random.default_rng(0).standard_normal((200000, 96)).astype(np.float32)
    q = x[:5]
    index = Index(96, "cosine", storage, **({} if exact else {"exact": False}))
    reset_peak(); base = status("VmRSS")
    index.add(x)
    add_peak = status("VmHWM") - base
    size = index.memory_bytes
    index.save(path)
    del index
    reset_peak(); base = status("VmRSS")
    index = Index.load(path)
    load_peak, loaded = status("VmHWM") - base, status("VmRSS") - base
    index.remove(index._c.ids()[: int(0.95 * len(index))])
    after_remove = status("VmRSS") - base
    print(size, add_peak, load_peak, loaded, after_remove, index.memory_bytes)
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs /proc/self/clear_refs to measure peak memory")
@pytest.mark.parametrize("storage,exact", [("int8", True), ("int8", False), ("binary", False)])
def test_memory_add_and_load_peak_and_remove_gives_memory_back(tmp_path: Path, storage: str, exact: bool) -> None:
    """main: adding 1M x 384 int8 peaked at 2.4x the index, loading at 3x the file, and removing
    95% of the vectors freed nothing. Asserted loosely (the goal is 1.2x, here 1.35x): the
    saving is a factor of 2 or more, not noise."""
    out = run_python(_MEMORY, storage, "1" if exact else "0", str(tmp_path / "i.fe"))
    assert out.returncode == 0, out.stderr
    size, add_peak, load_peak, loaded, after_remove, left = map(int, out.stdout.split())
    assert add_peak <= 1.35 * size, (add_peak, size)
    assert load_peak <= 1.35 * size, (load_peak, size)
    assert loaded >= 0.8 * size  # the measure sees the index
    assert after_remove <= 0.25 * size, (after_remove, size)  # 95% removed: pages given back
    assert left <= 0.1 * size
    bytes_per_vector = size / 200_000
    limit = {("int8", True): 5 * 96 + 24 + 60, ("int8", False): 96 + 24 + 60, ("binary", False): 12 + 8 + 104 + 60}
    assert bytes_per_vector <= limit[(storage, exact)], bytes_per_vector


def test_memory_mapped_index_keeps_rows_on_disk(tmp_path: Path) -> None:
    """int8 with float32 rows memory-mapped: about 1 byte per dimension in memory, 4x less than
    float32; binary codes mapped: about d / 8 bytes, 20x less."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20_000, 256)).astype(np.float32)
    sizes = {}
    for storage, exact in (("float32", True), ("int8", True), ("binary", False)):
        index = Index(256, storage=storage, exact=exact)
        index.add(x)
        index.save(tmp_path / f"{storage}.fe")
        mapped = Index.load(tmp_path / f"{storage}.fe", mmap=True)
        mapped.search(x[:3], 10)
        sizes[storage] = mapped.memory_bytes / 20_000
    assert sizes["int8"] <= 256 * 1.1 + 40, sizes
    assert sizes["float32"] >= 3.5 * sizes["int8"], sizes
    assert sizes["float32"] >= 15 * sizes["binary"], sizes
    assert _C.kernels()["binary"] in ("avx512_vpopcntdq", "generic")


def test_mmap_load_does_not_read_the_file(tmp_path: Path) -> None:
    """Loading memory-mapped maps the file and checks its header: time and memory do not grow
    with the index (the 10M-vector figure is in bench/results/search-10m.md)."""
    rng = np.random.default_rng(4)
    index = Index(128, storage="int8", exact=False)
    index.add(rng.standard_normal((100_000, 128)))
    index.save(tmp_path / "i.fe")
    t = time.perf_counter()
    mapped = Index.load(tmp_path / "i.fe", mmap=True)
    assert time.perf_counter() - t < 0.5
    assert mapped.memory_bytes >= 100_000 * 128  # counted once searched
    assert len(mapped) == 100_000

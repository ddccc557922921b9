"""fastemb.Index at its boundaries: bad input, save/load and corrupt files, concurrency, fuzz."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from fastemb import _C
from fastemb.index import Index

STORAGES = ["float32", "bfloat16", "int8"]


@pytest.fixture
def index() -> Index:
    rng = np.random.default_rng(0)
    ix = Index(8)
    ix.add(rng.standard_normal((30, 8)), ids=np.arange(100, 130))
    return ix


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda ix: ix.add(np.ones((2, 7))), "dimension 7, the index has dimension 8"),
        (lambda ix: ix.search(np.ones((2, 9)), 3), "dimension 9"),
        (lambda ix: ix.add(np.array([[np.nan] + [1.0] * 7])), "row 0 column 0 is not finite"),
        (lambda ix: ix.add(np.array([[1.0] * 7 + [np.inf]])), "column 7 is not finite"),
        (
            lambda ix: ix.search(np.array([[1.0] * 3 + [-np.inf] + [1.0] * 4]), 3),
            "queries row 0 column 3",
        ),
        (lambda ix: ix.add(np.full((1, 8), 1e300)), "not finite"),  # float64 overflows float32
        (lambda ix: ix.add(np.full((1, 8), 1e19, np.float32)), "scores would overflow"),
        (lambda ix: ix.add(np.zeros((1, 8))), "all zeros"),
        (lambda ix: ix.search(np.ones((1, 8)), 0), "k must be >= 1, got 0"),
        (lambda ix: ix.search(np.ones((1, 8)), -3), "k must be >= 1, got -3"),
        (lambda ix: ix.search(np.ones((1, 8)), 3, oversample=0), "oversample"),
        (lambda ix: ix.search(np.ones((0, 8)), 3), "empty query batch"),
        (lambda ix: ix.search(np.ones((2, 8), dtype=np.int32), 3), "floating-point"),
        (lambda ix: ix.add(np.ones((2, 8), dtype=bool)), "floating-point"),
        (lambda ix: ix.add(np.ones((2, 8), dtype=np.complex64)), "floating-point"),
        (lambda ix: ix.add([["a"] * 8]), "floating-point"),
        (lambda ix: ix.add(np.ones((2, 2, 8))), "1-D .* or 2-D"),
        (lambda ix: ix.add(np.ones((2, 8)), ids=[5, 5]), "duplicate id 5"),
        (lambda ix: ix.add(np.ones((1, 8)), ids=[100]), "id 100 is already in the index"),
        (lambda ix: ix.add(np.ones((1, 8)), ids=[-1]), "ids must be >= 0"),
        (lambda ix: ix.add(np.ones((2, 8)), ids=[1]), "2 vectors but 1 ids"),
        (lambda ix: ix.add(np.ones((1, 8)), ids=[1.5]), "ids must be integers"),
        (lambda ix: ix.add(np.ones((1, 8)), ids=np.array([2**64 - 1], np.uint64)), "fit in int64"),
        (lambda ix: ix.remove([100, 100]), "duplicate id 100"),
        (lambda ix: ix.remove([100, 7]), "id 7 is not in the index"),
        (lambda ix: Index(0), "dim must be in"),
        (lambda ix: Index(4, "l2"), "metric must be"),  # type: ignore[arg-type]
        (lambda ix: Index(4, storage="fp16"), "storage must be"),  # type: ignore[arg-type]
        (lambda ix: Index(4, threads=-1), "threads"),
    ],
)
def test_bad_input_raises_value_error_and_changes_nothing(index: Index, call, match: str) -> None:
    before = (len(index), index._c.ids().copy(), index.search(np.ones(8), 5))
    with pytest.raises(ValueError, match=match):
        call(index)
    assert len(index) == before[0]
    np.testing.assert_array_equal(index._c.ids(), before[1])
    after = index.search(np.ones(8), 5)
    np.testing.assert_array_equal(after[1], before[2][1])


def test_non_integer_k_is_a_type_error(index: Index) -> None:
    with pytest.raises(TypeError):
        index.search(np.ones(8), 2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        index.search(np.ones(8), 2, oversample=1.5)  # type: ignore[arg-type]


def test_cpp_boundary_refuses_instead_of_converting() -> None:
    # The Python wrapper converts; the C++ object itself must refuse, never read out of bounds.
    c = _C.Index(4, "ip", "float32", True)
    with pytest.raises(ValueError, match="float32, got dtype float64"):
        c.add(np.ones((2, 4)), None)
    with pytest.raises(ValueError, match="C-contiguous"):
        c.add(np.ones((4, 8), np.float32)[:, ::2], None)
    with pytest.raises(ValueError, match="2-D"):
        c.search(np.ones(4, np.float32), 1)
    with pytest.raises(ValueError, match="int64"):
        c.add(np.ones((1, 4), np.float32), np.array([1], np.int32))
    with pytest.raises(ValueError, match="next_id"):
        c.add(np.ones((1, 4), np.float32), np.array([9]))
        c.next_id = 3


def test_fuzz_boundary_random_shapes_dtypes_strides() -> None:
    """Every random input either raises ValueError or gives the result of its float32 copy."""
    rng = np.random.default_rng(7)
    dtypes = [
        np.float16,
        np.float32,
        np.float64,
        np.int32,
        np.int64,
        np.uint8,
        np.bool_,
        np.complex64,
        object,
    ]
    base = Index(5, "ip")
    base.add(rng.standard_normal((64, 5)).astype(np.float32))
    searched = refused = 0
    for trial in range(300):
        ndim = int(rng.integers(0, 4))
        shape = tuple(int(v) for v in rng.integers(0, 7, size=ndim))
        if ndim and rng.random() < 0.6:
            shape = shape[:-1] + (5,)
        dtype = dtypes[int(rng.integers(len(dtypes)))]
        full = np.asarray(
            rng.standard_normal(tuple(s * 2 for s in shape)) * 10.0 ** int(rng.integers(-3, 3))
        )
        if rng.random() < 0.1 and full.size:
            full.flat[int(rng.integers(full.size))] = [np.nan, np.inf, -np.inf][trial % 3]
        view = full[tuple(slice(None, None, 2) for _ in shape)] if shape else full  # non-contiguous
        with np.errstate(invalid="ignore"):  # nan -> int casts are part of the fuzz
            x = view.astype(dtype)
        if rng.random() < 0.3 and x.ndim == 2:
            x = np.asfortranarray(x)
        k = int(rng.integers(-1, 80))
        try:
            s, i = base.search(x, k)
        except ValueError:
            refused += 1
            continue
        searched += 1
        ref = np.ascontiguousarray(np.asarray(x).reshape(-1, 5), dtype=np.float32)
        rs, ri = base._c.search(ref, k, 4, 0, False)
        assert i.dtype == np.int64 and s.dtype == np.float32
        np.testing.assert_array_equal(i.reshape(ri.shape), ri)
        np.testing.assert_array_equal(s.reshape(rs.shape), rs)
        # The same input added to a fresh index either fails cleanly or adds every row.
        fresh = Index(5, "ip")
        try:
            fresh.add(x)
        except ValueError:
            assert len(fresh) == 0
        else:
            assert len(fresh) == ref.shape[0]
    assert searched >= 30 and refused >= 30, (searched, refused)  # both sides were exercised


# ---------------------------------------------------------------- persistence

MODES = [("float32", True), ("bfloat16", True), ("int8", True), ("bfloat16", False), ("int8", False), ("binary", False)]
V1_FIXTURE = Path(__file__).parent / "data" / "index_v1_int8_cosine.fe"


def _results(index: Index, q: np.ndarray) -> tuple:
    s, i = index.search(q, 12)
    f_s, f_i = index.search(q, 5, allowed_ids=index.ids()[::3])
    return s, i, f_s, f_i, index.reconstruct(index.ids()[:9]), np.sort(index.ids())


def _same(a: tuple, b: tuple) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("storage,exact", MODES)
@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_every_mode_round_trips_save_load_mmap_pickle(
    tmp_path: Path, storage: str, exact: bool, metric: str
) -> None:
    """save -> load, save -> load(mmap=True) and pickle give an index with the same results
    (search, filtered search, reconstruct, ids), the same next id and the same memory layout."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((300, 13)).astype(np.float32)
    q = rng.standard_normal((20, 13)).astype(np.float32)
    index = Index(13, metric, storage, exact=exact)
    index.add(x, ids=rng.permutation(1000)[:300])
    index.remove(index.ids()[:17])
    before = _results(index, q)
    path = tmp_path / "index.fe"
    index.save(path)
    assert list(tmp_path.iterdir()) == [path]  # the temporary file was renamed away
    loaded = Index.load(path)
    mapped = Index.load(path, mmap=True)
    verified = Index.load(path, mmap=True, verify=True)
    pickled = pickle.loads(pickle.dumps(index))
    for other in (loaded, mapped, verified, pickled):
        assert (other.dim, other.metric, other.storage, other.exact, len(other)) == (13, metric, storage, exact, 283)
        _same(_results(other, q), before)
        assert other._c.next_id == index._c.next_id
    assert mapped.mmap and not loaded.mmap
    assert loaded.memory_bytes == index.memory_bytes
    # the mapped copy saves (and pickles) to the same bytes, its rows read back from the file
    mapped.save(tmp_path / "again.fe")
    assert (tmp_path / "again.fe").read_bytes() == path.read_bytes()
    assert pickle.dumps(mapped) == pickle.dumps(index)
    assert loaded.add(x[:1])[0] == index.add(x[:1])[0]  # next_id survives
    empty = Index(3, metric, storage, exact=exact)
    empty.save(path)
    assert len(Index.load(path)) == 0 and len(Index.load(path, mmap=True)) == 0


def test_mmap_index_reads_rows_from_disk_only_for_candidates(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5000, 32)).astype(np.float32)
    index = Index(32, storage="int8")
    index.add(x)
    index.save(tmp_path / "i.fe")
    mapped = Index.load(tmp_path / "i.fe", mmap=True)
    int8_bytes = mapped.memory_bytes
    assert int8_bytes < index.memory_bytes / 3  # the float32 rows stay on disk
    mapped.search(x[:7], 10)
    stats = mapped._c.stats()
    assert 0 < stats["disk_reads"] == stats["rescored"] < 5000  # candidates only


def test_mmap_index_is_read_only_until_reset(tmp_path: Path) -> None:
    index = Index(4)
    index.add(np.eye(4))
    index.save(tmp_path / "i.fe")
    mapped = Index.load(tmp_path / "i.fe", mmap=True)
    for call in (lambda: mapped.add(np.ones(4)), lambda: mapped.remove(0)):
        with pytest.raises(ValueError, match="mmap=True .* read-only"):
            call()
    mapped.reset()  # lets the file go: an empty, writable index
    assert not mapped.mmap and mapped.add(np.ones(4)).tolist() == [0]


def _v1_bytes(dim: int, metric: str, storage: str, ids: np.ndarray, vectors: np.ndarray, next_id: int) -> bytes:
    """Format version 1 as fastemb wrote it before version 2 (the old fastemb/index.py)."""
    header = json.dumps(
        {"format": "fastemb.Index", "dim": dim, "metric": metric, "storage": storage,
         "count": len(ids), "next_id": next_id},
        sort_keys=True,
    ).encode()
    body = (
        struct.pack("<8sII", b"FEMBIDX\0", 1, len(header)) + header
        + ids.astype("<i8").tobytes() + vectors.astype("<f4").tobytes()
    )
    return body + struct.pack("<I", zlib.crc32(body))


def test_reads_a_version_1_file_written_by_the_previous_fastemb() -> None:
    """tests/data/index_v1_int8_cosine.fe was written by fastemb before format version 2
    (main at 797eb32): 40 vectors of default_rng(2024).standard_normal((40, 6)), ids 3 i + 5,
    ids 5, 50 and 116 removed, int8, cosine."""
    x = np.random.default_rng(2024).standard_normal((40, 6)).astype(np.float32)
    ids = np.arange(40) * 3 + 5
    keep = ~np.isin(ids, [5, 50, 116])
    loaded = Index.load(V1_FIXTURE)
    assert (loaded.dim, loaded.metric, loaded.storage, loaded.exact, len(loaded)) == (6, "cosine", "int8", True, 37)
    assert sorted(loaded.ids()) == sorted(ids[keep])
    x64 = x[keep].astype(np.float64)
    want = (x64 / np.linalg.norm(x64, axis=1, keepdims=True)).astype(np.float32)
    np.testing.assert_allclose(loaded.reconstruct(ids[keep]), want, rtol=0, atol=1e-7)
    assert loaded.add(x[:1])[0] == 123  # its next_id
    with pytest.raises(ValueError, match="version 1 cannot be memory-mapped"):
        Index.load(V1_FIXTURE, mmap=True)


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_version_1_loads_like_the_index_it_describes(tmp_path: Path, storage: str, metric: str) -> None:
    rng = np.random.default_rng(10)
    x = rng.standard_normal((70_000, 5)).astype(np.float32)  # more than one chunk of rows
    if metric == "cosine":
        x = (x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)
    ids = rng.permutation(100_000)[:70_000].astype(np.int64)
    (tmp_path / "v1.fe").write_bytes(_v1_bytes(5, metric, storage, ids, x, 100_007))
    loaded = Index.load(tmp_path / "v1.fe")
    built = Index(5, metric, storage)
    built.add(x, ids)
    q = rng.standard_normal((9, 5)).astype(np.float32)
    _same(loaded.search(q, 10), built.search(q, 10))
    assert loaded._c.next_id == 100_007


def _v1_corrupt_variants(data: bytes) -> dict[str, bytes]:
    def with_crc(body: bytes) -> bytes:
        return body + struct.pack("<I", zlib.crc32(body))

    hlen = struct.unpack_from("<I", data, 12)[0]
    header = data[16 : 16 + hlen]
    rest = data[16 + hlen : -4]
    nan_vector = bytearray(data[:-4])
    nan_vector[16 + hlen + 10 * 8 : 16 + hlen + 10 * 8 + 4] = struct.pack("<f", float("nan"))
    dup_ids = bytearray(data[:-4])
    dup_ids[16 + hlen + 8 : 16 + hlen + 16] = dup_ids[16 + hlen : 16 + hlen + 8]
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    return {
        "v1 flipped bit": bytes(flipped),
        "v1 truncated body": data[: len(data) - 37],
        "v1 missing checksum": data[:-4],
        "v1 appended": data + b"\0",
        "v1 bad json": with_crc(data[:12] + struct.pack("<I", 5) + b"{oops" + rest),
        "v1 count too large": with_crc(data[:16] + header.replace(b'"count": 10', b'"count": 11') + rest),
        "v1 nan vector, valid checksum": with_crc(bytes(nan_vector)),
        "v1 duplicate ids, valid checksum": with_crc(bytes(dup_ids)),
    }


def _section(data: bytes, kind: int) -> tuple[int, int, int]:
    """(table entry offset, data offset, bytes) of a section of a version-2 file."""
    for i in range(struct.unpack_from("<I", data, 56)[0]):
        k, _, offset, size = struct.unpack_from("<IIQQ", data, 64 + 24 * i)
        if k == kind:
            return 64 + 24 * i, offset, size
    raise KeyError(kind)


def _v2_corrupt_variants(data: bytes) -> dict[str, bytes]:
    """Version 2 (csrc/format.cpp): damaged bytes, and crafted files whose checksums are valid."""

    def resealed(b: bytearray, kinds: tuple[int, ...] = ()) -> bytes:
        for kind in kinds:  # recompute the sections' checksums, then the header's
            entry, offset, size = _section(bytes(b), kind)
            struct.pack_into("<I", b, entry + 4, _C.crc32c(bytes(b[offset : offset + size])))
        struct.pack_into("<I", b, 4092, _C.crc32c(bytes(b[:4092])))
        return bytes(b)

    def edit(at: int, raw: bytes, kinds: tuple[int, ...] = ()) -> bytes:
        b = bytearray(data)
        b[at : at + len(raw)] = raw
        return resealed(b, kinds)

    ids_entry, ids_at, _ = _section(data, 2)
    meta_entry, meta_at, _ = _section(data, 4)
    flipped = bytearray(data)
    flipped[_section(data, 3)[1] + 5] ^= 0x40  # one bit of the panels
    return {
        "empty": b"",
        "magic": b"NOTINDEX" + data[8:],
        "version": edit(8, struct.pack("<I", 99)),
        "header bit": data[:30] + bytes([data[30] ^ 1]) + data[31:],
        "data bit": bytes(flipped),
        "truncated header": data[:2000],
        "truncated body": data[:-37],
        "appended": data + b"\0",
        "dim zero, valid checksum": edit(16, struct.pack("<Q", 0)),
        "count too large, valid checksum": edit(24, struct.pack("<Q", 11)),
        "storage 9, valid checksum": edit(44, struct.pack("<I", 9)),
        "exact float32 flag, valid checksum": edit(48, struct.pack("<I", 0)),
        "section overlaps header, valid checksum": edit(ids_entry + 8, struct.pack("<Q", 0)),
        "section misaligned, valid checksum": edit(ids_entry + 8, struct.pack("<Q", ids_at + 8)),
        "duplicate ids, valid checksums": edit(ids_at + 8, data[ids_at : ids_at + 8], (2,)),
        "negative id, valid checksums": edit(ids_at, struct.pack("<q", -7), (2,)),
        "next_id not above ids, valid checksum": edit(32, struct.pack("<Q", 3)),
        "nan per-vector value, valid checksums": edit(meta_at + 64 * 2, struct.pack("<f", float("nan")), (4,)),
    }


def _good_file(tmp_path: Path, version: int) -> Path:
    good = tmp_path / "good.fe"
    x = np.arange(40, dtype=np.float32).reshape(10, 4) + 1
    if version == 1:
        good.write_bytes(_v1_bytes(4, "ip", "int8", np.arange(10), x, 10))
    else:
        index = Index(4, "ip", "int8")
        index.add(x)
        index.save(good)
    return good


V1_CASES = list(_v1_corrupt_variants(_v1_bytes(4, "ip", "int8", np.arange(10), np.ones((10, 4)), 10)))
V2_CASES = [
    "empty", "magic", "version", "header bit", "data bit", "truncated header", "truncated body",
    "appended", "dim zero, valid checksum", "count too large, valid checksum",
    "storage 9, valid checksum", "exact float32 flag, valid checksum",
    "section overlaps header, valid checksum", "section misaligned, valid checksum",
    "duplicate ids, valid checksums", "negative id, valid checksums",
    "next_id not above ids, valid checksum", "nan per-vector value, valid checksums",
]


@pytest.mark.parametrize("version,case", [(1, c) for c in V1_CASES] + [(2, c) for c in V2_CASES])
def test_corrupt_or_truncated_file_raises_value_error(tmp_path: Path, version: int, case: str) -> None:
    good = _good_file(tmp_path, version)
    variants = _v1_corrupt_variants(good.read_bytes()) if version == 1 else _v2_corrupt_variants(good.read_bytes())
    assert sorted(variants) == sorted(V1_CASES if version == 1 else V2_CASES)
    bad = tmp_path / "bad.fe"
    bad.write_bytes(variants[case])
    with pytest.raises(ValueError):
        Index.load(bad)
    if version == 2:
        with pytest.raises(ValueError):  # verify=True checks what a plain mmap load trusts
            Index.load(bad, mmap=True, verify=True)
    assert len(Index.load(good)) == 10


def test_mmap_load_checks_header_and_size_without_reading_the_data(tmp_path: Path) -> None:
    good = _good_file(tmp_path, 2)
    variants = _v2_corrupt_variants(good.read_bytes())
    bad = tmp_path / "bad.fe"
    for case in ("magic", "header bit", "truncated body", "appended", "count too large, valid checksum"):
        bad.write_bytes(variants[case])
        with pytest.raises(ValueError):
            Index.load(bad, mmap=True)
    bad.write_bytes(variants["data bit"])  # data is trusted by a plain mmap load: no crash
    Index.load(bad, mmap=True).search(np.ones(4), 3)


def test_crc32c_check_value() -> None:
    assert _C.crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    assert _C.crc32c(b"") == 0


# ---------------------------------------------------------------- concurrency


def test_concurrent_search_add_remove() -> None:
    rng = np.random.default_rng(9)
    d = 16
    index = Index(d, storage="int8", threads=2)
    index.add(rng.standard_normal((4000, d)))
    q = rng.standard_normal((30, d)).astype(np.float32)
    expected = index.search(q, 5)
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                s, i = index.search(q, 5)
                assert np.all(np.diff(s, axis=1) <= 0) and np.all(i >= 0)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def writer() -> None:
        try:
            for _ in range(30):
                new = index.add(rng.standard_normal((50, d)) * 0.01)  # small: never a top hit
                index.remove(new)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            stop.set()

    threads = [threading.Thread(target=searcher) for _ in range(3)] + [
        threading.Thread(target=writer)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(index) == 4000
    for a, b in zip(index.search(q, 5), expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_import_fastemb_index_does_not_import_torch() -> None:
    code = "import sys, fastemb; fastemb.Index(3); assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_environment_selects_portable_kernels() -> None:
    code = (
        "import numpy as np, fastemb; ix = fastemb.Index(3, 'ip', 'int8'); "
        "assert set(ix.kernels().values()) == {'generic'}, ix.kernels(); "
        "ix.add(np.eye(3)); s, i = ix.search(np.eye(3), 1); assert list(i[:, 0]) == [0, 1, 2]"
    )
    env = {**os.environ, "FASTEMB_KERNELS": "generic"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)

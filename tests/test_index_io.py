"""fastemb.Index at its boundaries: bad input, save/load and corrupt files, concurrency, fuzz."""

from __future__ import annotations

import os
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
    c = _C.Index(4, "ip", "float32")
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


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_save_load_round_trip(tmp_path: Path, storage: str, metric: str) -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((300, 13)).astype(np.float32)
    q = rng.standard_normal((20, 13)).astype(np.float32)
    index = Index(13, metric, storage)
    index.add(x, ids=rng.permutation(1000)[:300])
    index.remove(index._c.ids()[:17])
    path = tmp_path / "index.fe"
    index.save(path)
    loaded = Index.load(path)
    assert (loaded.dim, loaded.metric, loaded.storage, len(loaded)) == (13, metric, storage, 283)
    assert list(tmp_path.iterdir()) == [path]  # temporary file renamed away
    for a, b in zip(index.search(q, 12), loaded.search(q, 12), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(index._c.vectors(), loaded._c.vectors())
    assert loaded.add(x[:1])[0] == index.add(x[:1])[0]  # next_id survives
    empty = Index(3, metric, storage)
    empty.save(path)
    assert len(Index.load(path)) == 0


def _corrupt_variants(data: bytes) -> dict[str, bytes]:
    def with_crc(body: bytes) -> bytes:
        return body + struct.pack("<I", zlib.crc32(body))

    hlen = struct.unpack_from("<I", data, 12)[0]
    header = data[16 : 16 + hlen]
    rest = data[16 + hlen : -4]
    bad_json = with_crc(data[:12] + struct.pack("<I", 5) + b"{oops" + rest)
    big_count = with_crc(data[:16] + header.replace(b'"count": 10', b'"count": 11') + rest)
    nan_vector = bytearray(data[:-4])
    nan_vector[16 + hlen + 10 * 8 : 16 + hlen + 10 * 8 + 4] = struct.pack("<f", float("nan"))
    dup_ids = bytearray(data[:-4])
    dup_ids[16 + hlen + 8 : 16 + hlen + 16] = dup_ids[16 + hlen : 16 + hlen + 8]
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    return {
        "empty": b"",
        "magic": b"NOTINDEX" + data[8:],
        "version": with_crc(data[:8] + struct.pack("<I", 99) + data[12:-4]),
        "flipped bit": bytes(flipped),
        "truncated header": data[:20],
        "truncated body": data[: len(data) - 37],
        "missing checksum": data[:-4],
        "appended": data + b"\0",
        "bad json": bad_json,
        "count too large": big_count,
        "nan vector, valid checksum": with_crc(bytes(nan_vector)),
        "duplicate ids, valid checksum": with_crc(bytes(dup_ids)),
    }


@pytest.mark.parametrize("case", list(_corrupt_variants(b"\0" * 200).keys()))
def test_corrupt_or_truncated_file_raises_value_error(tmp_path: Path, case: str) -> None:
    index = Index(4, "ip")
    index.add(np.arange(40, dtype=np.float32).reshape(10, 4) + 1)
    good = tmp_path / "good.fe"
    index.save(good)
    bad = tmp_path / "bad.fe"
    bad.write_bytes(_corrupt_variants(good.read_bytes())[case])
    with pytest.raises(ValueError):
        Index.load(bad)
    assert len(Index.load(good)) == 10


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

"""The GPU backends' pure-Python logic: profiles, out-of-profile batches, engine metadata, OOM retry."""

from __future__ import annotations

import numpy as np
import pytest

from fastemb.backends.profiles import (
    Chunk,
    DeviceOutOfMemoryError,
    EngineMeta,
    EngineMismatchError,
    Profile,
    ProfileError,
    bucket,
    buckets,
    check_engine,
    is_out_of_memory,
    meta_path,
    pad_feed,
    parse_range,
    run_with_oom_retry,
)


def test_parse_range() -> None:
    assert parse_range("1,32,128", "batch") == (1, 32, 128)
    assert parse_range((4, 4, 4), "batch").opt == 4
    for bad in ("1,2", "a,b,c", "0,1,2", "4,2,8", (1, 9, 8)):
        with pytest.raises(ValueError, match="range"):
            parse_range(bad, "batch")  # type: ignore[arg-type]


def test_profile_shapes_for_every_input() -> None:
    p = Profile.create(batch="1,32,128", seq="8,128,256", max_length=256)
    shapes = p.input_shapes(["input_ids", "attention_mask"])
    assert shapes["attention_mask"] == ((1, 8), (32, 128), (128, 256))
    assert Profile.create(max_length=64).seq == (1, 64, 64)
    with pytest.raises(ValueError, match="above the bundle's max_length 128"):
        Profile.create(seq="1,64,256", max_length=128)
    assert Profile.from_dict(p.as_dict()) == p


def test_large_batch_is_split_small_one_padded() -> None:
    p = Profile.create(batch="2,8,8", seq="16,64,128", max_length=128)
    assert p.chunks(20, 40) == [Chunk(0, 8, 8, 40), Chunk(8, 16, 8, 40), Chunk(16, 20, 4, 40)]
    assert p.chunks(1, 5) == [Chunk(0, 1, 2, 16)]  # one row padded to the min batch, 5 -> 16 positions
    with pytest.raises(ProfileError, match=r"batch of 20 is outside the engine's profile \(batch 2\.\.8\)"):
        p.chunks(20, 40, on_large_batch="raise")
    with pytest.raises(ProfileError, match=r"sequence length 129 is outside the engine's profile \(sequence 16\.\.128\)"):
        p.chunks(3, 129)


def test_pad_feed_keeps_real_rows_and_masks_padding() -> None:
    ids = np.arange(1, 7, dtype=np.int64).reshape(2, 3)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    out = pad_feed(feed, Chunk(1, 2, 3, 5))
    assert out["input_ids"].shape == (3, 5)
    np.testing.assert_array_equal(out["input_ids"][0], [4, 5, 6, 0, 0])
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    same = pad_feed(feed, Chunk(0, 2, 2, 3))
    np.testing.assert_array_equal(same["input_ids"], ids)


def _meta(**kw) -> EngineMeta:
    base = dict(gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt_version="10.13.0.35",
                precision="fp16", profile={"batch": [1, 32, 128], "seq": [1, 128, 256]},
                inputs=["input_ids", "attention_mask"], outputs=["sentence_embedding"])
    base.update(kw)
    return EngineMeta(**base)


def test_engine_meta_roundtrip_and_checks(tmp_path) -> None:
    m = _meta()
    path = meta_path(tmp_path / "model.plan")
    assert path.name == "model.plan.json"
    m.save(path)
    assert EngineMeta.load(path) == m
    check_engine(m, "NVIDIA  H100 80GB HBM3", "9.0", "10.13.0.35")  # whitespace differences are fine
    with pytest.raises(EngineMismatchError, match=r"TensorRT 10\.13\.0\.35 \(this process has TensorRT 10\.9\.0\.34\)"):
        check_engine(m, "NVIDIA H100 80GB HBM3", "9.0", "10.9.0.34")
    with pytest.raises(EngineMismatchError, match=r"compute capability 9\.0 \(this GPU is 8\.0\).*GPU 'NVIDIA H100 80GB HBM3' \(this GPU is 'NVIDIA A100-SXM4-40GB'\)"):
        check_engine(m, "NVIDIA A100-SXM4-40GB", "8.0", "10.13.0.35")
    with pytest.raises(FileNotFoundError, match="engine metadata"):
        EngineMeta.load(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid engine metadata"):
        EngineMeta.load(tmp_path / "bad.json")


class FakeOOMBackend:
    """Runs batches of at most ``fits`` rows; larger ones fail the way a GPU library does."""

    def __init__(self, fits: int, message: str = "CUDA out of memory. Tried to allocate 2.00 GiB") -> None:
        self.fits, self.message, self.calls = fits, message, []

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        rows = feed["input_ids"].shape[0]
        self.calls.append(rows)
        if rows > self.fits:
            raise RuntimeError(self.message)
        return feed["input_ids"][:, :1].astype(np.float32)


def test_oom_retries_with_smaller_batches_in_order() -> None:
    ids = np.arange(10, dtype=np.int64).reshape(10, 1)
    fake = FakeOOMBackend(fits=3)
    freed = []
    out = run_with_oom_retry(fake.run, {"input_ids": ids}, on_oom=lambda: freed.append(1))
    np.testing.assert_array_equal(out[:, 0], np.arange(10))
    assert fake.calls[0] == 10 and max(fake.calls[1:]) <= 5 and freed
    for msg in ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer",
                "cudaMalloc failed: cudaErrorMemoryAllocation"):
        assert run_with_oom_retry(FakeOOMBackend(2, msg).run, {"input_ids": ids}).shape == (10, 1)


def test_oom_on_one_row_raises_and_other_errors_pass_through() -> None:
    ids = np.zeros((4, 7), dtype=np.int64)
    with pytest.raises(DeviceOutOfMemoryError, match="single text of 7 tokens"):
        run_with_oom_retry(FakeOOMBackend(fits=0).run, {"input_ids": ids})
    fake = FakeOOMBackend(fits=0, message="shape mismatch")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_with_oom_retry(fake.run, {"input_ids": ids})
    assert fake.calls == [4]  # not retried
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(ValueError("bad"))


def test_buckets() -> None:
    assert buckets(128, 1) == (1, 2, 4, 8, 16, 32, 64, 128)
    assert buckets(100, 16) == (16, 32, 64, 100)
    assert bucket(5, (1, 2, 4, 8)) == 8 and bucket(9, (1, 2, 4, 8)) is None and bucket(1, (1, 2)) == 1

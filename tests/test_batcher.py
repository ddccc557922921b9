"""fastemb.Batcher: concurrent callers get their own rows, equal to serial encode; limits, errors,
deadlines and cancellation behave as documented. A stub backend wrapped around the real one makes
the worker block or fail on demand, so the timing-dependent cases are deterministic."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fastemb import Encoder
from fastemb.batcher import Batcher, BatcherClosed, DeadlineExceeded, QueueFull, TextTooLong

WORDS = "the a man woman dog plays guitar piano in park quickly slowly red blue over under".split()


def texts_of(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 40)))) for _ in range(n)]


class Controlled:
    """Wraps a backend: records every feed, blocks while ``gate`` is clear, fails on ``poison``."""

    def __init__(self, inner) -> None:
        self.inner, self.inputs, self.outputs, self.provider = inner, inner.inputs, inner.outputs, "stub"
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.poison: int | None = None
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, feed, output):
        self.entered.set()
        self.gate.wait(10)
        self.feeds.append(feed)
        if self.poison is not None and (feed["input_ids"] == self.poison).any():
            raise RuntimeError("poisoned token in batch")
        return self.inner.run(feed, output)


@pytest.fixture(scope="module")
def enc(tiny_bundle: Path) -> Encoder:
    return Encoder(tiny_bundle)


@pytest.fixture()
def controlled(tiny_bundle: Path):
    e = Encoder(tiny_bundle)
    e.backend = Controlled(e.backend)
    return e


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("workers", [1, 2])
def test_threads_get_their_own_rows_equal_to_serial_encode(enc: Encoder, workers: int) -> None:
    texts = texts_of(600, 0)
    ref = enc.encode(texts)
    raw_ref = enc.encode(texts, normalize=False)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    with Batcher(enc, max_batch_size=16, max_batch_tokens=512, workers=workers) as b:
        def caller(t: int) -> None:
            try:
                # each thread asks for its own slice, in a shuffled order, some unnormalized
                idx = np.random.default_rng(t).permutation(np.arange(t, len(texts), 32))
                out = b.encode([texts[i] for i in idx], normalize=t % 3 != 0)
                results[t] = (idx, out)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(32)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert b.stats.batches < 600  # calls were merged
    assert not errors
    assert len(results) == 32
    for t, (idx, out) in results.items():
        want = ref[idx] if t % 3 != 0 else raw_ref[idx]
        assert out.shape == (len(idx), enc.dim) and out.dtype == np.float32
        assert cosines(out, want).min() >= 0.99999
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(want, axis=1), rtol=1e-5)


def test_asyncio_tasks(enc: Encoder) -> None:
    texts = texts_of(200, 1)
    ref = enc.encode(texts)

    async def main(b: Batcher) -> list[np.ndarray]:
        return await asyncio.gather(*(b.aencode(texts[i]) for i in range(len(texts))))

    with Batcher(enc) as b:
        out = np.stack(asyncio.run(main(b)))
    assert out.shape == (200, enc.dim)
    assert cosines(out, ref).min() >= 0.99999


def test_shapes_and_empty(enc: Encoder) -> None:
    with Batcher(enc) as b:
        assert b.encode("one text").shape == (enc.dim,)
        assert b.encode(["a", "b"]).shape == (2, enc.dim)
        assert b.encode([]).shape == (0, enc.dim)
        with pytest.raises(TypeError, match=r"texts\[1\]"):
            b.encode(["ok", 3])


def test_batches_are_bounded_and_length_sorted(controlled: Encoder) -> None:
    backend = controlled.backend
    texts = texts_of(300, 2)
    backend.gate.clear()
    with Batcher(controlled, overhead_tokens=8, max_batch_size=8, max_batch_tokens=128) as b:
        first = b.submit("hold the worker")  # the worker blocks on this while the rest queue up
        assert backend.entered.wait(5)
        futures = [b.submit(texts[i : i + 10]) for i in range(0, 300, 10)]
        backend.gate.set()
        first.result(10)
        for f in futures:
            f.result(10)
    shapes = [f["input_ids"].shape for f in backend.feeds[1:]]
    assert all(rows <= 8 and rows * width <= 128 for rows, width in shapes)
    # the queued texts were taken in windows (at most 4 batches' worth of texts or tokens) and
    # sorted by length within each: the longest text per batch only grows where a window starts
    lengths = [int(f["attention_mask"].sum(1).max()) for f in backend.feeds[1:]]
    tokens = sum(len(controlled.tokenizer.encode(t).ids) for t in texts)
    windows = max(-(-300 // 32), -(-tokens // (4 * 128)))
    assert sum(b > a for a, b in zip(lengths, lengths[1:])) <= windows + 1
    # sorting pads less than batching the texts in arrival order would
    padded = sum(f["input_ids"].size for f in backend.feeds[1:])
    arrival = [len(controlled.tokenizer.encode(t).ids) for t in texts]
    fifo = sum(8 * max(arrival[i : i + 8]) for i in range(0, 300, 8))
    assert padded < 0.8 * fifo


def test_queue_full_raises_at_once(controlled: Encoder) -> None:
    backend = controlled.backend
    backend.gate.clear()
    with Batcher(controlled, overhead_tokens=8, max_queue=10) as b:
        running = b.submit(["runs first"])
        assert backend.entered.wait(5)
        queued = b.submit(["x"] * 10)
        t = time.perf_counter()
        with pytest.raises(QueueFull, match="max_queue is 10"):
            b.submit(["one too many"])
        assert time.perf_counter() - t < 0.5
        with pytest.raises(ValueError, match="can never fit"):
            b.submit(["y"] * 11)
        backend.gate.set()
        assert running.result(10).shape == (1, controlled.dim)
        assert queued.result(10).shape == (10, controlled.dim)


def test_error_fails_only_its_request(controlled: Encoder) -> None:
    backend = controlled.backend
    poison_text = "xylophone"
    backend.poison = controlled.tokenizer.encode(poison_text, add_special_tokens=False).ids[0]
    backend.gate.clear()
    with Batcher(controlled, overhead_tokens=8) as b:
        hold = b.submit("hold")
        assert backend.entered.wait(5)
        good = [b.submit([f"good text {i}", "another"]) for i in range(5)]
        bad = b.submit(["fine", poison_text])
        backend.gate.set()
        hold.result(10)
        for f in good:
            assert f.result(10).shape == (2, controlled.dim)
        with pytest.raises(RuntimeError, match="poisoned"):
            bad.result(10)
        assert b.stats.failed_requests == 1
        # the batcher keeps working
        assert b.encode("after the error").shape == (controlled.dim,)


def test_deadline_drops_queued_work(controlled: Encoder) -> None:
    backend = controlled.backend
    backend.gate.clear()
    with Batcher(controlled, overhead_tokens=8) as b:
        hold = b.submit("hold")
        assert backend.entered.wait(5)
        with pytest.raises(DeadlineExceeded):
            b.encode(["too late"], timeout=0.1)
        n_feeds = len(backend.feeds)
        backend.gate.set()
        hold.result(10)
        assert b.encode("next").shape == (controlled.dim,)
        # the expired request never ran: only "hold" and "next" reached the backend
        assert len(backend.feeds) == n_feeds + 2
        assert b.stats.dropped == 1


def test_cancelled_asyncio_task_is_not_run(controlled: Encoder) -> None:
    backend = controlled.backend
    backend.gate.clear()

    async def main(b: Batcher) -> None:
        hold = asyncio.ensure_future(b.aencode("hold"))
        await asyncio.get_running_loop().run_in_executor(None, backend.entered.wait, 5)
        task = asyncio.ensure_future(b.aencode(["never runs"] * 3))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        backend.gate.set()
        await hold

    with Batcher(controlled, overhead_tokens=8) as b:
        asyncio.run(main(b))
        time.sleep(0.1)
        assert b.queue_depth == 0
    assert sum(f["input_ids"].shape[0] for f in backend.feeds) == 1


def test_truncate_false_refuses_long_text(enc: Encoder) -> None:
    long = " ".join(["word"] * (enc.max_length + 10))
    with Batcher(enc) as b:
        with pytest.raises(TextTooLong, match=r"texts\[1\] has more than"):
            b.encode(["short", long], truncate=False)
        # truncating (the default) equals Encoder.encode's truncation
        assert cosines(b.encode([long]), enc.encode([long])).min() >= 0.99999


def test_close_drains_then_refuses(controlled: Encoder) -> None:
    backend = controlled.backend
    backend.gate.clear()
    b = Batcher(controlled, overhead_tokens=8)
    hold = b.submit("hold")
    assert backend.entered.wait(5)
    queued = b.submit(["queued before close"] * 3)
    closer = threading.Thread(target=b.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(BatcherClosed):
        b.submit("after close")
    backend.gate.set()
    closer.join(10)
    assert hold.result(1).shape == (controlled.dim,)
    assert queued.result(1).shape == (3, controlled.dim)


def test_close_without_drain_fails_queued(controlled: Encoder) -> None:
    backend = controlled.backend
    backend.gate.clear()
    b = Batcher(controlled, overhead_tokens=8)
    hold = b.submit("hold")
    assert backend.entered.wait(5)
    queued = b.submit(["dropped"])
    threading.Timer(0.1, backend.gate.set).start()
    b.close(drain=False)
    with pytest.raises(BatcherClosed):
        queued.result(1)
    assert hold.result(1).shape == (controlled.dim,)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_batch_size": 0}, "max_batch_size"), ({"max_batch_tokens": 1.5}, "max_batch_tokens"),
    ({"max_queue": -1}, "max_queue"), ({"workers": 0}, "workers"), ({"max_wait_ms": -1}, "max_wait_ms"),
    ({"max_batch_tokens": 8}, "at least the model's max_length"),
])
def test_bad_arguments(enc: Encoder, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Batcher(enc, **kwargs)


def test_bad_timeout(enc: Encoder) -> None:
    with Batcher(enc) as b, pytest.raises(ValueError, match="timeout"):
        b.encode("x", timeout=0)


def test_max_wait_fills_batches(controlled: Encoder) -> None:
    backend = controlled.backend
    with Batcher(controlled, overhead_tokens=8, max_wait_ms=300, max_batch_size=4) as b:
        futures = []
        for i in range(4):
            futures.append(b.submit(f"text {i}"))
            time.sleep(0.01)
        for f in futures:
            f.result(10)
    assert [f["input_ids"].shape[0] for f in backend.feeds] == [4]


def brute_force_cost(lengths: list[int], max_rows: int, max_tokens: int, overhead: float) -> float:
    """The least cost over every way to cut the sorted lengths into contiguous batches."""
    best = float("inf")
    n = len(lengths)
    for mask in range(1 << (n - 1)):
        cuts, start, cost = [], 0, 0.0
        for j in range(1, n + 1):
            if j == n or mask >> (j - 1) & 1:
                cuts.append((start, j))
                start = j
        for a, b in cuts:
            if b - a > max_rows or (b - a) * lengths[a] > max_tokens and b - a > 1:
                cost = float("inf")
                break
            cost += overhead + (b - a) * lengths[a]
        best = min(best, cost)
    return best


def test_split_batches_is_optimal() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fastemb.batcher import split_batches

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.lists(st.integers(1, 64), min_size=1, max_size=11), st.integers(1, 6), st.integers(64, 300),
           st.floats(0, 100))
    def check(lengths, max_rows, max_tokens, overhead):
        lengths = sorted(lengths, reverse=True)
        cuts = split_batches(lengths, max_rows, max_tokens, overhead)
        assert cuts[0][0] == 0 and cuts[-1][1] == len(lengths)
        assert all(a < b for a, b in cuts) and all(b == c for (_, b), (c, _) in zip(cuts, cuts[1:]))
        assert all(b - a <= max_rows and ((b - a) * lengths[a] <= max_tokens or b - a == 1) for a, b in cuts)
        cost = sum(overhead + (b - a) * lengths[a] for a, b in cuts)
        assert cost <= brute_force_cost(lengths, max_rows, max_tokens, overhead) + 1e-6

    check()
    # a long text among short ones gets its own batch once the call overhead is small
    assert split_batches([100, 10, 10, 10, 10], 64, 10_000, 5.0) == [(0, 1), (1, 5)]
    assert split_batches([100, 10, 10, 10, 10], 64, 10_000, 1000.0) == [(0, 5)]
    with pytest.raises(ValueError, match="sorted"):
        split_batches([1, 2], 8, 100, 1.0)


def test_calibrated_overhead_is_sane(enc: Encoder) -> None:
    with Batcher(enc) as b:
        assert 1.0 <= b.overhead_tokens <= 4096.0

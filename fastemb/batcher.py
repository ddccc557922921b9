"""``Batcher``: many concurrent callers, one inference worker, length-sorted batches.

A service calls ``encode`` from many threads (or ``aencode`` from many asyncio tasks) with a
few texts each. Run one by one, each call pays a whole model pass for a batch of one; the
Batcher puts every call's texts on one queue, and its worker takes what has queued up while the
previous batch ran, sorts those texts by token count, cuts them into batches bounded by padded
tokens and texts, runs them, and hands every caller its own rows in its own order. Nothing waits
on purpose when the worker is idle (``max_wait_ms=0``): batches grow with the load by themselves.

Texts are tokenized by the caller (in its own thread; on the event loop for ``aencode``), so
tokenizing overlaps inference and bad input (``truncate=False`` on a text that is too long) is
refused before it is queued. The queue is bounded in texts: a call that does not fit raises
``QueueFull`` at once. A call can carry a deadline: queued texts whose deadline has passed are
dropped unrun and the call raises ``DeadlineExceeded``. A batch that fails is re-run request by
request, so an error fails only the request that caused it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np

from fastemb.tokenize import check_texts, pad_batch

__all__ = ["Batcher", "BatcherClosed", "DeadlineExceeded", "QueueFull", "TextTooLong"]

# The worker takes up to this many batches' worth of queued texts at a time and sorts them by
# length: a wider window pads less, a narrower one returns the earliest caller sooner.
WINDOW_BATCHES = 4
# Up to this many texts are tokenized one by one in the calling thread: the tokenizer's parallel
# batch call hands work to its thread pool, which costs more than it saves for a few short texts
# and leaves threads spinning on the cores the model needs.
SERIAL_TOKENIZE = 8


class QueueFull(RuntimeError):
    """The batcher's queue has no room for this call's texts; retry later."""


class DeadlineExceeded(TimeoutError):
    """The call's deadline passed before its vectors were computed."""


class BatcherClosed(RuntimeError):
    """The batcher was closed: it takes no new calls."""


class TextTooLong(ValueError):
    """A text has more tokens than the model's ``max_length`` and the caller asked not to truncate."""

    def __init__(self, index: int, tokens: int, max_length: int) -> None:
        super().__init__(f"texts[{index}] has more than {max_length} tokens (the model's max_length; "
                         f"{tokens} before truncation) and truncate=False")
        self.index, self.tokens, self.max_length = index, tokens, max_length


@dataclass(eq=False)
class _Request:
    ids: list[list[int]]
    normalize: bool
    future: Future
    deadline: float | None
    out: np.ndarray
    single: bool
    taken: int = 0  # rows handed to the worker so far
    done: int = 0  # rows computed
    failed: bool = False
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """Counters the worker keeps (read them for metrics; they only grow)."""

    batches: int = 0
    texts: int = 0
    padded_tokens: int = 0
    tokens: int = 0
    dropped: int = 0  # requests dropped unrun: cancelled, or past their deadline
    failed_requests: int = 0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)


def _twin(encoder, workers: int):
    """A copy of a CPU onnxruntime backend with its threads split among ``workers`` (the same graph,
    loaded once more); other backends are shared as they are."""
    from fastemb.backends.ort import OrtBackend

    backend = encoder.backend
    threads = max(1, getattr(backend, "threads", 1) // workers)
    if not isinstance(backend, OrtBackend) or backend.provider != "CPUExecutionProvider" or backend.threads == threads:
        return backend
    return OrtBackend(encoder.bundle.graph("encoder"), device="cpu", threads=threads)


def split_batches(lengths: Sequence[int], max_rows: int, max_tokens: int, overhead_tokens: float) -> list[tuple[int, int]]:
    """Cut texts sorted by length (longest first) into batches ``[start, end)`` of least total cost.

    A batch of ``n`` texts whose longest has ``w`` tokens costs ``overhead_tokens + n * w`` (padding
    included, in units of one token's compute); batches hold at most ``max_rows`` texts and
    ``max_tokens`` padded tokens. Cutting a mixed set of short and long texts into a few batches of
    similar lengths pads far less than one batch, while every extra batch pays the fixed cost of a
    model call. Exact dynamic programme over the sorted order, O(n * max_rows).
    """
    n = len(lengths)
    if n == 0:
        return []
    w = np.asarray(lengths, dtype=np.float64)
    if np.any(np.diff(w) > 0):
        raise ValueError("lengths must be sorted longest first")
    best = np.zeros(n + 1)
    start = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        lo = max(0, j - max_rows)
        i = np.arange(lo, j)
        rows = j - i
        ok = rows * w[i] <= max_tokens
        ok[-1] = True  # one text always fits (max_tokens >= max_length is checked up front)
        cost = np.where(ok, best[i] + overhead_tokens + rows * w[i], np.inf)
        k = int(np.argmin(cost))
        best[j], start[j] = cost[k], i[k]
    cuts = []
    j = n
    while j > 0:
        cuts.append((int(start[j]), j))
        j = int(start[j])
    return cuts[::-1]


class Batcher:
    """Merge concurrent ``encode`` calls into length-sorted batches on ``workers`` threads.

    Args:
        encoder: a ``fastemb.Encoder`` (its tokenizer and backend are used; its ``encode`` is not).
        max_batch_tokens: padded tokens per batch at most (texts x the batch's longest text).
        max_batch_size: texts per batch at most.
        max_wait_ms: how long an idle worker waits for a batch to fill before it runs what it has.
            0 (default) runs at once; under load batches fill while the previous one runs.
        max_queue: texts waiting at most; a call that would exceed it raises ``QueueFull``.
        workers: inference threads, each running whole batches. With more than one, a worker that
            runs alone uses the encoder's backend (every core), and workers running at the same time
            each use a copy of a CPU onnxruntime graph (loaded once more) with ``threads / workers``
            threads: under load they fill the cores without waiting on each other, and a lone request
            still gets every core.
        overhead_tokens: the fixed cost of one model call, in tokens' worth of compute, used to decide
            where to split a set of texts into batches (``split_batches``). Default: measured at start-up
            (a few model calls on dummy input).

    ``encode`` and ``aencode`` return float32 ``[n, dim]`` in the caller's order (``[dim]`` for
    one string), equal to ``encoder.encode`` of the same texts up to float rounding.
    """

    def __init__(self, encoder, max_batch_tokens: int = 16384, max_batch_size: int = 64, max_wait_ms: float = 0.0,
                 max_queue: int = 4096, workers: int = 1, overhead_tokens: float | None = None) -> None:
        for name, value, low in (("max_batch_tokens", max_batch_tokens, 1), ("max_batch_size", max_batch_size, 1),
                                 ("max_queue", max_queue, 1), ("workers", workers, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or not 0 <= max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be a number in [0, 10000], got {max_wait_ms!r}")
        if max_batch_tokens < encoder.max_length:
            raise ValueError(f"max_batch_tokens ({max_batch_tokens}) must be at least the model's max_length "
                             f"({encoder.max_length}), or a text of that length could never run")
        self.encoder = encoder
        self.dim = encoder.dim
        self.max_length = encoder.max_length
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_batch_size = int(max_batch_size)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.stats = BatchStats()
        if overhead_tokens is not None and (isinstance(overhead_tokens, bool) or not isinstance(overhead_tokens, (int, float))
                                            or not 0 <= overhead_tokens <= 1e6):
            raise ValueError(f"overhead_tokens must be a number in [0, 1e6], got {overhead_tokens!r}")
        self.overhead_tokens = float(overhead_tokens) if overhead_tokens is not None else self._calibrate()
        # One worker alone runs on the encoder's backend (all its threads); while several run, each
        # uses a twin with a share of the threads, so they do not fight over cores (README, Serve).
        self._solo = encoder.backend
        self._shared = _twin(encoder, int(workers)) if workers > 1 else encoder.backend
        outputs = encoder.backend.outputs
        self._raw_output = "pooled_embedding" if "pooled_embedding" in outputs else None
        self._queue: collections.deque[_Request] = collections.deque()
        self._ready: collections.deque[list[tuple[_Request, int]]] = collections.deque()  # cut, not yet run
        self._queued = 0  # texts not yet handed to a worker
        self._cv = threading.Condition()
        self._closing = False
        self._busy = 0  # workers running a batch
        self._threads = [threading.Thread(target=self._loop, name=f"fastemb-batcher-{i}", daemon=True)
                         for i in range(int(workers))]
        for t in self._threads:
            t.start()

    # -- callers -------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Texts queued and not yet taken by a worker."""
        return self._queued

    @property
    def busy(self) -> int:
        """Workers running a batch right now."""
        return self._busy

    def tokenize(self, texts: str | Sequence[str], truncate: bool = True) -> tuple[list[list[int]], bool]:
        """Token ids of each text (truncated at ``max_length``) and whether one string was given.

        ``truncate=False`` raises ``TextTooLong`` for the first text longer than ``max_length``.
        """
        items, single = check_texts(texts)
        tok = self.encoder.tokenizer
        if len(items) <= SERIAL_TOKENIZE:  # no hand-off to the tokenizer's thread pool for a few texts
            encodings = [tok.encode(t, add_special_tokens=True) for t in items]
        else:
            encodings = tok.encode_batch(items, add_special_tokens=True)
        if not truncate:
            for i, e in enumerate(encodings):
                if e.overflowing:
                    full = len(e.ids) + sum(len(o.ids) for o in e.overflowing)
                    raise TextTooLong(i, full, self.max_length)
        return [e.ids for e in encodings], single

    def submit(self, texts: str | Sequence[str], normalize: bool = True, truncate: bool = True,
               timeout: float | None = None, ids: list[list[int]] | None = None) -> Future:
        """Queue ``texts`` and return a ``concurrent.futures.Future`` of their vectors.

        Raises at once (not through the future): TypeError / ValueError for bad input, ``TextTooLong``,
        ``QueueFull`` when the queue has no room, ``BatcherClosed`` after ``close``. ``ids`` passes
        token ids from ``tokenize`` instead of tokenizing again.
        """
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0):
            raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
        if ids is None:
            ids, single = self.tokenize(texts, truncate)
        else:
            single = isinstance(texts, str)
        n = len(ids)
        future: Future = Future()
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            future.set_result(out)
            return future
        if n > self.max_queue:
            raise ValueError(f"a call of {n} texts can never fit a queue of max_queue={self.max_queue} texts; "
                             "split it, or raise max_queue")
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        req = _Request(ids, bool(normalize), future, deadline, out, single)
        with self._cv:
            if self._closing:
                raise BatcherClosed("the batcher is closed and takes no new calls")
            if self._queued + n > self.max_queue:
                raise QueueFull(f"queue full: {self._queued} texts waiting, this call has {n}, "
                                f"max_queue is {self.max_queue}; retry later")
            self._queue.append(req)
            self._queued += n
            self._cv.notify()
        return future

    def encode(self, texts: str | Sequence[str], normalize: bool = True, truncate: bool = True,
               timeout: float | None = None) -> np.ndarray:
        """Vectors of ``texts`` (blocking): float32 ``[n, dim]``, or ``[dim]`` for one string."""
        future = self.submit(texts, normalize=normalize, truncate=truncate, timeout=timeout)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            future.cancel()
            raise DeadlineExceeded(f"no result within the deadline of {timeout} s") from None

    async def aencode(self, texts: str | Sequence[str], normalize: bool = True, truncate: bool = True,
                      timeout: float | None = None, ids: list[list[int]] | None = None) -> np.ndarray:
        """``encode`` for asyncio: awaits the worker without blocking the event loop.

        Cancelling the awaiting task drops its texts from the queue if they have not run yet.
        """
        future = self.submit(texts, normalize=normalize, truncate=truncate, timeout=timeout, ids=ids)
        waiter = asyncio.wrap_future(future)
        if timeout is None:
            return await waiter
        try:
            return await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"no result within the deadline of {timeout} s") from None

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking calls; finish what is queued (``drain``) or fail it with ``BatcherClosed``."""
        with self._cv:
            self._closing = True
            if not drain:
                closed = BatcherClosed("the batcher was closed before this call ran")
                while self._queue:
                    self._fail(self._queue.popleft(), closed)
                while self._ready:
                    for req, _ in self._ready.popleft():
                        if not req.failed:
                            self._fail(req, closed)
                self._queued = 0
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout)

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _calibrate(self) -> float:
        """The fixed cost of a model call in tokens: time a 1 x 8 and a 16 x 16 batch, best of three."""
        enc = self.encoder
        unk = enc.tokenizer.token_to_id("[UNK]") or 100

        def seconds(rows: int, width: int) -> float:
            feed = pad_batch([[unk] * width] * rows, enc.backend.inputs, enc._pad_id)
            out = "sentence_embedding" if "sentence_embedding" in enc.backend.outputs else enc.backend.outputs[0]
            best = float("inf")
            for _ in range(4):  # the first call also warms up
                t = time.perf_counter()
                enc.backend.run(feed, out)
                best = min(best, time.perf_counter() - t)
            return best

        small, large = seconds(1, 8), seconds(16, 16)
        per_token = (large - small) / (256 - 8)
        if per_token <= 0:  # timing noise: fall back to a typical transformer figure
            return 16.0
        return float(min(max((small - 8 * per_token) / per_token, 1.0), 4096.0))

    # -- worker --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._ready and not self._queue and not self._closing:
                    self._cv.wait()
                if self._ready:  # a batch another worker cut from its window
                    batch = self._ready.popleft()
                    rows = None
                elif not self._queue:
                    return  # closing, and nothing left
                else:
                    if self.max_wait > 0 and self._queued < self.max_batch_size and not self._closing:
                        until = self._queue[0].enqueued + self.max_wait
                        while self._queued < self.max_batch_size and not self._closing:
                            left = until - time.monotonic()
                            if left <= 0:
                                break
                            self._cv.wait(left)
                    rows = self._take()
                self._busy += 1
            try:
                if rows is not None:
                    if not rows:
                        continue
                    batches = self._batches(rows)
                    batch = batches[0]
                    if len(batches) > 1:  # the rest can run on other workers meanwhile
                        with self._cv:
                            self._ready.extend(batches[1:])
                            self._cv.notify(len(batches) - 1)
                self._run_batch(batch)
            finally:
                with self._cv:
                    self._busy -= 1

    def _take(self) -> list[tuple[_Request, int]]:
        """Up to a window of queued rows, oldest call first (caller holds the lock)."""
        window = self.max_batch_size * WINDOW_BATCHES
        budget = self.max_batch_tokens * WINDOW_BATCHES  # tokens, so long texts make a shorter window
        rows: list[tuple[_Request, int]] = []
        tokens = 0
        now = time.monotonic()
        while self._queue and len(rows) < window and tokens < budget:
            req = self._queue[0]
            if req.future.cancelled() or req.failed or (req.deadline is not None and now > req.deadline):
                self._queue.popleft()
                self._queued -= len(req.ids) - req.taken
                if not req.failed:
                    self.stats.dropped += 1
                    self._fail(req, DeadlineExceeded("the deadline passed while the call was queued"))
                continue
            take = 0
            for i in range(req.taken, min(len(req.ids), req.taken + window - len(rows))):
                if tokens >= budget:
                    break
                rows.append((req, i))
                tokens += len(req.ids[i])
                take += 1
            req.taken += take
            self._queued -= take
            if req.taken == len(req.ids):
                self._queue.popleft()
        return rows

    def _batches(self, rows: list[tuple[_Request, int]]) -> list[list[tuple[_Request, int]]]:
        """Rows sorted by length (longest first), split where it costs least (``split_batches``)."""
        order = sorted(rows, key=lambda r: -len(r[0].ids[r[1]]))
        lengths = [max(1, len(r.ids[i])) for r, i in order]
        cuts = split_batches(lengths, self.max_batch_size, self.max_batch_tokens, self.overhead_tokens)
        return [order[a:b] for a, b in cuts]

    def _run_batch(self, batch: list[tuple[_Request, int]]) -> None:
        live = [(r, i) for r, i in batch if not r.failed and not r.future.cancelled()]
        if not live:
            return
        try:
            vectors = self._infer(live)
        except Exception:  # noqa: BLE001 - isolate the request that fails, below
            self._run_alone(live)
            return
        self._deliver(live, vectors)

    def _infer(self, rows: list[tuple[_Request, int]]) -> np.ndarray:
        enc = self.encoder
        feed = pad_batch([r.ids[i] for r, i in rows], enc.backend.inputs, enc._pad_id)
        raw = [not r.normalize for r, _ in rows]
        if any(raw) and self._raw_output is None:
            raise ValueError("this bundle's graph has no 'pooled_embedding' output: normalize=False is not available")
        backend = self._solo if self._busy <= 1 else self._shared
        vectors = backend.run(feed, self._raw_output if any(raw) else "sentence_embedding")
        if any(raw) and not all(raw):  # mixed batch: normalize the rows that asked for it, in float32
            want = ~np.asarray(raw)
            norms = np.linalg.norm(vectors[want], axis=1, keepdims=True)
            vectors[want] = vectors[want] / np.maximum(norms, np.float32(1e-12))
        st = self.stats
        st.batches += 1
        st.texts += len(rows)
        st.padded_tokens += int(feed["input_ids"].size)
        st.tokens += int(feed["attention_mask"].sum())
        st.batch_sizes[len(rows)] += 1
        return vectors

    def _run_alone(self, rows: list[tuple[_Request, int]]) -> None:
        """A batch failed: run each request's rows on their own; fail only the ones that still fail."""
        for req, group in itertools.groupby(sorted(rows, key=lambda r: id(r[0])), key=lambda r: r[0]):
            mine = list(group)
            try:
                vectors = self._infer(mine)
            except Exception as e:  # noqa: BLE001 - handed to that caller
                self.stats.failed_requests += 1
                self._fail(req, e)
                continue
            self._deliver(mine, vectors)

    def _deliver(self, rows: list[tuple[_Request, int]], vectors: np.ndarray) -> None:
        for (req, i), v in zip(rows, vectors, strict=True):
            req.out[i] = v
            req.done += 1
            if req.done == len(req.ids) and not req.failed:
                try:
                    req.future.set_result(req.out[0] if req.single else req.out)
                except (InvalidStateError, CancelledError):
                    pass  # the caller gave up (cancelled or timed out)

    @staticmethod
    def _fail(req: _Request, error: BaseException) -> None:
        req.failed = True
        try:
            req.future.set_exception(error)
        except (InvalidStateError, CancelledError):
            pass

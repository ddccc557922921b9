"""The GPU backends' pure-Python logic, testable without a GPU.

- :class:`Profile`: the batch and sequence ranges (min / opt / max) a TensorRT engine is built for,
  and how a batch that falls outside them is handled: more rows than the profile's max are split
  into chunks, fewer than its min are padded; a sequence longer than the max is refused (cutting
  it would change the embedding), a shorter one is padded with masked positions.
- :class:`EngineMeta`: what an engine was built for (GPU name, compute capability, TensorRT
  version), written beside the plan and checked before the plan is deserialized.
- :func:`run_with_oom_retry`: on device out-of-memory, run the batch again in halves, down to one
  row, then raise.
- :func:`bucket`: the CUDA-graph shape buckets of the torch backend.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from fastemb._io import atomic_write_bytes


class ProfileError(ValueError):
    """A batch or sequence is outside the range an engine was built for."""


class EngineMismatchError(RuntimeError):
    """A TensorRT engine was built for another GPU or TensorRT version."""


class DeviceOutOfMemoryError(RuntimeError):
    """The device ran out of memory even for a single row."""


class Range(NamedTuple):
    min: int
    opt: int
    max: int


def parse_range(text: str | Sequence[int], what: str) -> Range:
    """``"1,32,128"`` or ``(1, 32, 128)`` -> ``Range``, checked: 1 <= min <= opt <= max."""
    try:
        parts = [int(x) for x in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ValueError(f"{what} range must be three integers MIN,OPT,MAX, got {text!r}") from None
    if len(parts) != 3:
        raise ValueError(f"{what} range must be three integers MIN,OPT,MAX, got {text!r}")
    r = Range(*parts)
    if not 1 <= r.min <= r.opt <= r.max:
        raise ValueError(f"{what} range must satisfy 1 <= min <= opt <= max, got {r.min},{r.opt},{r.max}")
    return r


class Chunk(NamedTuple):
    """Rows ``start:stop`` of a batch, run padded to ``rows`` x ``seq``."""

    start: int
    stop: int
    rows: int
    seq: int


@dataclass(frozen=True)
class Profile:
    """Batch and sequence ranges of one TensorRT optimization profile."""

    batch: Range
    seq: Range

    @classmethod
    def create(cls, batch: str | Sequence[int] = (1, 32, 128), seq: str | Sequence[int] | None = None,
               max_length: int = 512) -> Profile:
        """Ranges from options; the sequence range defaults to ``1, min(128, max_length), max_length``."""
        s = parse_range(seq, "sequence") if seq is not None else Range(1, min(128, max_length), max_length)
        if s.max > max_length:
            raise ValueError(f"sequence max {s.max} is above the bundle's max_length {max_length}: "
                             "the tokenizer never produces longer inputs, and longer positions may not exist")
        return cls(parse_range(batch, "batch"), s)

    def input_shapes(self, inputs: Sequence[str]) -> dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
        """``{input: (min_shape, opt_shape, max_shape)}`` for ``IOptimizationProfile.set_shape``."""
        b, s = self.batch, self.seq
        return {name: ((b.min, s.min), (b.opt, s.opt), (b.max, s.max)) for name in inputs}

    def chunks(self, batch: int, seq: int, on_large_batch: Literal["split", "raise"] = "split") -> list[Chunk]:
        """How to run a ``batch`` x ``seq`` input on this profile (see the module docstring)."""
        if seq > self.seq.max:
            raise ProfileError(
                f"sequence length {seq} is outside the engine's profile (sequence {self.seq.min}..{self.seq.max}); "
                f"rebuild the engine with a larger sequence max (--trt-seq) or lower the bundle's max_length")
        if batch > self.batch.max and on_large_batch == "raise":
            raise ProfileError(
                f"batch of {batch} is outside the engine's profile (batch {self.batch.min}..{self.batch.max}); "
                f"use batch_size <= {self.batch.max} or rebuild the engine with a larger batch max (--trt-batch)")
        width = max(seq, self.seq.min)
        out = []
        for start in range(0, batch, self.batch.max):
            stop = min(batch, start + self.batch.max)
            out.append(Chunk(start, stop, max(stop - start, self.batch.min), width))
        return out

    def as_dict(self) -> dict[str, list[int]]:
        return {"batch": list(self.batch), "seq": list(self.seq)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        return cls(parse_range(d["batch"], "batch"), parse_range(d["seq"], "sequence"))


def pad_feed(feed: dict[str, np.ndarray], chunk: Chunk) -> dict[str, np.ndarray]:
    """Rows ``chunk.start:chunk.stop`` of ``feed`` padded to ``chunk.rows`` x ``chunk.seq``.

    Padded positions get token 0 and mask 0, so they change no real row. Padded rows attend to
    their first position only (mask 1 there): a row with no position to attend to is the one case
    where attention's softmax may turn to NaN in float16; those rows are dropped anyway.
    """
    out = {}
    for name, a in feed.items():
        part = a[chunk.start:chunk.stop]
        if part.shape == (chunk.rows, chunk.seq):
            out[name] = np.ascontiguousarray(part)
            continue
        p = np.zeros((chunk.rows, chunk.seq), dtype=a.dtype)
        p[: part.shape[0], : part.shape[1]] = part
        if name == "attention_mask":
            p[part.shape[0]:, 0] = 1
        out[name] = p
    return out


# --- engine metadata -------------------------------------------------------------------------

@dataclass
class EngineMeta:
    """What a ``.plan`` was built for; stored as ``<plan>.json`` beside it."""

    gpu_name: str
    compute_capability: str  # "9.0"
    tensorrt_version: str
    precision: str
    profile: dict[str, list[int]]
    inputs: list[str]
    outputs: list[str]
    onnx_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(path, (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> EngineMeta:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"engine metadata {p} is missing: a plan without it cannot be checked "
                                    "against this GPU; rebuild it with `python -m fastemb export ... --tensorrt`")
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{p}: not valid engine metadata ({e})") from None


def meta_path(plan: str | Path) -> Path:
    return Path(str(plan) + ".json")


def check_engine(meta: EngineMeta, gpu_name: str, compute_capability: str, tensorrt_version: str,
                 plan: str | Path = "engine") -> None:
    """Refuse an engine built for another GPU or TensorRT version, naming both values.

    TensorRT engines hold kernels chosen and compiled for one GPU and one TensorRT release; on
    another, deserialization fails with a terse error at best, and runs slower at worst.
    """
    problems = []
    if meta.tensorrt_version != tensorrt_version:
        problems.append(f"TensorRT {meta.tensorrt_version} (this process has TensorRT {tensorrt_version})")
    if meta.compute_capability != compute_capability:
        problems.append(f"compute capability {meta.compute_capability} (this GPU is {compute_capability})")
    if _gpu_key(meta.gpu_name) != _gpu_key(gpu_name):
        problems.append(f"GPU {meta.gpu_name!r} (this GPU is {gpu_name!r})")
    if problems:
        raise EngineMismatchError(
            f"{plan} was built for " + " and ".join(problems)
            + "; rebuild it on this machine with `python -m fastemb export SRC OUT --tensorrt`")


def _gpu_key(name: str) -> str:
    return re.sub(r"\s+", " ", name).strip().lower()


# --- out of memory ---------------------------------------------------------------------------

_OOM = re.compile(r"out of memory|outofmemory|failed to allocate memory|cudaErrorMemoryAllocation|"
                  r"CUDA_ERROR_OUT_OF_MEMORY|BFCArena.*allocat", re.IGNORECASE)


def is_out_of_memory(e: BaseException) -> bool:
    """Device OOM as torch, onnxruntime, TensorRT or CUDA report it (each has its own type)."""
    if isinstance(e, DeviceOutOfMemoryError):
        return False  # already final
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return bool(_OOM.search(str(e)))


def run_with_oom_retry(run: Callable[[dict[str, np.ndarray]], np.ndarray], feed: dict[str, np.ndarray],
                       on_oom: Callable[[], None] | None = None) -> np.ndarray:
    """``run(feed)``; on device OOM run each half of the rows (recursively), then concatenate.

    A single row that does not fit raises :class:`DeviceOutOfMemoryError`. ``on_oom`` runs before
    each retry (torch: ``torch.cuda.empty_cache``) so the retry sees the freed memory.
    """
    try:
        return run(feed)
    except Exception as e:  # noqa: BLE001 - each library raises its own OOM type; others re-raise
        if not is_out_of_memory(e):
            raise
        rows, seq = next(iter(feed.values())).shape
        if rows <= 1:
            raise DeviceOutOfMemoryError(
                f"device out of memory on a single text of {seq} tokens; lower max_length, free GPU memory, "
                f"or use a smaller model ({str(e).splitlines()[0][:200]})") from e
        if on_oom is not None:
            on_oom()
    half = rows // 2
    parts = [run_with_oom_retry(run, {k: v[a:b] for k, v in feed.items()}, on_oom) for a, b in ((0, half), (half, rows))]
    return np.concatenate(parts, axis=0)


# --- CUDA graph buckets ----------------------------------------------------------------------

def buckets(limit: int, first: int) -> tuple[int, ...]:
    """Powers of two from ``first`` below ``limit``, then ``limit`` itself."""
    out, b = [], first
    while b < limit:
        out.append(b)
        b *= 2
    return (*out, limit)


def bucket(n: int, sizes: Sequence[int]) -> int | None:
    """The smallest size >= n, or None when n is larger than all of them."""
    for s in sizes:
        if s >= n:
            return s
    return None

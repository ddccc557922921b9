"""``Encoder``: texts in, float32 sentence vectors out, from a bundle."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fastemb._checks import integer
from fastemb.backends.profiles import run_with_oom_retry
from fastemb.bundle import Bundle, BundleError, check_graph
from fastemb.tokenize import check_texts, length_batches, load_tokenizer, pad_batch, pad_id_of

# Texts are tokenized in chunks; when a call has more than one chunk, the next chunk is tokenized
# in a background thread (one per Encoder, started on first need and kept) while the current one
# runs. Batches are length-sorted within a chunk, which is as good as a global sort for padding
# once a chunk holds many batches. A call of one chunk (every short request) starts no thread.
CHUNK_BATCHES = 64


class Encoder:
    """Sentence encoder served from a bundle directory (or any file in it).

    ``device`` picks ONNX Runtime's execution providers (``cpu``, ``cuda``, ``tensorrt``);
    ``providers`` overrides them; ``backend`` is ``onnxruntime``, or OpenVINO on the CPU
    (``openvino``, or ``openvino-bf16`` with bfloat16 float parts: ``pip install fastemb[openvino]``);
    ``threads`` sets the runtime's threads (default:
    the cores this process may use; half of them for a folded TextCNN, whose graph costs about
    as much as tokenizing its input, so the tokenizer thread gets the other half). The path of a
    bundle's ``model.plan`` runs that TensorRT engine instead (on the current GPU; ``device``,
    ``providers`` and ``threads`` do not apply). A batch that runs out of device memory is
    retried in halves.
    """

    _pool: ThreadPoolExecutor | None = None  # the tokenizer thread, started on first need
    _pool_lock = threading.Lock()  # class-wide: held only while an Encoder starts its thread

    def __init__(self, path: str | Path, device: str = "cpu", providers: Sequence[str] | None = None,
                 threads: int | None = None, verify: bool = True, backend: str = "onnxruntime") -> None:
        threads = integer("threads", threads, min=1, optional=True)
        self.bundle = Bundle(path, verify=verify)
        m = self.bundle.manifest
        if m.kind != "encoder":
            raise BundleError(f"{self.bundle.dir} is a {m.kind} bundle, not an encoder (use fastemb.Generator)")
        self.dim = int(m.dim)
        self.max_length = int(m.max_length)
        self.tokenizer = load_tokenizer(self.bundle.file("tokenizer.json"), self.max_length)
        self._pad_id = pad_id_of(self.tokenizer)
        if Path(path).suffix == ".plan":
            from fastemb.backends.tensorrt import TensorRTBackend

            self.backend = TensorRTBackend(self.bundle.file(Path(path).name))
        else:
            if threads is None and device == "cpu" and m.source.get("folded"):
                from fastemb.backends.ort import physical_cores

                threads = max(1, physical_cores() // 2)  # README, Shrink: faster on 2 cores
            self.backend = _graph_backend(backend, self.bundle.graph("encoder"), device, providers, threads)
            if hasattr(self.backend, "session"):  # onnxruntime: its metadata (OpenVINO reads the same file)
                check_graph(self.bundle, self.backend.session, "sentence_embedding")
        missing = [n for n in self.backend.inputs if n not in ("input_ids", "attention_mask", "token_type_ids")]
        if missing:
            raise BundleError(f"{self.bundle.dir}: graph input(s) {missing} are not ones fastemb can feed")

    @property
    def provider(self) -> str:
        """The execution provider that actually runs the graph."""
        return self.backend.provider

    def encode(self, texts: str | Sequence[str], batch_size: int = 32, normalize: bool = True,
               show_progress: bool = False) -> np.ndarray:
        """Encode texts: float32 ``[n, dim]`` in input order, or ``[dim]`` for a single string.

        Texts longer than the bundle's ``max_length`` tokens are truncated. ``normalize=False``
        returns the pooled vectors before L2 normalization.
        """
        items, single = check_texts(texts)
        batch_size = integer("batch_size", batch_size, min=1)
        output = "sentence_embedding" if normalize else "pooled_embedding"
        if output not in self.backend.outputs:
            raise BundleError(f"{self.bundle.dir}: graph has no {output!r} output (outputs: {self.backend.outputs})")
        if len(items) == 1 and not show_progress:  # one text: no chunking, sorting or thread
            feed = pad_batch([self.tokenizer.encode(items[0]).ids], self.backend.inputs, self._pad_id)
            vec = self._run(feed, output)
            return vec[0] if single else vec
        out = np.empty((len(items), self.dim), dtype=np.float32)
        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(items), desc="encode", unit="text")
        try:
            for idx, feed in self._batches(items, int(batch_size)):
                out[idx] = self._run(feed, output)
                if progress is not None:
                    progress.update(len(idx))
        finally:
            if progress is not None:
                progress.close()
        return out[0] if single else out

    def _run(self, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
        return run_with_oom_retry(lambda f: self.backend.run(f, output), feed, getattr(self.backend, "on_oom", None))

    def _batches(self, texts: list[str], batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        chunk = batch_size * CHUNK_BATCHES
        starts = list(range(0, len(texts), chunk))
        pending: Future | None = None
        try:
            for i, start in enumerate(starts):
                ids = self._tokenize(texts, start, chunk) if pending is None else pending.result()
                pending = (self._tokenizer_thread().submit(self._tokenize, texts, starts[i + 1], chunk)
                           if i + 1 < len(starts) else None)
                for batch in length_batches([len(x) for x in ids], batch_size):
                    yield batch + start, pad_batch([ids[j] for j in batch], self.backend.inputs, self._pad_id)
        finally:
            if pending is not None:  # the caller stopped early (an error): don't leave work queued
                pending.cancel()

    def _tokenizer_thread(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastemb-tokenize")
            return self._pool

    def _tokenize(self, texts: list[str], start: int, size: int) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts[start : start + size], add_special_tokens=True)]

    def __repr__(self) -> str:
        return f"Encoder({str(self.bundle.dir)!r}, dim={self.dim}, provider={self.provider})"


BACKENDS = ("onnxruntime", "openvino", "openvino-bf16")


def _graph_backend(name: str, graph: Path, device: str, providers: Sequence[str] | None, threads: int | None):
    """``onnxruntime`` (any device), or OpenVINO on the CPU with float32 or bfloat16 float parts."""
    from fastemb.backends.ort import OrtBackend

    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "onnxruntime":
        return OrtBackend(graph, device=device, providers=providers, threads=threads)
    if device != "cpu" or providers is not None:
        raise ValueError(f"backend={name!r} runs on the CPU; device and providers do not apply")
    from fastemb.backends.openvino import OpenVinoBackend

    return OpenVinoBackend(graph, threads=threads, precision="bf16" if name.endswith("bf16") else "f32")

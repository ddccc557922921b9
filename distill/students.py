"""Students built from a teacher: tiny-BERT (fewer layers, teacher weights) and TextCNN, plus the
on-disk cache of the teacher's vectors for a corpus."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np

from distill.io import write_json

CORPUS = Path(__file__).resolve().parent / "resources" / "corpus" / "sentences.txt"


def evenly_spaced_layers(teacher_layers: int, layers: int) -> list[int]:
    """``layers`` teacher layer indices spread evenly from the first to the last (6 -> 3: 0, 2, 5).

    The last layer is always kept: its output is what the teacher's pooling sees.
    """
    if layers < 1:
        raise ValueError(f"a student needs at least 1 layer, got {layers}")
    if layers > teacher_layers:
        raise ValueError(f"a student with {layers} layers is larger than its {teacher_layers}-layer teacher")
    if layers == 1:
        return [teacher_layers - 1]
    return [round(i * (teacher_layers - 1) / (layers - 1)) for i in range(layers)]


def tinybert_from_teacher(teacher, layers: int, hidden_size: int | None = None):
    """A :class:`~distill.model.SentenceEncoder` with ``layers`` of the teacher's layers.

    Embeddings and the chosen layers are copied from the teacher. With a smaller ``hidden_size``
    the student is initialized randomly at that width (weights cannot be copied) and a linear
    projection maps its vectors to the teacher's dimension (saved as a sentence-transformers
    Dense module, so export and sentence-transformers both read it).
    """
    from torch import nn

    from distill.model import SentenceEncoder

    backbone = teacher.backbone
    n = backbone.config.num_hidden_layers
    keep = evenly_spaced_layers(n, layers)
    if hidden_size is None or hidden_size == backbone.config.hidden_size:
        student = copy.deepcopy(backbone)  # a copy: training the student leaves the teacher alone
        student.encoder.layer = nn.ModuleList(student.encoder.layer[i] for i in keep)
        student.config.num_hidden_layers = layers
        projection = None
        # the teacher's Dense layers (and whitening) map the same width: the student keeps them
        dense = [copy.deepcopy(d) for d in [*teacher.dense, *([teacher.whitening] if teacher.whitening is not None else [])]]
    else:
        if hidden_size > backbone.config.hidden_size:
            raise ValueError(f"student hidden size {hidden_size} is larger than the teacher's {backbone.config.hidden_size}")
        heads = backbone.config.num_attention_heads
        while hidden_size % heads:
            heads -= 1
        config = copy.deepcopy(backbone.config)
        config.update({"hidden_size": hidden_size, "num_hidden_layers": layers, "num_attention_heads": heads,
                       "intermediate_size": 4 * hidden_size})
        student = type(backbone)(config)
        projection = nn.Linear(hidden_size, teacher.dim)
        dense = []
    student.config.fastemb_layers_from_teacher = keep
    enc = SentenceEncoder(student, teacher.tokenizer, pooling=teacher.pooling, normalize=teacher.normalize,
                          max_length=teacher.max_length, whitening=projection, dense=dense)
    return enc


def fit_projection(student, sentences: list[str], targets: np.ndarray, batch_size: int = 64,
                   ridge: float = 0.1):
    """Attach a linear head mapping the student's pooled vectors to the target space (in place).

    The head is the ridge-regularized least-squares fit of ``targets`` [n, d_target] from the
    student's pooled vectors of ``sentences`` (centered; penalty ``ridge`` x the mean eigenvalue of
    their covariance): training starts from the best linear map between the two spaces instead of
    a random one, since a student initialized from another model speaks another space. The penalty
    matters: pooled vectors are nearly rank-deficient (condition number ~1e19 for a 3-layer
    MiniLM), a plain fit has weights of ~1e3 or more that cancel each other, and the first optimizer
    step through them sends every sentence to the same vector. Saved like whitening, as a
    sentence-transformers Dense module before Normalize.
    """
    import torch
    from torch import nn

    if not hasattr(student, "whitening") or student.whitening is not None:
        raise ValueError("a projection head goes on a SentenceEncoder without one")
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 2 or targets.shape[0] != len(sentences) or len(sentences) < 2:
        raise ValueError(f"need [n >= 2, d] targets for {len(sentences)} sentences, got shape {targets.shape}")
    normalize, student.normalize = student.normalize, False
    try:
        x = student.encode(sentences, batch_size=batch_size).astype(np.float64)
    finally:
        student.normalize = normalize
    mx, my = x.mean(axis=0), targets.mean(axis=0)
    gram = (x - mx).T @ (x - mx)
    penalty = ridge * np.trace(gram) / len(gram)
    w = np.linalg.solve(gram + penalty * np.eye(len(gram)), (x - mx).T @ (targets - my))  # [d_student, d_target]
    head = nn.Linear(x.shape[1], targets.shape[1])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
        head.bias.copy_(torch.from_numpy((my - mx @ w).astype(np.float32)))
    student.whitening = head
    return student


def pca_targets(vectors: np.ndarray, k: int, npy: Path, chunk: int = 65536, log=print) -> np.ndarray:
    """Teacher vectors reduced to their first ``k`` principal components and L2-normalized.

    The mean and covariance are accumulated over chunks of rows (``vectors`` may be a memory map
    of millions of rows); the reduced rows are cached at ``npy`` like the teacher vectors.
    """
    n, d = vectors.shape
    if not 1 <= k < d:
        raise ValueError(f"PCA target dimension must be in 1..{d - 1}, got {k}")
    if (cached := _load_checked(npy, (n, k), log)) is not None:
        log(f"PCA targets: cache hit {npy}")
        return cached
    total, second = np.zeros(d), np.zeros((d, d))
    for i in range(0, n, chunk):
        block = np.asarray(vectors[i:i + chunk], dtype=np.float64)
        total += block.sum(axis=0)
        second += block.T @ block
    mu = total / n
    cov = second / n - np.outer(mu, mu)
    eigval, eigvec = np.linalg.eigh(cov)  # ascending
    w = eigvec[:, ::-1][:, :k]
    kept = eigval[::-1][:k].sum() / max(eigval.sum(), 1e-12)
    log(f"PCA targets: {d} -> {k} dimensions keep {100 * kept:.1f}% of the teacher vectors' variance")

    def rows(start: int, stop: int) -> np.ndarray:
        r = (np.asarray(vectors[start:stop], dtype=np.float64) - mu) @ w
        return r / np.linalg.norm(r, axis=1, keepdims=True).clip(min=1e-12)

    return write_rows_chunked(npy, (n, k), rows, chunk, {"pca_of": n, "variance_kept": float(kept)}, log)


def textcnn_from_teacher(teacher_dir: str | Path, out_dim: int, embed_dim: int | None = 256,
                         kernel_sizes: tuple[int, ...] = (1, 2, 3), num_filters: int = 256,
                         pooling: str = "max", max_length: int = 128):
    """A TextCNN with the teacher's tokenizer and (PCA-projected) word embeddings."""
    from distill.textcnn import TextCNN

    return TextCNN.from_teacher(teacher_dir, embed_dim=embed_dim, out_dim=out_dim, kernel_sizes=list(kernel_sizes),
                                num_filters=num_filters, pooling=pooling, max_length=max_length)


def read_corpus(path: str | Path = CORPUS) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus not found: {path}")
    # one sentence per \n-terminated line (str.splitlines would also split at form feeds, U+2028, ...)
    lines = (s.removesuffix("\r") for s in path.read_text(encoding="utf-8").split("\n"))
    sentences = [s for s in lines if s.strip()]
    if not sentences:
        raise ValueError(f"{path}: the corpus is empty")
    return sentences


def sha256_lines(lines: list[str]) -> str:
    h = hashlib.sha256()
    for s in lines:
        h.update(s.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def teacher_vectors(bundle: str | Path, sentences: list[str], cache_dir: str | Path,
                    batch_size: int = 64, log=print, chunk: int = 8192, rows: int | None = None,
                    ray_address: str | None = None) -> np.ndarray:
    """The teacher bundle's vectors of ``sentences``, computed once with ``fastemb.Encoder``, or
    with ``ray_address`` by Ray actors (``fastemb.ray``; ``"local"`` or a cluster's address).

    Cached as ``<cache_dir>/<teacher>-<corpus>.npy`` with a JSON sidecar holding the array's
    sha256 (the same files either way): a corrupt or truncated cache is detected, reported and
    rebuilt. The array is returned memory-mapped (read-only), so a corpus of millions of sentences
    never sits in memory whole. It is written ``chunk`` sentences at a time into
    ``<key>.partial.npy``, with the rows done so far in ``<key>.partial.json``: an interrupted run
    resumes at the last finished chunk. ``rows=n`` needs only the first n sentences' vectors: the
    cache stays keyed by the whole corpus, encoding stops once n rows are done, and a later call
    for more rows (or all) continues there.
    """
    from fastemb.bundle import Bundle

    if ray_address is not None:
        import fastemb.ray  # noqa: F401 - without Ray, say so (ImportError naming the extra) first
    b = Bundle(bundle)
    teacher_key = b.manifest.files[b.manifest.graphs["encoder"]][:16]
    key = f"{teacher_key}-{sha256_lines(sentences)[:16]}"
    npy = Path(cache_dir) / f"{key}.npy"
    shape = (len(sentences), int(b.manifest.dim))
    if (cached := _load_checked(npy, shape, log)) is not None:
        log(f"teacher vectors: cache hit {npy}")
        return cached[:rows]

    chunks = [sha256_lines(sentences[i:i + chunk])[:16] for i in range(0, len(sentences), chunk)]
    donors = _chunk_donors(Path(cache_dir), teacher_key, chunk, exclude=npy)

    def encode(start: int, stop: int) -> np.ndarray:
        donor = donors.get(chunks[start // chunk]) if stop - start == chunk else None
        if donor is not None:  # the same sentences were encoded for another corpus
            return np.load(donor[0], mmap_mode="r")[donor[1]:donor[1] + chunk]
        return encoder.encode(sentences[start:stop], batch_size=batch_size)

    if ray_address is not None:  # one Ray pipeline from the first row still missing to the last needed:
        # the end of the chunk holding row ``rows`` (whole chunks are written, ``write_rows_chunked``)
        end = len(sentences) if rows is None else min(len(sentences), -(-rows // chunk) * chunk)
        encode = _RayRows(b.dir, sentences[:end], batch_size, ray_address)
    else:
        from fastemb import Encoder

        encoder = Encoder(b.dir)
        if reuse := sum(c in donors for c in chunks):
            log(f"teacher vectors: {reuse} chunks of {chunk} sentences already encoded for another corpus")
    log(f"teacher vectors: {rows or len(sentences)} of {len(sentences)} sentences with {b.dir}"
        + (f" on Ray ({ray_address})" if ray_address else ""))
    info = {"teacher": str(b.dir), "chunk": chunk, "chunks": chunks}
    return write_rows_chunked(npy, shape, encode, chunk, info, log, stop_at=rows)


class _RayRows:
    """``rows(start, stop)`` for :func:`write_rows_chunked` from one ``fastemb.ray`` pipeline over
    ``sentences[start:]``, started at the first call; the rows must be asked for in order."""

    def __init__(self, bundle: Path, sentences: list[str], batch_size: int, address: str) -> None:
        self.bundle, self.sentences, self.batch_size, self.address = bundle, sentences, batch_size, address
        self.stream = None
        self.origin = self.next = 0  # the pipeline's first row; the row the buffer starts at
        self.buffer = np.zeros((0, 0), dtype=np.float32)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        from fastemb.ray import encode_texts

        if self.stream is None:
            self.origin = self.next = start
            self.stream = encode_texts(self.bundle, self.sentences[start:], address=self.address,
                                       batch_size=self.batch_size)
        if start != self.next:
            raise ValueError(f"Ray rows asked for out of order: {start}, expected {self.next}")
        parts, have = [self.buffer], len(self.buffer)
        while have < stop - start:
            first, vectors, errors = next(self.stream)
            bad = [(self.origin + first + i, e) for i, e in enumerate(errors) if e]
            if bad:
                raise ValueError(f"teacher vectors: {len(bad)} sentence(s) could not be encoded, e.g. "
                                 + "; ".join(f"row {i}: {e}" for i, e in bad[:3]))
            parts.append(np.asarray(vectors, dtype=np.float32))
            have += len(vectors)
        block = np.concatenate([p for p in parts if len(p)])
        self.buffer, self.next = block[stop - start:], stop
        return block[:stop - start]


def _chunk_donors(cache_dir: Path, teacher_key: str, chunk: int, exclude: Path) -> dict[str, tuple[Path, int]]:
    """Chunk sentence hash -> (array file, first row) over the finished and partial caches of this
    teacher in ``cache_dir`` with the same chunk size: their full chunks need no encoding again."""
    found: dict[str, tuple[Path, int]] = {}
    for meta in sorted(cache_dir.glob(f"{teacher_key}-*.json")):
        if meta.name.startswith(exclude.stem + "."):
            continue
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if info.get("chunk") != chunk or not isinstance(info.get("chunks"), list):
            continue
        partial = meta.name.endswith(".partial.json")
        arr = meta.with_name(meta.name.removesuffix(".json") + ".npy")
        done = int(info.get("done", 0)) if partial else int(info.get("rows", 0))
        if not arr.is_file():
            continue
        for i, h in enumerate(info["chunks"]):
            if (i + 1) * chunk <= done:
                found.setdefault(h, (arr, i * chunk))
    return found


def _load_checked(npy: Path, shape: tuple[int, int], log=print) -> np.ndarray | None:
    """The cached float32 array at ``npy`` (memory-mapped) if its sidecar checksum and shape match."""
    from fastemb._io import sha256_file

    meta = npy.with_suffix(".json")
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        if json.loads(meta.read_text()).get("sha256") == sha256_file(npy):
            arr = np.load(npy, mmap_mode="r")
            if arr.shape == shape and arr.dtype == np.float32:
                return arr
        log(f"cache {npy} is corrupt (checksum or shape mismatch); rebuilding")
    except (OSError, ValueError) as e:
        log(f"cache {npy} unreadable ({e}); rebuilding")
    return None


def write_rows_chunked(npy: Path, shape: tuple[int, int], rows, chunk: int, info: dict,
                       log=print, stop_at: int | None = None, poll: float = 10.0) -> np.ndarray:
    """Fill ``npy`` (float32 ``shape``) with ``rows(start, stop)`` chunk by chunk, resumably.

    Rows go into ``<npy>.partial.npy`` (a memory map); after each chunk is flushed,
    ``<npy>.partial.json`` records how many rows are done, so a rerun after an interruption starts
    there. When all rows are in, the file is renamed to ``npy`` and a sidecar with its sha256 is
    written. Returns the array, memory-mapped read-only; with ``stop_at`` only its first
    ``stop_at`` rows, taken from the partial file once that many are done. An exclusive lock on
    ``<npy>.lock`` keeps two processes from writing the same file.
    """
    import fcntl
    import os
    import time

    from tqdm.auto import tqdm

    from fastemb._io import sha256_file

    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    if stop_at is not None and not 1 <= stop_at <= shape[0]:
        raise ValueError(f"rows must be in 1..{shape[0]}, got {stop_at}")
    target = shape[0] if stop_at is None else stop_at
    npy.parent.mkdir(parents=True, exist_ok=True)
    part, progress = npy.with_suffix(".partial.npy"), npy.with_suffix(".partial.json")
    with open(npy.with_suffix(".lock"), "w") as lock:
        waiting = False
        while True:  # another process may be writing this file: wait for it, or for the rows we need
            if stop_at is not None and _rows_done(part, progress, shape, quiet=True) >= stop_at:
                return np.load(part, mmap_mode="r")[:stop_at]
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    log(f"waiting for another process writing {npy.name}")
                    waiting = True
                time.sleep(poll)
        if (done_file := _load_checked(npy, shape, log)) is not None:  # finished while we waited
            return done_file[:stop_at]
        done = _rows_done(part, progress, shape, log)
        out = np.lib.format.open_memmap(part, mode="r+" if done else "w+", dtype=np.float32, shape=shape)
        with tqdm(total=target, initial=min(done, target), desc=npy.stem[:24], unit="row") as bar:
            while done < target:
                stop = min(done + chunk, shape[0])
                block = np.asarray(rows(done, stop), dtype=np.float32)
                if block.shape != (stop - done, shape[1]):
                    raise ValueError(f"rows({done}, {stop}) returned shape {block.shape}, "
                                     f"expected {(stop - done, shape[1])}")
                out[done:stop] = block
                out.flush()
                write_json(progress, {"done": stop, **info})
                bar.update(min(stop, target) - min(done, target))
                done = stop
        del out
        if done < shape[0]:
            return np.load(part, mmap_mode="r")[:stop_at]
        os.replace(part, npy)
        write_json(npy.with_suffix(".json"), {"sha256": sha256_file(npy), "rows": shape[0], "dim": shape[1], **info})
        progress.unlink(missing_ok=True)
    return np.load(npy, mmap_mode="r")[:stop_at]


def _rows_done(part: Path, progress: Path, shape: tuple[int, int], log=print, quiet: bool = False) -> int:
    """Rows already in a partial file that matches ``shape`` (0 when there is none or it does not)."""
    if not (part.is_file() and progress.is_file()):
        return 0
    try:
        done = int(json.loads(progress.read_text()).get("done", -1))
        arr = np.load(part, mmap_mode="r")
        if arr.shape == shape and arr.dtype == np.float32 and 0 <= done <= shape[0]:
            if done and not quiet:
                log(f"resuming {part.name} at row {done} of {shape[0]}")
            return done
    except (OSError, ValueError):
        pass
    if not quiet:
        log(f"partial cache {part} does not match its progress file; starting over")
    return 0

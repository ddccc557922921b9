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
    student.config.fastemb_layers_from_teacher = keep
    enc = SentenceEncoder(student, teacher.tokenizer, pooling=teacher.pooling, normalize=teacher.normalize,
                          max_length=teacher.max_length, whitening=projection)
    return enc


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


def _sha256_text(lines: list[str]) -> str:
    h = hashlib.sha256()
    for s in lines:
        h.update(s.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def teacher_vectors(bundle: str | Path, sentences: list[str], cache_dir: str | Path,
                    batch_size: int = 64, log=print, ray_address: str | None = None) -> np.ndarray:
    """The teacher bundle's vectors of ``sentences``, computed once with ``fastemb.Encoder``, or
    with ``ray_address`` by Ray actors (``fastemb.ray``; ``"local"`` or a cluster's address).

    Cached as ``<cache_dir>/<teacher>-<corpus>.npy`` with a JSON sidecar holding the array's
    sha256 (the same files either way): a corrupt or truncated cache is detected, reported and
    rebuilt.
    """
    from fastemb import Encoder
    from fastemb._io import atomic_write_bytes, sha256_file
    from fastemb.bundle import Bundle

    if ray_address is not None:
        import fastemb.ray  # noqa: F401 - without Ray, say so (ImportError naming the extra) first
    b = Bundle(bundle)
    teacher_key = b.manifest.files[b.manifest.graphs["encoder"]][:16]
    key = f"{teacher_key}-{_sha256_text(sentences)[:16]}"
    cache_dir = Path(cache_dir)
    npy, meta = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if npy.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text())
            if info.get("sha256") == sha256_file(npy):
                vectors = np.load(npy)
                if vectors.shape == (len(sentences), b.manifest.dim) and vectors.dtype == np.float32:
                    log(f"teacher vectors: cache hit {npy}")
                    return vectors
            log(f"teacher vectors: cache {npy} is corrupt (checksum or shape mismatch); rebuilding")
        except (OSError, ValueError) as e:
            log(f"teacher vectors: cache {npy} unreadable ({e}); rebuilding")
    log(f"teacher vectors: encoding {len(sentences)} sentences with {b.dir}"
        + (f" on Ray ({ray_address})" if ray_address else ""))
    if ray_address is None:
        vectors = Encoder(b.dir).encode(sentences, batch_size=batch_size, show_progress=True)
        import io

        buf = io.BytesIO()
        np.save(buf, vectors)
        atomic_write_bytes(npy, buf.getvalue())
    else:
        vectors = _teacher_vectors_on_ray(b, sentences, npy, batch_size, ray_address)
    write_json(meta, {"sha256": sha256_file(npy), "teacher": str(b.dir), "sentences": len(sentences),
                      "dim": int(b.manifest.dim)})
    return vectors


def _teacher_vectors_on_ray(b, sentences: list[str], npy: Path, batch_size: int, address: str) -> np.ndarray:
    """Stream Ray's vectors into ``npy`` (the driver never holds them twice) and load it."""
    from fastemb.bulk import write_rows
    from fastemb.ray import encode_texts

    report = write_rows(npy, int(b.manifest.dim), encode_texts(b.dir, sentences, address=address,
                                                               batch_size=batch_size),
                        fmt="sentences", total=len(sentences))
    if report.failed:
        npy.unlink()
        raise ValueError(f"teacher vectors: {report.failed} sentence(s) could not be encoded, e.g. "
                         f"{'; '.join(report.first_failures[:3])}")
    return np.load(npy)

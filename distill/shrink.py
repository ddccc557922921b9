"""Shrink a teacher into a tiny-BERT or TextCNN student, then export it to bundles.

Layout of ``out``::

    train/          the trainer's directory (best/, last/ resumable checkpoint, log.json, train.png)
    bundle-fp32/    fastemb bundle of the best student, float32
    bundle-int8/    the same, dynamic int8 (SmoothQuant)

Teacher vectors for the corpus come from the teacher's fp32 bundle through ``fastemb.Encoder`` (or
Ray actors, ``ray``) and are cached under ``cache_dir`` (keyed by teacher graph and corpus
checksums; written in chunks, so a large corpus resumes and never sits in memory whole). Under
``torchrun`` every process trains (DDP), rank 0 alone computes the teacher vectors (the others
receive them) and writes the outputs. Training batches group sentences of similar token length
(random batches pad each sentence to the longest one).

The student starts from the teacher, or from another model (``init``: its embeddings, layers and
tokenizer); a linear head, initialized by ridge least squares, then maps its vectors to the
targets: the teacher's vectors (``head="projection"``), or those PCA-reduced to the student's own
dimension (``head="pca"``: smaller vectors, the same cost).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastemb._checks import integer
from fastemb._io import refuse_overwriting_source

STUDENTS = ("tinybert", "textcnn")
HEADS = ("projection", "pca")


@dataclass
class ShrinkConfig:
    teacher: str
    out: str
    student: Literal["tinybert", "textcnn"] = "tinybert"
    layers: int = 3
    hidden_size: int | None = None
    loss: Literal["mse", "cosine", "similarity"] = "mse"
    corpus: str | None = None  # default: the shipped corpus
    max_sentences: int | None = None
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 64
    lr: float | None = None  # default per student: 1e-4 tiny-BERT, 2e-3 TextCNN
    max_length: int = 128
    eval_every: int = 250
    seed: int = 42
    cache_dir: str = ".cache/distill"
    overwrite: bool = False
    resume: bool = False
    export: bool = True
    progress: bool = True
    ray: str | None = None  # teacher vectors on Ray: "local" or a cluster's address (fastemb[ray])
    init: str | None = None  # initialize the student from this model (default: the teacher)
    head: Literal["projection", "pca"] = "projection"  # when student and teacher dimensions differ

    def __post_init__(self) -> None:
        """Refuse bad arguments when the config is made: before anything is loaded or written."""
        from distill.objectives.distillation import KINDS as LOSSES

        if self.student not in STUDENTS:
            raise ValueError(f"unknown student {self.student!r}; choose one of {', '.join(STUDENTS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        integer("layers", self.layers, 1)
        integer("hidden_size", self.hidden_size, 1, optional=True)
        integer("max_sentences", self.max_sentences, 1, optional=True)
        integer("max_length", self.max_length, 2)
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        self.train_config()  # the training numbers: epochs, max_steps, batch_size, lr, ...

    def train_config(self):
        from distill.trainer import TrainConfig

        lr = self.lr if self.lr is not None else (1e-4 if self.student == "tinybert" else 2e-3)
        return TrainConfig(out_dir=str(Path(self.out) / "train"), epochs=self.epochs, max_steps=self.max_steps,
                           batch_size=self.batch_size, lr=lr, eval_every=self.eval_every, seed=self.seed,
                           overwrite=self.overwrite, resume=self.resume, progress=self.progress, warmup_ratio=0.05)


def teacher_bundle(teacher: str | Path, cache_dir: str | Path, log: Callable[[str], None] = print) -> Path:
    """The teacher's fp32 bundle, exported once into the cache (keyed by its weights' checksum)."""
    from fastemb._io import sha256_file
    from fastemb.export import export

    teacher = Path(teacher)
    weights = teacher / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{teacher} is not a supported teacher: no model.safetensors")
    key = hashlib.sha256(sha256_file(weights).encode() + str(teacher.resolve()).encode()).hexdigest()[:16]
    out = Path(cache_dir) / "teachers" / f"{teacher.name}-{key}-fp32"
    if not (out / "fastemb.json").is_file():
        export(teacher, out, overwrite=True, log=log)
    return out


def shrink(cfg: ShrinkConfig, log: Callable[[str], None] = print) -> dict:
    """Train the student (see the module docstring); returns paths and the trainer's summary."""
    import random

    from distill.collective import on_rank0, rank_and_world
    from distill.evaluation import evaluator
    from distill.model import SentenceEncoder
    from distill.objectives.base import Example
    from distill.objectives.distillation import DistillationLoss
    from distill.students import (
        CORPUS,
        fit_projection,
        pca_targets,
        read_corpus,
        sha256_lines,
        teacher_vectors,
        textcnn_from_teacher,
        tinybert_from_teacher,
    )
    from distill.trainer import train
    from fastemb.bundle import Bundle

    train_cfg = cfg.train_config()
    teacher_dir = Path(cfg.teacher)
    if not teacher_dir.is_dir():
        raise FileNotFoundError(f"teacher directory not found: {teacher_dir}")
    if cfg.corpus is not None and not Path(cfg.corpus).is_file():
        raise FileNotFoundError(f"corpus file not found: {cfg.corpus}")
    init_dir = Path(cfg.init) if cfg.init else teacher_dir
    if not init_dir.is_dir():
        raise FileNotFoundError(f"init model directory not found: {init_dir}")
    # exported once, on first need (hashing the teacher's weights is not free): under torchrun only
    # the ranks that need it call it
    teacher_fp32 = functools.cache(lambda: teacher_bundle(teacher_dir, cfg.cache_dir, log))
    out = Path(cfg.out)
    refuse_overwriting_source(out, teacher_dir, cfg.corpus)
    if out.exists() and any(out.iterdir()) and not (cfg.overwrite or cfg.resume):
        raise FileExistsError(f"output directory {out} exists; pass --overwrite to replace it or --resume to continue")
    try:
        source = SentenceEncoder.from_pretrained(init_dir, max_length=cfg.max_length)
    except ValueError as e:
        what = "teacher" if init_dir == teacher_dir else "init model"
        raise ValueError(f"{init_dir} is not a supported {what} encoder: {e}") from None
    if init_dir == teacher_dir:
        teacher_dim = source.dim
    else:
        teacher_dim = Bundle(teacher_fp32()).manifest.dim
    own_dim = teacher_dim if init_dir == teacher_dir else source.dim
    target_dim = own_dim if cfg.head == "pca" else teacher_dim
    if cfg.student == "tinybert":
        student = tinybert_from_teacher(source, cfg.layers, cfg.hidden_size)
    else:
        student = textcnn_from_teacher(init_dir, out_dim=target_dim, max_length=cfg.max_length)
    del source

    sentences = read_corpus(cfg.corpus or CORPUS)
    n = min(cfg.max_sentences, len(sentences)) if cfg.max_sentences else None
    if rank_and_world()[0] != 0:  # under torchrun, one process reports
        log = _quiet
    vectors_dir = Path(cfg.cache_dir) / "vectors"
    # under torchrun, rank 0 exports the teacher and computes (or loads) the vectors; all get them
    targets = on_rank0(lambda: teacher_vectors(teacher_fp32(), sentences,
                                               vectors_dir, log=log, rows=n, ray_address=cfg.ray))
    sentences = sentences[:n]
    if cfg.head == "pca" and target_dim < teacher_dim:
        b = Bundle(teacher_fp32())
        key = f"{b.manifest.files[b.manifest.graphs['encoder']][:16]}-{sha256_lines(sentences)[:16]}-pca{target_dim}"
        targets = pca_targets(targets, target_dim, vectors_dir / f"{key}.npy", log=log)
    if cfg.student == "tinybert" and init_dir != teacher_dir:  # another model's space: map it to the targets
        sample = min(len(sentences), 4096)
        fit_projection(student, sentences[:sample], targets[:sample])
        log(f"projection head {student.whitening.in_features} -> {target_dim}, least squares on {sample} sentences")
    examples = [Example((s,), i) for i, s in enumerate(sentences)]
    random.Random(cfg.seed).shuffle(examples)
    objective = DistillationLoss(student, targets, cfg.loss)
    log(f"distilling a {cfg.student} student ({sum(p.numel() for p in student.parameters()) / 1e6:.1f}M parameters) "
        f"on {len(sentences)} sentences, {cfg.loss} loss")
    summary = train(objective, examples, train_cfg, evaluator("dev"),
                    lengths=token_lengths(init_dir / "tokenizer.json", [e.texts[0] for e in examples]))
    result = {"model": str(out / "train" / "best"), "summary": summary}
    if rank_and_world()[0] == 0:
        from dataclasses import asdict

        from distill.io import write_json

        write_json(out / "shrink.json", {**asdict(cfg), "sentences": len(sentences), "target_dim": target_dim})
    if cfg.export and rank_and_world()[0] == 0:  # under torchrun: one set of bundles
        from fastemb.export import export

        for precision in ("fp32", "int8"):
            path = out / f"bundle-{precision}"
            export(out / "train" / "best", path, quantize="int8" if precision == "int8" else None,
                   overwrite=True, log=log)
            result[f"bundle_{precision}"] = str(path)
    return result


def token_lengths(tokenizer_file: Path, texts: list[str]) -> list[int]:
    """Tokens per text under ``tokenizer_file`` (no truncation): the trainer groups batches by it.
    A teacher without a ``tokenizer.json`` falls back to characters, which track tokens closely."""
    if not tokenizer_file.is_file():
        return [len(t) for t in texts]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_padding()
    tok.no_truncation()
    return [len(e.ids) for e in tok.encode_batch(texts)]


def _quiet(message: str) -> None:
    """The log of torchrun's ranks other than 0."""

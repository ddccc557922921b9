"""``python -m distill``: command-line entry points (argparse subcommands).

teach      train a sentence encoder with one objective (SBERT, SimCSE, SimBERT, CoSENT)
textcnn    create a TextCNN encoder directory (character vocabulary or a teacher's tokenizer)
whiten     fit whitening on a corpus and save it with the model
evaluate   Spearman x 100 of a model on STS-B splits or scored-pair files
shrink     distill a teacher into a tiny-BERT or TextCNN student and export its bundles
main       the main job (also: no arguments): shrink all-MiniLM-L6-v2, export, compare
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path

from fastemb._checks import integer, number
from fastemb._cli import run_command
from fastemb._io import refuse_overwriting_source

# constructor keyword -> CLI flag (dest); a keyword is passed only to objectives that take it.
# "scale" means a different thing per objective, hence the per-objective flags.
OBJECTIVE_KNOBS = {
    "tau": "tau",
    "margin": "margin",
    "score_scale": "score_scale",
    "num_labels": "num_labels",
}
SCALE_FLAG = {"cosent": "cosent_lambda", "simbert": "simbert_scale"}
# what the commands report as one "error:" line (exit 2); anything else is a bug and keeps its traceback
CLI_ERRORS = (ValueError, OSError, NotImplementedError, ImportError)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's line breaks and show defaults."""


def build_parser() -> argparse.ArgumentParser:
    from distill.objectives import OBJECTIVES

    parser = argparse.ArgumentParser(
        prog="python -m distill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "teach",
        help="train a sentence encoder with one objective",
        formatter_class=_Formatter,
        description=(
            "Train a sentence encoder. The data format follows the objective:\n"
            "  sbert-regression, cosent   scored pairs: STS-B file, or 'sent1<TAB>sent2<TAB>score'\n"
            "  sbert-softmax              NLI triplet CSV (sent0,sent1,hard_neg) or 'sent1<TAB>sent2<TAB>label'\n"
            "  sbert-triplet, simcse-sup  NLI triplet CSV with header sent0,sent1,hard_neg\n"
            "  simcse-unsup               one sentence per line\n"
            "  simbert                    paraphrase TSV with a header: sentence1<TAB>sentence2\n"
            "The best model by dev Spearman is saved to OUT/best (a sentence-transformers directory);\n"
            "OUT/last is a checkpoint for --resume, OUT/log.json and OUT/train.png record the run."
        ),
    )
    t.add_argument(
        "--objective",
        required=True,
        metavar="NAME",
        help=f"training objective, one of: {', '.join(OBJECTIVES)}",
    )
    t.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="starting encoder: a Hugging Face / sentence-transformers directory or a TextCNN directory",
    )
    t.add_argument(
        "--train", required=True, metavar="FILE", help="training data (format: see above)"
    )
    t.add_argument("--out", required=True, metavar="DIR", help="output directory")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last")
    g = t.add_argument_group("model")
    g.add_argument(
        "--pooling",
        choices=["cls", "mean", "max"],
        help="pooling (default: the model's, else mean)",
    )
    g.add_argument("--max-length", type=int, default=128, help="max tokens per sentence")
    g.add_argument(
        "--normalize",
        choices=["yes", "no"],
        help="L2-normalize output vectors (default: the model's)",
    )
    g = t.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    g.add_argument(
        "--max-examples", type=int, help="train on a seeded random subset of this many examples"
    )
    g.add_argument(
        "--batch-size", type=int, default=32, help="examples per micro-batch per process"
    )
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument(
        "--group-by-length", action="store_true",
        help="batch examples of similar length (characters) together: less padding, faster steps",
    )
    g.add_argument("--lr", type=float, default=2e-5)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument(
        "--warmup-ratio", type=float, default=0.1, help="fraction of steps of linear warmup"
    )
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = t.add_argument_group("evaluation")
    g.add_argument(
        "--dev",
        default="dev",
        metavar="SPLIT|FILE|none",
        help="evaluated every --eval-every steps to keep the best model: STS-B split name or a scored-pairs file",
    )
    g.add_argument(
        "--eval-every",
        type=int,
        default=100,
        help="optimizer steps between evaluations/checkpoints",
    )
    g.add_argument(
        "--eval-first",
        action="store_true",
        help="also evaluate the starting model (step 0); it is kept if nothing beats it",
    )
    g.add_argument(
        "--test",
        nargs="*",
        metavar="SPLIT|FILE",
        help="after training, report the best model's Spearman on these (e.g. test)",
    )
    g = t.add_argument_group("objective")
    g.add_argument("--tau", type=float, default=0.05, help="SimCSE temperature")
    g.add_argument("--margin", type=float, default=1.0, help="triplet margin")
    g.add_argument("--cosent-lambda", type=float, default=20.0, help="CoSENT scale lambda")
    g.add_argument(
        "--score-scale",
        type=float,
        help="regression: gold / this is the target (default: max gold score)",
    )
    g.add_argument("--simbert-scale", type=float, default=30.0, help="SimBERT similarity scale")
    g.add_argument("--num-labels", type=int, default=3, help="softmax classes")
    t.set_defaults(func=cmd_teach)

    c = sub.add_parser(
        "textcnn", help="create a TextCNN encoder directory", formatter_class=_Formatter
    )
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--char-vocab",
        nargs="+",
        metavar="FILE",
        help="build a character vocabulary from the text columns of these files",
    )
    src.add_argument(
        "--teacher", metavar="DIR", help="use this teacher's tokenizer and word embeddings"
    )
    src.add_argument(
        "--tokenizer", metavar="DIR", help="use DIR/tokenizer.json with random embeddings"
    )
    c.add_argument("--out", required=True, metavar="DIR")
    c.add_argument("--overwrite", action="store_true")
    c.add_argument(
        "--embed-dim",
        type=int,
        default=300,
        help="embedding width (teacher: PCA-projected if smaller)",
    )
    c.add_argument("--kernel-sizes", default="1,2,3,4", help="comma-separated convolution widths")
    c.add_argument("--num-filters", type=int, default=256, help="filters per width")
    c.add_argument("--pooling", choices=["max", "mean", "max+mean"], default="max")
    c.add_argument("--out-dim", type=int, default=384)
    c.add_argument("--dropout", type=float, default=0.1)
    c.add_argument("--max-length", type=int, default=128)
    c.add_argument("--min-freq", type=int, default=1, help="character vocabulary: minimum count")
    c.add_argument("--seed", type=int, default=42)
    c.set_defaults(func=cmd_textcnn)

    w = sub.add_parser(
        "whiten",
        help="fit whitening on a corpus and save it with the model",
        formatter_class=_Formatter,
    )
    w.add_argument("--model", required=True, metavar="DIR")
    w.add_argument(
        "--corpus",
        required=True,
        nargs="+",
        metavar="FILE",
        help="sentences: the text columns of these files (never the evaluation test set)",
    )
    w.add_argument("--k", type=int, help="keep the first k dimensions (default: all)")
    w.add_argument("--out", required=True, metavar="DIR")
    w.add_argument("--overwrite", action="store_true")
    w.add_argument("--max-sentences", type=int)
    w.set_defaults(func=cmd_whiten)

    e = sub.add_parser(
        "evaluate", help="Spearman x 100 of a model on STS-B splits or scored-pair files"
    )
    e.add_argument("--model", required=True, metavar="DIR")
    e.add_argument("--data", nargs="+", default=["test"], metavar="SPLIT|FILE")
    e.add_argument("--batch-size", type=int, default=64)
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser(
        "shrink",
        help="distill a teacher into a small student and export it",
        formatter_class=_Formatter,
        description=(
            "Distill TEACHER (a sentence-transformers or Hugging Face encoder directory) into a student:\n"
            "  tinybert  the teacher's embeddings and --layers of its layers, evenly spaced (6 -> 3: 0, 2, 5)\n"
            "  textcnn   the teacher's tokenizer and word embeddings, convolutions of widths 1-3, max pooling\n"
            "The student learns the teacher's vectors of the shipped corpus (cached on disk). Writes\n"
            "OUT/train (best/, resumable last/, log.json, train.png), OUT/bundle-fp32 and OUT/bundle-int8."
        ),
    )
    s.add_argument("--teacher", required=True, metavar="DIR")
    s.add_argument("--student", choices=["tinybert", "textcnn"], default="tinybert")
    s.add_argument("--layers", type=int, default=3, help="tiny-BERT layers")
    s.add_argument(
        "--hidden-size", type=int, help="tiny-BERT width (smaller: random init + projection)"
    )
    s.add_argument(
        "--init",
        metavar="DIR",
        help="initialize the student from this model (embeddings, layers, tokenizer) instead of the teacher",
    )
    s.add_argument(
        "--head",
        choices=["projection", "pca"],
        default="projection",
        help="when student and teacher dimensions differ: a linear head to the teacher's dimension, "
        "or the teacher's vectors reduced by PCA to the student's",
    )
    s.add_argument("--loss", choices=["mse", "cosine", "similarity"], default="mse")
    s.add_argument(
        "--corpus", metavar="FILE", help="one sentence per line (default: the shipped corpus)"
    )
    s.add_argument("--max-sentences", type=int)
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--max-steps", type=int)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--lr", type=float, help="default 1e-4 (tiny-BERT), 2e-3 (TextCNN)")
    s.add_argument("--max-length", type=int, default=128)
    s.add_argument("--eval-every", type=int, default=250)
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--cache-dir", default=".cache/distill")
    s.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="compute the teacher vectors on Ray (fastemb[ray]): a local Ray, or the cluster at ADDRESS")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--resume", action="store_true")
    s.add_argument("--no-export", action="store_true")
    s.set_defaults(func=cmd_shrink)

    m = sub.add_parser(
        "main",
        help="the main job (what `python -m distill` runs)",
        formatter_class=_Formatter,
        description=__import__("distill.main_job", fromlist=["x"]).__doc__,
    )
    from distill.main_job import MainConfig

    m.add_argument("--out", default=MainConfig.out)
    m.add_argument("--tinybert-steps", type=int, default=MainConfig.tinybert_steps)
    m.add_argument("--textcnn-steps", type=int, default=MainConfig.textcnn_steps)
    m.add_argument("--rounds", type=int, default=MainConfig.rounds, help="interleaved speed rounds")
    m.add_argument(
        "--retrain", action="store_true", help="train the students again even if OUT has them"
    )
    m.set_defaults(func=cmd_main)
    return parser


def cmd_shrink(args: argparse.Namespace) -> int:
    from distill.shrink import ShrinkConfig, shrink

    fields = ShrinkConfig.__dataclass_fields__
    cfg = ShrinkConfig(
        **{k: v for k, v in vars(args).items() if k in fields and k != "export"},
        export=not args.no_export,
    )
    result = shrink(cfg)
    print(f"student: {result['model']}")
    return 0


def cmd_main(args: argparse.Namespace) -> int:
    from distill.main_job import MainConfig, run

    fields = MainConfig.__dataclass_fields__
    run(MainConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["main"]
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    return run_command(lambda: args.func(args), errors=CLI_ERRORS)


def _check_new_out(out: str, overwrite: bool, *sources: str | None) -> None:
    refuse_overwriting_source(out, *sources)
    p = Path(out)
    if p.exists() and any(p.iterdir()) and not overwrite:
        raise FileExistsError(f"output directory {p} exists; pass --overwrite to replace it")


def text_columns(paths: Sequence[str]) -> list[str]:
    """Every non-numeric TAB-separated column of every line (sentence files, pair files)."""
    out: list[str] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                for col in line.rstrip("\n").split("\t"):
                    col = col.strip()
                    if col and not _is_number(col):
                        out.append(col)
    if not out:
        raise ValueError(f"no sentences in {', '.join(paths)}")
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def cmd_teach(args: argparse.Namespace) -> int:
    import random

    from distill.data import read_examples
    from distill.evaluation import evaluator, load_scored, spearman_of
    from distill.model import load_encoder
    from distill.objectives import objective_class
    from distill.trainer import TrainConfig, train

    config = TrainConfig(
        out_dir=args.out,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm,
        eval_every=args.eval_every,
        eval_first=args.eval_first,
        seed=args.seed,
        amp=not args.no_amp,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        resume=args.resume,
    )
    _check_teach_numbers(args)
    refuse_overwriting_source(args.out, args.model, args.train)
    cls = objective_class(args.objective)
    examples = read_examples(args.train, cls.data_format)
    if args.max_examples and args.max_examples < len(examples):
        examples = random.Random(args.seed).sample(examples, args.max_examples)
    knobs = {kw: getattr(args, flag) for kw, flag in OBJECTIVE_KNOBS.items()}
    if args.objective in SCALE_FLAG:
        knobs["scale"] = getattr(args, SCALE_FLAG[args.objective])
    if knobs["score_scale"] is None:
        knobs["score_scale"] = (
            max(float(ex.label) for ex in examples) if cls.label_dtype is not None else 1.0
        )
    if hasattr(cls, "from_pretrained"):  # objectives that build their own model (SimBERT)
        params = inspect.signature(cls.from_pretrained).parameters
        kwargs = {k: v for k, v in knobs.items() if k in params}
        if "max_length" in params:
            kwargs["max_length"] = args.max_length
        objective = cls.from_pretrained(args.model, **kwargs)
    else:
        enc_kwargs = {"max_length": args.max_length}
        if args.pooling:
            enc_kwargs["pooling"] = args.pooling
        if args.normalize:
            enc_kwargs["normalize"] = args.normalize == "yes"
        encoder = load_encoder(args.model, **enc_kwargs)
        if hasattr(encoder, "config") and getattr(encoder.config, "model_type", "") == "textcnn":
            encoder.config.max_length = args.max_length
        params = inspect.signature(cls).parameters
        objective = cls(encoder, **{k: v for k, v in knobs.items() if k in params})
    evaluate = None if args.dev == "none" else evaluator(args.dev)
    lengths = [sum(len(t) for t in ex.texts) for ex in examples] if args.group_by_length else None
    summary = train(objective, examples, config, evaluate, lengths=lengths)
    best = (
        f"best dev {summary['best']:.2f} at step {summary['best_step']}"
        if summary["best_step"] is not None
        else "no dev evaluation (final weights kept)"
    )
    print(
        f"trained {summary['steps']} steps in {summary['seconds']} s; {best}; model: {Path(args.out) / 'best'}"
    )
    if args.test:
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            best = load_encoder(Path(args.out) / "best")
            for name in args.test:
                print(f"{name}: Spearman {spearman_of(best, load_scored(name)):.2f}")
    return 0


def _check_teach_numbers(args: argparse.Namespace) -> None:
    integer("--max-length", args.max_length, 2)
    integer("--max-examples", args.max_examples, 1, optional=True)
    number("--tau", args.tau, above=0.0)
    number("--margin", args.margin, min=0.0)
    number("--cosent-lambda", args.cosent_lambda, above=0.0)
    number("--score-scale", args.score_scale, above=0.0, optional=True)
    number("--simbert-scale", args.simbert_scale, above=0.0)
    integer("--num-labels", args.num_labels, 2)


def _kernel_sizes(text: str) -> list[int]:
    try:
        sizes = [int(k) for k in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--kernel-sizes must be comma-separated integers >= 1, got {text!r}")
    return sizes


def cmd_textcnn(args: argparse.Namespace) -> int:
    for flag in ("embed_dim", "num_filters", "out_dim", "max_length", "min_freq"):
        integer(f"--{flag.replace('_', '-')}", getattr(args, flag), 1)
    integer("--seed", args.seed, 0)
    number("--dropout", args.dropout, min=0.0, max=0.99)
    kernel_sizes = _kernel_sizes(args.kernel_sizes)
    _check_new_out(args.out, args.overwrite, args.teacher, args.tokenizer, *(args.char_vocab or []))
    import torch

    from distill.textcnn import TextCNN

    torch.manual_seed(args.seed)
    config = {
        "kernel_sizes": kernel_sizes,
        "num_filters": args.num_filters,
        "pooling": args.pooling,
        "out_dim": args.out_dim,
        "dropout": args.dropout,
        "max_length": args.max_length,
    }
    if args.teacher:
        model = TextCNN.from_teacher(args.teacher, embed_dim=args.embed_dim, **config)
    elif args.tokenizer:
        model = TextCNN.with_tokenizer(
            Path(args.tokenizer) / "tokenizer.json", embed_dim=args.embed_dim, **config
        )
    else:
        model = TextCNN.with_char_vocab(
            text_columns(args.char_vocab),
            min_freq=args.min_freq,
            embed_dim=args.embed_dim,
            **config,
        )
    model.save(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"TextCNN: vocab {model.config.vocab_size}, {n / 1e6:.2f} M parameters -> {args.out}")
    return 0


def cmd_whiten(args: argparse.Namespace) -> int:
    import random

    from distill.model import SentenceEncoder
    from distill.whitening import whiten

    integer("--k", args.k, 1, optional=True)
    integer("--max-sentences", args.max_sentences, 1, optional=True)
    _check_new_out(args.out, args.overwrite, args.model, *args.corpus)
    sentences = list(dict.fromkeys(text_columns(args.corpus)))
    if args.max_sentences and args.max_sentences < len(sentences):
        sentences = random.Random(0).sample(sentences, args.max_sentences)
    encoder = whiten(SentenceEncoder.from_pretrained(args.model), sentences, k=args.k)
    encoder.save(args.out)
    print(f"whitening fitted on {len(sentences)} sentences, dim {encoder.dim} -> {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from distill.evaluation import load_scored, spearman_of
    from distill.model import load_encoder

    integer("--batch-size", args.batch_size, 1)
    encoder = load_encoder(args.model)
    for name in args.data:
        print(f"{name}: Spearman {spearman_of(encoder, load_scored(name), args.batch_size):.2f}")
    return 0

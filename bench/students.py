"""Students against their teacher: STS-B test Spearman and CPU sentences/s, one table and a plot.

Runs the main job (``python -m distill``: trains the students unless ``--out`` already holds them,
exports, measures every engine in interleaved rounds) and writes ``bench/results/students.md`` and
``bench/results/students-tradeoff.png``.

    python bench/students.py [--out .cache/distill/main] [--rounds 3] [--retrain] [--tinybert-steps N] [--textcnn-steps N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, table, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".cache/distill/main")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--retrain", action="store_true")
    from distill.main_job import MainConfig

    ap.add_argument("--tinybert-steps", type=int, default=MainConfig.tinybert_steps)
    ap.add_argument("--textcnn-steps", type=int, default=MainConfig.textcnn_steps)
    args = ap.parse_args()
    from distill.main_job import MainConfig, run

    result = run(MainConfig(out=args.out, rounds=args.rounds, retrain=args.retrain,
                            tinybert_steps=args.tinybert_steps, textcnn_steps=args.textcnn_steps))
    out = Path(result["out"])
    rows = result["rows"]
    body = table(["model", "STS-B test", "sentences/s", "vs ST teacher", "dim"],
                 [[r["model"], f"{r['stsb_test']:.2f}", f"{r['sentences_per_s']:.0f}", f"{r['vs_st']:.2f}x", r["dim"]]
                  for r in rows])
    report = json.loads((out / "report.json").read_text())
    training = [f"- main job: {report['total_seconds']:.0f} s end to end; training (with teacher vectors and exports): "
                + (", ".join(f"{k} {v:.0f} s" for k, v in report["train_seconds"].items()) or "students reused")]
    for name in ("tinybert-l3", "textcnn"):
        log = out / name / "train" / "log.json"
        if log.is_file():
            evals = [r for r in json.loads(log.read_text())["records"] if "eval" in r]
            training.append(f"- {name}: STS-B dev during training " + ", ".join(f"step {r['step']}: {r['eval']:.2f}" for r in evals))
    body += ("\n\nSTS-B test: 2,758 sentences, Spearman x 100 of cosine; speed: the same sentences, batch 32, "
             f"best of {args.rounds} interleaved rounds, each engine in its own process, CPU.\n\n" + "\n".join(training) +
             "\n\n![quality vs speed](students-tradeoff.png)")
    shutil.copyfile(out / "tradeoff.png", RESULTS / "students-tradeoff.png")
    write_result("students", "Students of all-MiniLM-L6-v2: quality and speed", body, {r["model"]: r for r in rows})


if __name__ == "__main__":
    main()

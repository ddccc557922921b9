"""The TextCNN student against Model2Vec distilled from the same teacher, and the folded export
against the plain convolutional one.

STS-B test (2,758 sentences): Spearman x 100 and sentences/s, every engine in its own process, in
interleaved rounds (``distill.timing.time_engines``). Engines:
- the main job's TextCNN student (``python -m distill``) as bundles: folded fp32 and int8 (what
  ``fastemb export`` writes) and unfolded fp32 (the same model with Embedding + Conv in the graph);
- Model2Vec distilled here from the same all-MiniLM-L6-v2 (``model2vec.distill``, 256 PCA dims,
  its defaults), at batch 32 and at its own default batch (1024).

    python bench/textcnn.py [--student .cache/distill/main/textcnn/train/best] [--rounds 3]

Model2Vec's distillation needs skeletoken, which the ``bench`` extra installs (model2vec's own
``distill`` extra would also pin an older transformers; skeletoken alone works with ours).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result  # noqa: E402


def unfolded_bundle(student: Path, folded: Path, out: Path) -> Path:
    """``folded``'s bundle with its graph replaced by the plain Embedding + Conv export."""
    from fastemb.bundle import Bundle, write_manifest
    from fastemb.export import onnx_graph
    from fastemb.export.source import load_source

    source = load_source(student)
    source.graph_module = None  # export the TextCNN as it is, not folded
    manifest = Bundle(folded).manifest
    manifest.source = {**manifest.source, "folded": False}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copyfile(folded / "tokenizer.json", out / "tokenizer.json")
    onnx_graph.export_onnx(source, out / "model.onnx")
    write_manifest(out, manifest)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default=".cache/distill/main/textcnn/train/best",
                    help="a distill TextCNN directory (the main job's, by default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default=".cache/bench/textcnn", help="where bundles and Model2Vec go")
    args = ap.parse_args()

    from distill.main_job import default_teacher
    from distill.sts import cosine_rows, evaluate_vectors, load_stsb, sts_unique_sentences
    from distill.timing import time_engines
    from fastemb.export import export

    student, work = Path(args.student), Path(args.work)
    if not (student / "config.json").is_file():
        raise SystemExit(f"{student}: no TextCNN there; run `python -m distill` first or pass --student")
    bundles = {p: work / f"folded-{p}" for p in ("fp32", "int8")}
    for p, path in bundles.items():
        export(student, path, quantize="int8" if p == "int8" else None, overwrite=True)
    unfolded = unfolded_bundle(student, bundles["fp32"], work / "unfolded-fp32")
    m2v = work / "model2vec"
    if not (m2v / "config.json").is_file():
        try:
            from model2vec.distill import distill
        except ImportError as e:
            raise SystemExit(f"Model2Vec distillation is not importable ({e}): pip install skeletoken") from None
        distill(model_name=str(default_teacher()), pca_dims=256).save_pretrained(str(m2v))

    engines = {
        "TextCNN folded fp32 (fastemb)": ("bundle", str(bundles["fp32"])),
        "TextCNN folded int8 (fastemb)": ("bundle", str(bundles["int8"])),
        "TextCNN unfolded fp32 (Embedding + Conv)": ("bundle", str(unfolded)),
        "Model2Vec (batch 32)": ("model2vec", str(m2v)),
        "Model2Vec (batch 1024, its default)": ("model2vec", str(m2v), 1024),
        "TextCNN folded fp32 (batch 1024)": ("bundle", str(bundles["fp32"]), 1024),
    }
    pairs = load_stsb("test")
    texts = sts_unique_sentences(pairs)
    best, vectors = time_engines(engines, texts, args.rounds, batch_size=32)
    m2v_rate = best["Model2Vec (batch 1024, its default)"]
    ref = vectors["TextCNN unfolded fp32 (Embedding + Conv)"]
    rows, summary = [], {}
    for name in engines:
        sp = evaluate_vectors(pairs, vectors[name])
        same = float(cosine_rows(vectors[name], ref).min()) if "TextCNN" in name else None
        rows.append([name, f"{sp:.2f}", f"{best[name]:.0f}", f"{best[name] / m2v_rate:.2f}x",
                     "" if same is None else f"{same:.5f}"])
        summary[name] = {"stsb_test": round(sp, 3), "sentences_per_s": round(best[name], 1),
                         "vs_model2vec": round(best[name] / m2v_rate, 3), "min_cos_to_unfolded": same}
    sizes = {name: sum(f.stat().st_size for f in Path(engines[name][1]).iterdir()) / 2**20 for name in
             ("TextCNN folded fp32 (fastemb)", "TextCNN folded int8 (fastemb)", "TextCNN unfolded fp32 (Embedding + Conv)",
              "Model2Vec (batch 32)")}
    body = table(["engine", "STS-B test", "sentences/s", "vs Model2Vec (its default)", "min cos to unfolded"], rows)
    body += (f"\n\n{len(texts)} sentences (STS-B test), batch 32 unless the row says otherwise, best of "
             f"{args.rounds} interleaved rounds, each engine in its own process, CPU.\n\nOn disk: "
             + ", ".join(f"{k.split(' (')[0]} {v:.0f} MiB" for k, v in sizes.items())
             + f".\n\nStudent: `{student}`.")
    write_result("textcnn", "TextCNN student vs Model2Vec, folded vs unfolded export", body, summary)


if __name__ == "__main__":
    main()

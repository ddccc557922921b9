"""bench/gpu.py's measuring and reporting code, with a stand-in backend, so a GPU session does not
spend its minutes on a formatting bug."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_measure_and_report_with_a_stand_in_backend() -> None:
    g = _bench()
    inputs = ["input_ids", "attention_mask", "token_type_ids"]

    def run(feed):
        return np.ones((len(feed["input_ids"]), 4), dtype=np.float32) / 2

    feed = g.synthetic(2, 16, inputs)
    assert feed["input_ids"].shape == (2, 16) and (feed["input_ids"][:, 0] == 101).all()
    assert len(g.latency_ms(run, g.synthetic(1, 16, inputs), 5)) == 5
    assert g.throughput(run, feed, 0.01) > 0
    lat = {n: {s: [0.5, 0.6, 0.7] for s in g.LATENCY_SEQS} for n in ("torch fp32 eager", "torch fp16 + fused + graphs")}
    thr = {"torch fp32 eager": {(b, s): 100.0 for b in g.BATCHES for s in g.SEQS},
           "torch fp16 + fused + graphs": {(b, s): 400.0 for b in g.BATCHES for s in g.SEQS}}
    cos = {"torch fp32 eager": 1.0, "torch fp16 + fused + graphs": 0.9995}
    kernel = [{"batch": 128, "seq": 128, "torch_us": 50.0, "fused_us": 10.0, "max_abs_diff": 1e-7}]
    info = {"why": {"tensorrt": "not importable"}, "gpu": "Fake GPU"}
    body, summary = g.report(info, {"TensorRT plan": "not importable"}, lat, thr, cos, kernel, quick=False)
    assert "4.00x" in body and "5.0x" in body and "0.999500" in body
    assert summary["measured"] and summary["targets"] and all(v == "yes" for v in summary["targets"].values())
    body, summary = g.report(info, {n: "no GPU" for n in g.BACKENDS}, {}, {}, {}, [], quick=False)
    assert "No GPU numbers were measured" in body and not summary["measured"]


def test_real_feeds_tokenize_the_check_sentences() -> None:
    from conftest import minilm_dir

    g = _bench()
    feeds = g.real_feeds(minilm_dir(), ["input_ids", "attention_mask"])
    from fastemb.export.check import check_texts

    assert sum(len(f["input_ids"]) for f in feeds) == len(check_texts()) + 8
    assert max(f["input_ids"].shape[1] for f in feeds) == 256  # truncated at MiniLM's max_length

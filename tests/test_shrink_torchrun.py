"""The documented multi-process recipe: ``torchrun --nproc_per_node 2 -m distill shrink ...`` (gloo).

Both ranks end with equal weights and equal teacher vectors, rank 0 alone computes the teacher
vectors (the other receives them), and the run leaves one set of outputs and one cache entry."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tests.conftest import make_tiny_st

ROOT = Path(__file__).resolve().parents[1]

# shrink under torchrun, with train() wrapped to save what each rank ends with
SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    from safetensors.torch import save_file
    import distill.trainer as trainer
    from distill.cli import main

    real_train = trainer.train

    def train(objective, examples, config, *args, **kwargs):
        summary = real_train(objective, examples, config, *args, **kwargs)
        state = {k: v.contiguous() for k, v in objective.encoder.state_dict().items()}
        state["teacher_vectors"] = torch.from_numpy(objective.teacher_vectors)
        save_file(state, os.path.join(sys.argv[1], "rank" + os.environ["RANK"] + ".safetensors"))
        return summary

    trainer.train = train
    sys.exit(main(sys.argv[2:]))
""")

SENTENCES = ["A man is playing a guitar.", "A woman slices an onion.", "The cat sits on the mat.",
             "Two dogs run through a field.", "A child rides a bike.", "The sun sets over the sea.",
             "Someone is cooking pasta.", "A plane is taking off."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shrink_under_torchrun_two_ranks(tmp_path: Path) -> None:
    teacher = make_tiny_st(tmp_path / "teacher")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{s} ({i})\n" for i in range(10) for s in SENTENCES))
    script = tmp_path / "shrink_ddp.py"
    script.write_text(SCRIPT)
    ranks, out, cache = tmp_path / "ranks", tmp_path / "student", tmp_path / "cache"
    ranks.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(script), str(ranks),
           "shrink", "--teacher", str(teacher), "--layers", "1", "--corpus", str(corpus), "--batch-size", "4",
           "--max-steps", "4", "--eval-every", "2", "--lr", "1e-3", "--cache-dir", str(cache), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    r0, r1 = load_file(ranks / "rank0.safetensors"), load_file(ranks / "rank1.safetensors")
    assert r0.keys() == r1.keys()
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "the ranks' weights differ"
    teacher_words = load_file(teacher / "model.safetensors")["embeddings.word_embeddings.weight"]
    assert not torch.equal(r0["backbone.embeddings.word_embeddings.weight"], teacher_words), "nothing trained"

    # rank 0 computed the teacher vectors once and cached them; rank 1 received the same array
    assert log.count("teacher vectors: 80 of 80 sentences") == 1, log[-4000:]
    (npy,) = (cache / "vectors").glob("*.npy")
    # the array, its sidecar and the writers' lock file: no partial file left
    assert sorted(p.suffix for p in (cache / "vectors").iterdir()) == [".json", ".lock", ".npy"]
    cached = np.load(npy)
    assert cached.shape == (80, 32)
    np.testing.assert_array_equal(r0["teacher_vectors"].numpy(), cached)
    np.testing.assert_array_equal(r1["teacher_vectors"].numpy(), cached)

    # one set of outputs, written by rank 0
    assert sorted(p.name for p in out.iterdir()) == ["bundle-fp32", "bundle-int8", "shrink.json", "train"]
    assert sorted(p.name for p in (out / "train").iterdir()) == ["best", "last", "log.json", "train.png"]
    assert json.loads((out / "train" / "log.json").read_text())["world_size"] == 2
    assert len(list((cache / "teachers").iterdir())) == 1
    from fastemb import Encoder

    assert Encoder(out / "bundle-fp32").encode(SENTENCES).shape == (8, 32)

"""The trainer: exact CPU repeat with a seed, exact resume, best checkpoint + log + plot, errors,
and two torchrun processes (gloo) that end with equal weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _distill_tiny import SENTENCES, tiny_bert_dir
from safetensors.torch import load_file

from distill.model import SentenceEncoder
from distill.objectives.base import Example
from distill.objectives.simcse import SimCSEUnsupLoss
from distill.trainer import TrainConfig, lr_at, train

EXAMPLES = [Example((s,)) for s in SENTENCES * 2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory.mktemp("tiny"))


def run(tiny_dir, out, evaluate=None, **kw):
    objective = SimCSEUnsupLoss(SentenceEncoder.from_pretrained(tiny_dir, max_length=16))
    cfg = dict(
        out_dir=str(out),
        batch_size=4,
        max_steps=6,
        lr=1e-3,
        eval_every=3,
        log_every=1,
        progress=False,
    )
    cfg.update(kw)
    summary = train(objective, EXAMPLES, TrainConfig(**cfg), evaluate)
    return objective, summary


def weights(objective):
    return {k: v.clone() for k, v in objective.state_dict().items()}


def test_lr_schedule():
    assert [round(lr_at(s, 10, 2, 1.0), 3) for s in range(10)] == [
        0.5,
        1.0,
        1.0,
        0.875,
        0.75,
        0.625,
        0.5,
        0.375,
        0.25,
        0.125,
    ]


def test_same_seed_repeats_exactly(tiny_dir, tmp_path):
    a, _ = run(tiny_dir, tmp_path / "a", grad_accum=2)
    b, _ = run(tiny_dir, tmp_path / "b", grad_accum=2)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c, _ = run(tiny_dir, tmp_path / "c", seed=7, grad_accum=2)
    assert not all(torch.equal(wa[k], v) for k, v in weights(c).items())


def test_resume_from_a_middle_checkpoint_is_exact(tiny_dir, tmp_path, monkeypatch):
    full, _ = run(tiny_dir, tmp_path / "full")
    import distill.trainer as trainer

    real_save = trainer._save_checkpoint

    def save_then_interrupt(path, objective, optimizer, scaler, state, config, rank, world):
        real_save(path, objective, optimizer, scaler, state, config, rank, world)
        if state["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_dir, tmp_path / "cut")
    monkeypatch.setattr(trainer, "_save_checkpoint", real_save)
    assert json.loads((tmp_path / "cut" / "last" / "state.json").read_text())["step"] == 3
    resumed, summary = run(tiny_dir, tmp_path / "cut", resume=True)
    assert summary["steps"] == 6
    wf, wr = weights(full), weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)


def test_best_checkpoint_log_and_plot(tiny_dir, tmp_path):
    scores = iter([5.0, 3.0])
    _, summary = run(tiny_dir, tmp_path / "o", evaluate=lambda enc: next(scores))
    assert (summary["best"], summary["best_step"]) == (5.0, 3)
    out = tmp_path / "o"
    log = json.loads((out / "log.json").read_text())
    assert [r["eval"] for r in log["records"] if "eval" in r] == [5.0, 3.0]
    assert sum("loss" in r for r in log["records"]) == 6
    assert (out / "train.png").stat().st_size > 1000
    assert (out / "best" / "modules.json").is_file() and (
        out / "last" / "objective.safetensors"
    ).is_file()
    SentenceEncoder.from_pretrained(out / "best")


def test_refuses_existing_out_dir_and_small_batches(tiny_dir, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run(tiny_dir, tmp_path / "x")
    with pytest.raises(ValueError, match="at least 2"):
        run(tiny_dir, tmp_path / "y", batch_size=1)
    run(tiny_dir, tmp_path / "x", overwrite=True, max_steps=1)
    assert not (tmp_path / "x" / "keep").exists()


DDP_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[2])
    import torch
    from safetensors.torch import save_file
    from _distill_tiny import SENTENCES
    from distill.model import SentenceEncoder
    from distill.objectives.base import Example
    from distill.objectives.simcse import SimCSEUnsupLoss
    from distill.trainer import TrainConfig, train

    obj = SimCSEUnsupLoss(SentenceEncoder.from_pretrained(sys.argv[1], max_length=16))
    out = sys.argv[3]
    train(obj, [Example((s,)) for s in SENTENCES * 2],
          TrainConfig(out_dir=out, batch_size=3, max_steps=3, lr=1e-3, eval_every=2, progress=False))
    rank = os.environ["RANK"]
    save_file({k: v.contiguous() for k, v in obj.state_dict().items()}, os.path.join(out, f"rank{rank}.safetensors"))
    torch.distributed.destroy_process_group()
""")


def test_torchrun_two_processes_end_with_equal_weights(tiny_dir, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29531",
        str(script),
        str(tiny_dir),
        str(Path(__file__).parent),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    start = SentenceEncoder.from_pretrained(tiny_dir).state_dict()
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert not torch.equal(
        r0["encoder.backbone.embeddings.word_embeddings.weight"],
        start["backbone.embeddings.word_embeddings.weight"],
    )
    assert json.loads((out / "last" / "state.json").read_text())["world_size"] == 2


def test_eval_first_can_keep_the_starting_model(tiny_dir, tmp_path):
    scores = iter([9.0, 5.0, 3.0])
    _, summary = run(tiny_dir, tmp_path / "o", evaluate=lambda enc: next(scores), eval_first=True)
    assert (summary["best"], summary["best_step"]) == (9.0, 0)
    start = SentenceEncoder.from_pretrained(tiny_dir).state_dict()
    best = SentenceEncoder.from_pretrained(tmp_path / "o" / "best").state_dict()
    assert all(torch.equal(start[k], best[k]) for k in start)


def test_length_grouped_order_is_a_seeded_permutation_of_similar_length_batches():
    from distill.trainer import TrainConfig, _epoch_order

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=1000).tolist()
    cfg = TrainConfig(out_dir="unused", batch_size=8, grad_accum=2, group_chunk=10)
    steps = 1000 // 16
    order = _epoch_order(1000, 0, 42, steps, cfg, 1, lengths)
    assert order.shape == (steps, 2, 1, 8)
    flat = order.reshape(-1).tolist()
    assert len(set(flat)) == len(flat) == steps * 16  # each example at most once
    assert torch.equal(order, _epoch_order(1000, 0, 42, steps, cfg, 1, lengths))  # resume-exact
    assert not torch.equal(order, _epoch_order(1000, 1, 42, steps, cfg, 1, lengths))
    spread = lambda o: np.mean([np.ptp([lengths[i] for i in b]) for b in o.reshape(-1, 8).tolist()])  # noqa: E731
    plain = _epoch_order(1000, 0, 42, steps, cfg, 1)
    assert spread(order) < 0.25 * spread(plain), (spread(order), spread(plain))
    # batches are not sorted end to end: the first batches are not all the shortest
    firsts = [min(lengths[i] for i in b) for b in order.reshape(-1, 8).tolist()[:10]]
    assert max(firsts) > 20


def test_lengths_must_match_examples(tmp_path):
    from distill.trainer import TrainConfig, train

    with pytest.raises(ValueError, match="lengths has 2 entries for 3 examples"):
        train(None, [None] * 3, TrainConfig(out_dir=str(tmp_path)), lengths=[1, 2])

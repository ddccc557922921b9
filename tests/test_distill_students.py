"""Students: layer selection, distillation losses, training lowers the loss, bundles match torch,
the teacher-vector cache, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill.objectives.base import Example
from distill.objectives.distillation import DistillationLoss, distillation_loss
from distill.students import (
    evenly_spaced_layers,
    read_corpus,
    teacher_vectors,
    tinybert_from_teacher,
)
from tests.conftest import make_tiny_bert, make_tiny_st

SENTENCES = ["A man is playing a guitar.", "A woman slices an onion.", "The cat sits on the mat.",
             "Two dogs run through a field.", "A child rides a bike.", "The sun sets over the sea.",
             "Someone is cooking pasta.", "A plane is taking off."]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory):
    from distill.model import SentenceEncoder

    path = tmp_path_factory.mktemp("teacher") / "t"
    make_tiny_bert(path, layers=4)
    return SentenceEncoder.from_pretrained(path, normalize=True, max_length=64)


def test_evenly_spaced_layers() -> None:
    assert evenly_spaced_layers(6, 3) == [0, 2, 5]
    assert evenly_spaced_layers(6, 2) == [0, 5]
    assert evenly_spaced_layers(6, 1) == [5]
    assert evenly_spaced_layers(12, 4) == [0, 4, 7, 11]
    assert evenly_spaced_layers(6, 6) == list(range(6))
    with pytest.raises(ValueError, match="larger than its 6-layer teacher"):
        evenly_spaced_layers(6, 7)
    with pytest.raises(ValueError, match="at least 1 layer"):
        evenly_spaced_layers(6, 0)


def test_tinybert_takes_the_layers_it_says(teacher) -> None:
    student = tinybert_from_teacher(teacher, layers=2)
    t_layers, s_layers = teacher.backbone.encoder.layer, student.backbone.encoder.layer
    assert len(s_layers) == 2 and student.backbone.config.num_hidden_layers == 2
    for s_idx, t_idx in enumerate([0, 3]):
        for (name, p), (_, q) in zip(s_layers[s_idx].named_parameters(), t_layers[t_idx].named_parameters(), strict=True):
            assert torch.equal(p, q), name
    assert torch.equal(student.backbone.embeddings.word_embeddings.weight,
                       teacher.backbone.embeddings.word_embeddings.weight)
    # a copy, not a view: training the student leaves the teacher alone
    with torch.no_grad():
        s_layers[0].output.dense.weight.add_(1.0)
    assert not torch.equal(s_layers[0].output.dense.weight, t_layers[0].output.dense.weight)


def test_narrow_tinybert_projects_to_teacher_dim(teacher) -> None:
    student = tinybert_from_teacher(teacher, layers=1, hidden_size=16)
    assert student.backbone.config.hidden_size == 16 and student.dim == teacher.dim
    assert student(**student.tokenize(SENTENCES[:2])).shape == (2, teacher.dim)
    with pytest.raises(ValueError, match="larger than the teacher"):
        tinybert_from_teacher(teacher, layers=1, hidden_size=64)


def test_distillation_losses_match_direct_computation() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    mse = sum(float(((s[i] - t[i]) ** 2).sum()) for i in range(5)) / 5
    cos = sum(1 - float(s[i] @ t[i] / (s[i].norm() * t[i].norm())) for i in range(5)) / 5
    sn, tn = s / s.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    sim = float(((sn @ sn.T - tn @ tn.T) ** 2).mean())
    assert distillation_loss(s, t, "mse").item() == pytest.approx(mse, rel=1e-5)
    assert distillation_loss(s, t, "cosine").item() == pytest.approx(cos, rel=1e-5)
    assert distillation_loss(s, t, "similarity").item() == pytest.approx(sim, rel=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_loss(s, t[:, :3], "mse")
    with pytest.raises(ValueError, match="unknown distillation loss"):
        DistillationLoss(torch.nn.Linear(2, 2), np.zeros((1, 2)), "kl")  # type: ignore[arg-type]


def test_a_few_steps_of_distillation_lower_the_loss(teacher, tmp_path: Path) -> None:
    from distill.trainer import TrainConfig, train

    targets = teacher.encode(SENTENCES)
    student = tinybert_from_teacher(teacher, layers=1, hidden_size=16)  # random init: far from the teacher
    objective = DistillationLoss(student, targets, "mse")
    batch = objective.collate([Example((s,), i) for i, s in enumerate(SENTENCES)])
    student.eval()
    with torch.no_grad():
        before = objective.loss(batch).item()
    train(objective, [Example((s,), i) for i, s in enumerate(SENTENCES)],
          TrainConfig(out_dir=str(tmp_path / "run"), max_steps=30, batch_size=4, lr=1e-3, eval_every=0,
                      progress=False, warmup_ratio=0.0))
    student.eval()
    with torch.no_grad():
        after = objective.loss(batch).item()
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("kind", ["tinybert", "textcnn"])
def test_student_bundle_matches_student_in_torch(kind: str, teacher, tmp_path: Path) -> None:
    from distill.students import textcnn_from_teacher
    from fastemb import Encoder
    from fastemb.export import export

    if kind == "tinybert":
        student = tinybert_from_teacher(teacher, layers=2)
    else:
        src = make_tiny_bert(tmp_path / "t")
        student = textcnn_from_teacher(src, out_dim=24, embed_dim=16, num_filters=8, max_length=64)
    student.eval()
    student.save(tmp_path / "student")
    out = export(tmp_path / "student", tmp_path / "bundle", log=None)
    encoder = Encoder(out)
    got = encoder.encode(SENTENCES)
    from fastemb.backends.ort import physical_cores

    # a TextCNN leaves half the cores to the tokenizer; a transformer takes them all
    assert encoder.backend.threads == (max(1, physical_cores() // 2) if kind == "textcnn" else physical_cores())
    assert Encoder(out, threads=3).backend.threads == 3
    ref = student.encode(SENTENCES)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (got * ref).sum(1)
    assert cos.min() >= 0.9999, cos


def test_teacher_vector_cache_hits_and_rebuilds(tiny_bundle: Path, tmp_path: Path) -> None:
    logs: list[str] = []
    first = np.array(teacher_vectors(tiny_bundle, SENTENCES, tmp_path, log=logs.append))  # a copy: the cache is a memory map
    assert first.shape == (len(SENTENCES), 32)
    again = teacher_vectors(tiny_bundle, SENTENCES, tmp_path, log=logs.append)
    assert "cache hit" in logs[-1]
    np.testing.assert_array_equal(first, again)
    (npy,) = tmp_path.glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:-40])  # truncated
    rebuilt = teacher_vectors(tiny_bundle, SENTENCES, tmp_path, log=logs.append)
    assert any("corrupt" in m for m in logs)
    np.testing.assert_allclose(rebuilt, first, atol=1e-6)
    other = teacher_vectors(tiny_bundle, SENTENCES[:3], tmp_path, log=logs.append)  # another corpus: another key
    assert other.shape == (3, 32) and len(list(tmp_path.glob("*.npy"))) == 2


def test_bad_input(tmp_path: Path) -> None:
    from distill.shrink import ShrinkConfig, shrink

    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="corpus is empty"):
        read_corpus(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="teacher directory not found"):
        shrink(ShrinkConfig(teacher=str(tmp_path / "nope"), out=str(tmp_path / "o")))
    (tmp_path / "notmodel").mkdir()
    with pytest.raises(ValueError, match="not a supported teacher"):
        shrink(ShrinkConfig(teacher=str(tmp_path / "notmodel"), out=str(tmp_path / "o")))
    st = make_tiny_st(tmp_path / "st")
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "f").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        shrink(ShrinkConfig(teacher=str(st), out=str(tmp_path / "exists")))
    with pytest.raises(ValueError, match="larger than its 2-layer teacher"):
        shrink(ShrinkConfig(teacher=str(st), out=str(tmp_path / "o"), layers=3))
    with pytest.raises(ValueError, match="unknown student"):
        shrink(ShrinkConfig(teacher=str(st), out=str(tmp_path / "o"), student="lstm"))  # type: ignore[arg-type]


def test_textcnn_int8_bundle_stores_its_table_as_int8_rows(tmp_path: Path) -> None:
    import onnx

    from distill.students import textcnn_from_teacher
    from fastemb import Encoder
    from fastemb.export import export

    student = textcnn_from_teacher(make_tiny_bert(tmp_path / "t"), out_dim=24, embed_dim=16, num_filters=8,
                                   max_length=64).eval()
    student.save(tmp_path / "student")
    fp32 = export(tmp_path / "student", tmp_path / "fp32", log=None)
    int8 = export(tmp_path / "student", tmp_path / "int8", quantize="int8", check=False, log=None)
    tables = {i.name: i for i in onnx.load(str(int8 / "model.onnx")).graph.initializer if len(i.dims) == 2
              and i.dims[0] > 1000 and i.dims[1] > 1}
    assert [t.data_type for t in tables.values()] == [onnx.TensorProto.INT8], tables.keys()
    assert (int8 / "model.onnx").stat().st_size < 0.4 * (fp32 / "model.onnx").stat().st_size
    ref = student.encode(SENTENCES)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert ((Encoder(int8).encode(SENTENCES) * ref).sum(1)).min() >= 0.999


def test_ctrl_c_during_shrink_leaves_a_resumable_checkpoint_and_no_bundle(tmp_path: Path) -> None:
    import json
    import signal
    import subprocess
    import sys
    import time

    teacher = make_tiny_st(tmp_path / "st")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{s} ({i})" for i in range(40) for s in SENTENCES) + "\n")
    out = tmp_path / "student"
    base = [sys.executable, "-m", "distill", "shrink", "--teacher", str(teacher), "--layers", "1",
            "--corpus", str(corpus), "--batch-size", "8", "--eval-every", "2", "--cache-dir",
            str(tmp_path / "cache"), "--out", str(out)]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([*base, "--max-steps", "100000"], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    state = out / "train" / "last" / "state.json"
    deadline = time.time() + 240
    while not state.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert state.is_file(), proc.communicate()[0] if proc.poll() is not None else "no checkpoint in 240 s"
    time.sleep(0.5)  # inside the training loop, wherever it is
    proc.send_signal(signal.SIGINT)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log
    assert "interrupted at step" in log
    assert not list(out.glob("bundle-*")), "an interrupted shrink must not leave bundles"
    step = json.loads(state.read_text())["step"]
    assert step >= 2
    done = subprocess.run([*base, "--resume", "--max-steps", str(step + 2)], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(state.read_text())["step"] == step + 2
    for precision in ("fp32", "int8"):
        assert (out / f"bundle-{precision}" / "fastemb.json").is_file()


def test_time_engines_runs_each_engine_in_its_own_process(tmp_path: Path) -> None:
    from distill.timing import time_engines
    from fastemb.export import export

    st = make_tiny_st(tmp_path / "st")
    bundle = export(st, tmp_path / "bundle", log=None)
    specs = {"torch": ("sentence-transformers", str(st)), "onnx": ("bundle", str(bundle))}
    messages: list[str] = []
    best, vectors = time_engines(specs, SENTENCES * 4, rounds=2, batch_size=4, log=messages.append)
    assert set(best) == set(vectors) == {"torch", "onnx"} and min(best.values()) > 0
    assert vectors["onnx"].shape == (len(SENTENCES) * 4, 32)
    assert np.allclose(vectors["onnx"], vectors["torch"], atol=1e-4)
    assert messages == ["speed round 1/2 done", "speed round 2/2 done"]
    with pytest.raises(RuntimeError, match="engine 'broken' failed: .*unknown engine kind 'onnx'"):
        time_engines({"ok": ("bundle", str(bundle)), "broken": ("onnx", str(bundle))}, SENTENCES, rounds=1)
    with pytest.raises(ValueError, match="rounds must be an integer >= 1, got 0"):
        time_engines(specs, SENTENCES, rounds=0)
    with pytest.raises(ValueError, match="no texts"):
        time_engines(specs, [], rounds=1)
    with pytest.raises(RuntimeError, match="engine 'missing' failed: .*does-not-exist"):
        time_engines({"missing": ("bundle", str(tmp_path / "does-not-exist"))}, SENTENCES, rounds=1)

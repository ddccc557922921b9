"""Distilling from a teacher of another width: the least-squares projection head, PCA targets, the
chunked (resumable, prefix-reading, chunk-reusing) teacher-vector cache, and shrink --init/--head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distill.students import fit_projection, pca_targets, teacher_vectors, write_rows_chunked
from tests.conftest import make_tiny_bert, make_tiny_st

SENTENCES = [f"{w} number {i} walks along the {p}." for i in range(12) for w, p in
             [("A dog", "beach"), ("The old man", "river"), ("Someone", "road")]]


def test_projection_head_is_the_ridge_least_squares_map(tmp_path: Path) -> None:
    import torch

    from distill.model import SentenceEncoder

    student = SentenceEncoder.from_pretrained(make_tiny_bert(tmp_path / "s"), normalize=False)
    pooled = student.encode(SENTENCES).astype(np.float64)
    student.normalize = True
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(32, 48)), rng.normal(size=48)
    targets = pooled @ a + b
    # the reference: ridge regression on centered data, penalty 0.1 x mean eigenvalue, solved directly
    xc = pooled - pooled.mean(0)
    lam = 0.1 * np.trace(xc.T @ xc) / 32
    w_ref = np.linalg.inv(xc.T @ xc + lam * np.eye(32)) @ xc.T @ (targets - targets.mean(0))
    fit_projection(student, SENTENCES, targets)
    assert student.whitening.in_features == 32 and student.dim == 48
    np.testing.assert_allclose(student.whitening.weight.detach().numpy().T, w_ref, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        got = student.whitening(torch.from_numpy(pooled).float()).double().numpy()
    np.testing.assert_allclose(got.mean(0), targets.mean(0), atol=1e-3)  # the bias centers the fit
    # with no penalty the fit is exact on exactly linear targets
    student.whitening = None
    fit_projection(student, SENTENCES, targets, ridge=0.0)
    with torch.no_grad():
        exact = student.whitening(torch.from_numpy(pooled).float()).double().numpy()
    np.testing.assert_allclose(exact, targets, atol=2e-3 * np.abs(targets).max())
    assert np.isclose(np.linalg.norm(student.encode(SENTENCES[:3]), axis=1), 1.0, atol=1e-5).all()  # still normalized
    with pytest.raises(ValueError, match="without one"):
        fit_projection(student, SENTENCES, targets)
    student.whitening = None
    with pytest.raises(ValueError, match=r"need \[n >= 2, d\] targets for 36 sentences, got shape \(3, 48\)"):
        fit_projection(student, SENTENCES, targets[:3])


def test_pca_targets_match_numpy_svd_and_are_cached(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(500, 12)) * np.linspace(3, 0.1, 12) + 0.5).astype(np.float32)
    logs: list[str] = []
    got = pca_targets(x, 4, tmp_path / "p.npy", chunk=64, log=logs.append)  # 8 chunks for the statistics
    centered = x.astype(np.float64) - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    ref = centered @ vt[:4].T
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert got.shape == (500, 4)
    # components are defined up to sign: compare the rows' inner products, which signs do not change
    np.testing.assert_allclose(np.asarray(got) @ np.asarray(got).T, ref @ ref.T, atol=1e-5)
    s = np.linalg.svd(centered, compute_uv=False) ** 2
    assert f"keep {100 * s[:4].sum() / s.sum():.1f}%" in logs[0]
    again = pca_targets(x, 4, tmp_path / "p.npy", log=logs.append)
    assert "cache hit" in logs[-1]
    np.testing.assert_array_equal(again, got)
    with pytest.raises(ValueError, match=r"must be in 1\.\.11, got 12"):
        pca_targets(x, 12, tmp_path / "q.npy")


def test_chunked_writes_resume_after_an_interruption(tmp_path: Path) -> None:
    data = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    calls: list[tuple[int, int]] = []

    def rows(start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        if len(calls) == 3 and not (tmp_path / "go").exists():
            raise KeyboardInterrupt  # interrupted in the third chunk
        return data[start:stop]

    npy = tmp_path / "v.npy"
    with pytest.raises(KeyboardInterrupt):
        write_rows_chunked(npy, (50, 3), rows, 16, {}, log=lambda m: None)
    assert not npy.exists() and json.loads((tmp_path / "v.partial.json").read_text())["done"] == 32
    (tmp_path / "go").touch()
    calls.clear()
    logs: list[str] = []
    head = write_rows_chunked(npy, (50, 3), rows, 16, {}, log=logs.append, stop_at=40)  # only what is needed
    assert calls == [(32, 48)] and "resuming v.partial.npy at row 32 of 50" in logs
    np.testing.assert_array_equal(head, data[:40])
    assert not npy.exists()
    full = write_rows_chunked(npy, (50, 3), rows, 16, {}, log=logs.append)
    assert calls == [(32, 48), (48, 50)]
    np.testing.assert_array_equal(full, data)
    assert npy.is_file() and not (tmp_path / "v.partial.npy").exists()
    with pytest.raises(ValueError, match=r"rows\(0, 16\) returned shape \(16, 2\), expected \(16, 3\)"):
        write_rows_chunked(tmp_path / "w.npy", (50, 3), lambda a, b: data[a:b, :2], 16, {}, log=logs.append)
    with pytest.raises(ValueError, match=r"rows must be in 1\.\.50, got 51"):
        write_rows_chunked(tmp_path / "w.npy", (50, 3), rows, 16, {}, stop_at=51)


def test_teacher_vectors_read_a_prefix_and_reuse_chunks_of_another_corpus(tiny_bundle: Path, tmp_path: Path) -> None:
    from fastemb import Encoder

    ref = Encoder(tiny_bundle).encode(SENTENCES, batch_size=64)
    logs: list[str] = []
    first = teacher_vectors(tiny_bundle, SENTENCES, tmp_path, log=logs.append, chunk=8, rows=20)
    assert first.shape == (20, 32)
    np.testing.assert_allclose(first, ref[:20], atol=1e-5)
    # a larger corpus that starts with the same sentences: the 3 chunks done for rows=20 (24 rows) come from the cache
    bigger = SENTENCES + ["A new sentence about the weather today."]
    vectors = teacher_vectors(tiny_bundle, bigger, tmp_path, log=logs.append, chunk=8)
    assert any("3 chunks of 8 sentences already encoded" in m for m in logs), logs
    np.testing.assert_allclose(vectors[:36], ref, atol=1e-5)
    assert vectors.shape == (37, 32) and isinstance(vectors, np.memmap)


@pytest.mark.parametrize("head", ["projection", "pca"])
def test_shrink_a_teacher_of_another_width_into_a_student_of_another_model(head: str, tmp_path: Path) -> None:
    from distill.cli import main
    from distill.model import SentenceEncoder
    from fastemb import Encoder

    teacher = make_tiny_st(tmp_path / "teacher", dense=48)  # a 48-dimensional teacher
    init = make_tiny_bert(tmp_path / "init", seed=3, layers=3)  # a 32-wide model of its own
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "student"
    rc = main(["shrink", "--teacher", str(teacher), "--init", str(init), "--head", head, "--layers", "2",
               "--corpus", str(corpus), "--max-sentences", "30", "--max-steps", "3", "--batch-size", "8",
               "--eval-every", "0", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
               *(["--no-export"] if head == "pca" else [])])  # one export is enough to see the head go through
    assert rc == 0
    dim = 48 if head == "projection" else 32
    assert SentenceEncoder.from_pretrained(out / "train" / "best").encode(SENTENCES[:2]).shape == (2, dim)
    if head == "projection":
        assert Encoder(out / "bundle-fp32").encode(SENTENCES[:2]).shape == (2, dim)
    cfg = json.loads((out / "train" / "best" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["fastemb_layers_from_teacher"] == [0, 2]
    assert (out / "train" / "best" / "2_Dense").is_dir()  # the head, for either target
    assert json.loads((out / "shrink.json").read_text())["sentences"] == 30
    vec_files = sorted(p.name for p in (tmp_path / "cache" / "vectors").glob("*.npy"))
    assert any("pca32" in n for n in vec_files) == (head == "pca")

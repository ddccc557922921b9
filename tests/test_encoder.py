"""fastemb.Encoder: order, shapes, truncation, normalization, and clear errors for bad input."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from fastemb.bundle import MANIFEST, BundleError
from fastemb.encoder import Encoder

TEXTS = ["short", "a somewhat longer sentence about cats", "x", "the longest sentence of all of them, by a wide margin indeed",
         "medium length text", "short"]


@pytest.fixture(scope="module")
def enc(tiny_bundle: Path) -> Encoder:
    return Encoder(tiny_bundle)


def test_order_is_restored_and_batching_does_not_change_results(enc: Encoder) -> None:
    one_by_one = np.stack([enc.encode(t) for t in TEXTS])
    for bs in (1, 2, 4, 32):
        np.testing.assert_allclose(enc.encode(TEXTS, batch_size=bs), one_by_one, atol=1e-5)
    np.testing.assert_array_equal(enc.encode(TEXTS)[0], enc.encode(TEXTS)[5])  # duplicates land in place


def test_one_text_path_equals_a_batch(enc: Encoder) -> None:
    # one text takes its own path (no chunking, sorting or thread); in a batch the same text is
    # padded to longer batch-mates: both must give the same vector
    text = TEXTS[1]
    in_batch = enc.encode(TEXTS + [text * 3], batch_size=8)[1]
    alone = enc.encode(text)
    assert alone.shape == (32,) and alone.dtype == np.float32
    np.testing.assert_allclose(alone, in_batch, atol=1e-5)
    np.testing.assert_allclose(enc.encode([text]), alone[None], atol=0)  # a list of one: [1, dim]
    np.testing.assert_allclose(enc.encode(text, normalize=False), enc.encode(TEXTS, normalize=False)[1], atol=1e-5)


def test_no_thread_is_started_per_call(enc: Encoder) -> None:
    def tokenizer_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("fastemb-tokenize")]

    before = threading.active_count()
    for _ in range(20):
        enc.encode("one short sentence")
        enc.encode(TEXTS)
    assert threading.active_count() == before  # single-chunk calls tokenize in the caller's thread
    many = TEXTS * 40  # 240 texts at batch 1: four chunks, tokenized ahead in the Encoder's one thread
    first = enc.encode(many, batch_size=1)
    threads = tokenizer_threads()
    assert len(threads) <= 1
    np.testing.assert_allclose(enc.encode(many, batch_size=1), first, atol=0)
    assert tokenizer_threads() == threads  # kept, not started again
    np.testing.assert_allclose(first, np.tile(enc.encode(TEXTS), (40, 1)), atol=1e-5)


def test_openvino_backend_matches_onnxruntime(tiny_bundle: Path, enc: Encoder) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from fastemb.backends.openvino import cpu_has_bf16

    ref = enc.encode(TEXTS)
    ov = Encoder(tiny_bundle, backend="openvino")
    assert ov.provider == "OpenVINO CPU (f32)"
    assert cosines(ov.encode(TEXTS), ref).min() >= 0.9999
    np.testing.assert_allclose(ov.encode(TEXTS[1]), ov.encode(TEXTS)[1], atol=1e-5)  # one text == in a batch
    np.testing.assert_allclose(ov.encode(TEXTS, normalize=False), enc.encode(TEXTS, normalize=False), rtol=1e-3, atol=1e-4)
    if cpu_has_bf16():  # bfloat16 keeps 8 bits of mantissa: a random tiny model loses more than MiniLM (README)
        assert cosines(Encoder(tiny_bundle, backend="openvino-bf16").encode(TEXTS), ref).min() >= 0.99
    with pytest.raises(ValueError, match="backend must be one of onnxruntime, openvino, openvino-bf16"):
        Encoder(tiny_bundle, backend="tvm")
    with pytest.raises(ValueError, match="runs on the CPU"):
        Encoder(tiny_bundle, backend="openvino", device="cuda")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_shapes(enc: Encoder) -> None:
    assert enc.encode("hello").shape == (32,)
    assert enc.encode("hello").dtype == np.float32
    empty = enc.encode([])
    assert empty.shape == (0, 32) and empty.dtype == np.float32
    assert enc.encode(("a", "b")).shape == (2, 32)  # any sequence
    assert enc.encode([""]).shape == (1, 32)


def test_long_text_truncates_at_max_length(enc: Encoder) -> None:
    # max_length is 128 for the tiny model: texts equal in their first 126 word pieces embed equally
    head = " ".join(["word"] * 200)
    a, b = enc.encode([head + " apples and pears", head + " something else entirely"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = enc.encode(" ".join(["word"] * 50) + " apples")
    assert not np.allclose(c, enc.encode(" ".join(["word"] * 50) + " pears"), atol=1e-4)


def test_normalize_flag(enc: Encoder) -> None:
    raw = enc.encode(TEXTS, normalize=False)
    unit = enc.encode(TEXTS)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)


def test_progress_bar(enc: Encoder, capsys: pytest.CaptureFixture) -> None:
    enc.encode(TEXTS * 10, batch_size=8, show_progress=True)
    assert "60/60" in capsys.readouterr().err


def test_bad_texts_and_batch_size(enc: Encoder) -> None:
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        enc.encode(["a", "b", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="bytes"):
        enc.encode(b"abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence of str"):
        enc.encode(42)  # type: ignore[arg-type]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            enc.encode(["a"], batch_size=bad)  # type: ignore[arg-type]


def test_bad_threads_are_refused(tiny_bundle: Path) -> None:
    for bad in (-1, 0, 2.5, True, "4"):
        with pytest.raises(ValueError, match=r"threads must be an integer >= 1, got"):
            Encoder(tiny_bundle, threads=bad)  # type: ignore[arg-type]
    assert Encoder(tiny_bundle, threads=1).backend.threads == 1


def test_mappings_and_sets_are_refused(enc: Encoder) -> None:
    """A dict would encode its keys, a set in arbitrary order: row i would not be text i."""
    with pytest.raises(TypeError, match=r"got dict \(a mapping"):
        enc.encode({"first": "a text", "second": "another"})  # type: ignore[arg-type]
    for unordered in ({"a text", "another"}, frozenset({"a text"})):
        with pytest.raises(TypeError, match="whose order is arbitrary"):
            enc.encode(unordered)  # type: ignore[arg-type]
    d = {"first": "a text", "second": "another"}
    np.testing.assert_array_equal(enc.encode(d.values()), enc.encode(["a text", "another"]))  # ordered views pass


def test_lone_surrogate_is_named_by_index(enc: Encoder) -> None:
    with pytest.raises(ValueError, match=r"texts\[2\] has a lone surrogate '\\ud800' at character 3"):
        enc.encode(["fine", "also fine", "abc\ud800def"])
    with pytest.raises(ValueError, match=r"^text has a lone surrogate '\\udfff' at character 0"):
        enc.encode("\udfff")
    assert enc.encode("a pair is fine: \U0001f600").shape == (32,)


def test_encode_is_thread_safe(enc: Encoder) -> None:
    """One Encoder shared by threads: each call gets its own texts' vectors, in its own order."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"sentence number {i} " * (1 + i % 7) for i in range(120)]
    expected = enc.encode(texts, batch_size=16)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda k: enc.encode(texts[k:] + texts[:k], batch_size=4 + k), range(12)))
    for k, got in enumerate(results):
        np.testing.assert_allclose(got, np.roll(expected, -k, axis=0), atol=1e-5)


def test_path_to_file_in_bundle(tiny_bundle: Path) -> None:
    assert Encoder(tiny_bundle / "tokenizer.json").dim == 32


def test_bad_bundles(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Encoder(tmp_path / "nothing")
    with pytest.raises(BundleError, match="no fastemb.json"):
        Encoder(tmp_path)
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    (b / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="'tokenizer.json'.*missing"):
        Encoder(b)
    shutil.rmtree(b)
    shutil.copytree(tiny_bundle, b)
    with open(b / "model.onnx", "r+b") as f:  # flip bytes in the middle of the graph
        f.seek(1000)
        f.write(b"\x00garbage\x00")
    with pytest.raises(BundleError, match="checksum mismatch for 'model.onnx'"):
        Encoder(b)
    with pytest.raises(ValueError, match="cannot load ONNX graph"):
        (b / "model.onnx").write_bytes(b"not an onnx file")
        Encoder(b, verify=False)
    m = json.loads((tiny_bundle / MANIFEST).read_text())
    m["format_version"] = 99
    (b / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format_version 99"):
        Encoder(b)
    (b / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Encoder(b)


def test_cli_encode(tiny_bundle: Path, tmp_path: Path) -> None:
    from fastemb.cli import main

    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    assert main(["encode", str(tiny_bundle), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "v.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), Encoder(tiny_bundle).encode(TEXTS), atol=1e-6)
    assert main(["encode", str(tiny_bundle), "--input", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "w.npy")]) == 2
    assert not (tmp_path / "w.npy").exists()

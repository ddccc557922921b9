"""``python -m fastemb encode``: one vector per input row (text lines, JSON Lines, Parquet), equal to
``Encoder.encode`` of that row's text; bad rows named and the others kept; streaming; atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastemb.bulk import encode_file, npy_header
from fastemb.cli import main
from fastemb.encoder import Encoder

pa = pytest.importorskip("pyarrow", reason="Parquet tests need pyarrow (pip install 'fastemb[parquet]')")
pq = pytest.importorskip("pyarrow.parquet", reason="Parquet tests need pyarrow")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def encoder(tiny_bundle: Path) -> Encoder:
    return Encoder(tiny_bundle)


def test_jsonl_with_a_text_field_and_bad_lines_named(tiny_bundle: Path, encoder: Encoder, tmp_path: Path,
                                                     capsys) -> None:
    good = ["A man is playing a guitar.", "Someone slices an onion.", "The cat sits\u2028on the mat."]
    rows = [json.dumps({"id": 1, "body": good[0]}),
            "{not json",
            json.dumps({"id": 3, "body": good[1]}),
            json.dumps({"id": 4, "title": "no body"}),
            json.dumps({"id": 5, "body": None}),
            json.dumps({"id": 6, "body": 42}),
            '{"id": 7, "body": "lone \\ud800 surrogate"}',
            "",
            json.dumps([1, 2]),
            json.dumps({"id": 10, "body": good[2]})]
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "v.parquet"
    code = main(["encode", str(tiny_bundle), "--input", str(src), "--output", str(out), "--field", "body",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    table = pq.read_table(out)
    assert table.column_names == ["row", "embedding", "error"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), encoder.dim)
    assert table.column("row").to_pylist() == list(range(len(rows)))
    errors = table.column("error").to_pylist()
    ok = [i for i, e in enumerate(errors) if e is None]
    assert ok == [0, 2, 9]
    vectors = table.column("embedding").to_pylist()
    assert all(vectors[i] is None for i in range(len(rows)) if i not in ok)
    assert cosines(np.array([vectors[i] for i in ok], np.float32), encoder.encode(good)).min() >= 0.99999
    for line, words in [(2, "not valid JSON"), (4, "no 'body' field (fields: id, title)"), (5, "text is null"),
                        (6, "text is int, not str: 42"), (7, "lone surrogate"), (8, "empty line"),
                        (9, "expected a JSON object")]:
        assert words in errors[line - 1]
        assert f"error: line {line}: {errors[line - 1]}" in err


def test_parquet_input_to_npy_with_a_null_row(tiny_bundle: Path, encoder: Encoder, tmp_path: Path, capsys) -> None:
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'dogs'}" for i in range(50)]
    values = [*texts[:10], None, *texts[10:]]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(51)), "text": values}), src, row_group_size=7)
    out = tmp_path / "v.npy"
    assert main(["encode", str(tiny_bundle), "--input", str(src), "--output", str(out), "--no-progress"]) == 1
    assert "error: row 10: text is null" in capsys.readouterr().err
    got = np.load(out)
    assert got.shape == (51, encoder.dim)
    assert np.isnan(got[10]).all() and not np.isnan(np.delete(got, 10, axis=0)).any()
    assert cosines(np.delete(got, 10, axis=0), encoder.encode(texts)).min() >= 0.99999


def test_invalid_utf8_fails_its_line_only(tiny_bundle: Path, encoder: Encoder, tmp_path: Path, capsys) -> None:
    src = tmp_path / "t.txt"
    src.write_bytes(b"first\nbad \xff byte\n\xef\xbb\xbfnot a BOM here\nlast\n")
    out = tmp_path / "v.npy"
    assert main(["encode", str(tiny_bundle), "--input", str(src), "--output", str(out), "--no-progress"]) == 1
    assert "error: line 2: not valid UTF-8 (byte b'\\xff' at offset 4)" in capsys.readouterr().err
    got = np.load(out)
    assert np.isnan(got[1]).all()
    ref = encoder.encode(["first", "\ufeffnot a BOM here", "last"])
    assert cosines(got[[0, 2, 3]], ref).min() >= 0.99999


def test_byte_order_mark_and_crlf_only_file(tiny_bundle: Path, encoder: Encoder, tmp_path: Path) -> None:
    src = tmp_path / "t.txt"
    src.write_bytes(b"\xef\xbb\xbfone\r\ntwo\r\n")
    encode_file(tiny_bundle, src, tmp_path / "v.npy", progress=False)
    got = np.load(tmp_path / "v.npy")
    assert cosines(got, encoder.encode(["one", "two"])).min() >= 0.99999


def test_streams_in_bounded_chunks(tiny_bundle: Path, encoder: Encoder, tmp_path: Path, monkeypatch) -> None:
    texts = [f"text {i} " + "word " * (i % 13) for i in range(1000)]
    src = tmp_path / "t.txt"
    src.write_text("\n".join(texts) + "\n")
    sizes: list[int] = []
    original = Encoder.encode

    def spy(self, items, *args, **kwargs):
        sizes.append(len(items))
        return original(self, items, *args, **kwargs)

    monkeypatch.setattr(Encoder, "encode", spy)
    report = encode_file(tiny_bundle, src, tmp_path / "v.npy", chunk=128, progress=False)
    assert (report.rows, report.failed) == (1000, 0)
    assert max(sizes) == 128 and sum(sizes) == 1000
    got = np.load(tmp_path / "v.npy", mmap_mode="r")
    monkeypatch.undo()
    assert cosines(np.asarray(got), encoder.encode(texts)).min() >= 0.99999


def test_an_interrupted_run_leaves_the_old_output_and_no_debris(tiny_bundle: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    src = tmp_path / "t.txt"
    src.write_text("".join(f"line {i}\n" for i in range(300)))
    out = tmp_path / "v.npy"
    out.write_bytes(b"old")
    calls = []

    def interrupted(self, items, *args, **kwargs):
        calls.append(len(items))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return np.zeros((len(items), self.dim), np.float32)

    monkeypatch.setattr(Encoder, "encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        encode_file(tiny_bundle, src, out, chunk=100, progress=False)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt", "v.npy"]


def test_npy_header_is_read_by_numpy(tmp_path: Path) -> None:
    import io

    for shape in [(0, 384), (3, 2), (10**12, 4096)]:
        header = npy_header(shape)
        assert len(header) == 128  # fixed: rewritten in place once the row count is known
        f = io.BytesIO(header)
        assert np.lib.format.read_magic(f) == (1, 0)
        assert np.lib.format.read_array_header_1_0(f) == (shape, False, np.dtype("<f4"))
    (tmp_path / "h.npy").write_bytes(npy_header((3, 2)) + np.arange(6, dtype="<f4").tobytes())
    np.testing.assert_array_equal(np.load(tmp_path / "h.npy"), np.arange(6, dtype=np.float32).reshape(3, 2))


def test_empty_input_gives_zero_rows(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    report = encode_file(tiny_bundle, tmp_path / "empty.txt", tmp_path / "v.npy", progress=False)
    assert report.rows == 0 and np.load(tmp_path / "v.npy").shape == (0, 32)
    encode_file(tiny_bundle, tmp_path / "empty.txt", tmp_path / "v.parquet", progress=False)
    assert pq.read_table(tmp_path / "v.parquet").num_rows == 0


@pytest.mark.parametrize("argv, message", [
    (["--input", "{missing}", "--output", "{out}.npy"], "input file not found"),
    (["--input", "{txt}", "--output", "{out}.csv"], "the output must end with .npy or .parquet"),
    (["--input", "{parquet}", "--output", "{out}.npy", "--field", "body"], "no column 'body' (columns: text, n)"),
    (["--input", "{parquet}", "--output", "{out}.npy", "--field", "n"], "column 'n' is int64, not text"),
    (["--input", "{txt}", "--output", "{out}.npy", "--batch-size", "0"], "batch_size must be an integer >= 1"),
])
def test_bad_arguments_exit_2_with_a_message(tiny_bundle: Path, tmp_path: Path, capsys, argv, message) -> None:
    (tmp_path / "t.txt").write_text("hello\n")
    pq.write_table(pa.table({"text": ["a"], "n": [1]}), tmp_path / "t.parquet")
    names = {"missing": tmp_path / "nope.txt", "txt": tmp_path / "t.txt", "parquet": tmp_path / "t.parquet",
             "out": tmp_path / "out"}
    argv = [a.format(**names) for a in argv]
    assert main(["encode", str(tiny_bundle), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))

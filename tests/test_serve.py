"""``python -m fastemb serve`` in a subprocess on a loopback port, driven by real HTTP requests.

References are computed independently: vectors by ``Encoder.encode`` in this process, token counts
by the ``tokenizers`` library from the bundle's tokenizer.json, search results by numpy over the
index's vectors. Queue-full, deadline and drain cases use a long ``--max-wait-ms`` so that a
request provably sits in the queue when the next one arrives.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from fastemb import Encoder, Index  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the a man woman dog plays guitar piano in park quickly slowly red blue over under".split()
CORPUS = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + i % 9)) for i in range(120)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``fastemb serve`` subprocess; ``url`` once /health answers 200."""

    def __init__(self, *args: str, wait: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-m", "fastemb", "serve", *args, "--port", str(self.port),
                                     "--log-level", "warning"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        t = time.time()
        while time.time() - t < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server did not become healthy")

    def post(self, path: str, body=None, **kw) -> httpx.Response:
        if body is not None and "content" not in kw:
            kw["json"] = body
        return httpx.post(self.url + path, timeout=30, **kw)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read()


@pytest.fixture(scope="module")
def enc(tiny_bundle: Path) -> Encoder:
    return Encoder(tiny_bundle)


@pytest.fixture(scope="module")
def search_files(enc: Encoder, tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("search")
    index = Index(enc.dim)
    index.add(enc.encode(CORPUS))
    index.save(d / "corpus.index")
    (d / "corpus.txt").write_text("".join(t + "\n" for t in CORPUS), encoding="utf-8")
    return d / "corpus.index", d / "corpus.txt"


@pytest.fixture(scope="module")
def generator_bundle(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from test_simbert import tiny_simbert, tiny_tokenizer

    from fastemb.export.generator import export_generator

    d = tmp_path_factory.mktemp("gen")
    tiny_simbert(tiny_tokenizer(), seed=1).save(d / "model")
    export_generator(d / "model", d / "bundle")
    return d / "bundle"


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, search_files, generator_bundle: Path):
    index, texts = search_files
    s = Server(str(tiny_bundle), "--index", str(index), "--texts", str(texts), "--generator", str(generator_bundle),
               "--model-name", "tiny", "--max-request-texts", "64", "--max-body-bytes", "20000")
    yield s
    s.stop()


def token_counts(bundle: Path, texts: list[str], max_length: int) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok.no_padding()
    return [min(len(tok.encode(t).ids), max_length) for t in texts]


def test_openai_float_and_base64(server: Server, enc: Encoder, tiny_bundle: Path) -> None:
    texts = CORPUS[:10] + ["", "x " * 500]
    ref = enc.encode(texts)
    r = server.post("/v1/embeddings", {"input": texts, "model": "tiny"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "tiny"
    assert [d["index"] for d in body["data"]] == list(range(len(texts)))
    assert all(d["object"] == "embedding" for d in body["data"])
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    n = sum(token_counts(tiny_bundle, texts, enc.max_length))
    assert body["usage"] == {"prompt_tokens": n, "total_tokens": n}

    r = server.post("/v1/embeddings", {"input": texts, "model": "tiny", "encoding_format": "base64"})
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]])
    np.testing.assert_allclose(got, ref, atol=1e-6)

    r = server.post("/v1/embeddings", {"input": "one text", "model": "tiny", "dimensions": 8})
    v = np.array(r.json()["data"][0]["embedding"], dtype=np.float32)
    want = enc.encode("one text")[:8]
    np.testing.assert_allclose(v, want / np.linalg.norm(want), atol=1e-6)


def test_openai_client(server: Server, enc: Encoder) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    texts = CORPUS[20:25]
    res = client.embeddings.create(model="tiny", input=texts)  # the client asks for base64 by default
    got = np.array([d.embedding for d in res.data], dtype=np.float32)
    np.testing.assert_allclose(got, enc.encode(texts), atol=1e-6)
    res = client.embeddings.create(model="tiny", input="hello there", encoding_format="float", dimensions=4)
    assert len(res.data[0].embedding) == 4
    assert [m.id for m in client.models.list()] == ["tiny"]
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_tei_embed(server: Server, enc: Encoder) -> None:
    texts = CORPUS[30:40]
    r = server.post("/embed", {"inputs": texts})
    np.testing.assert_allclose(np.array(r.json(), np.float32), enc.encode(texts), atol=1e-6)
    r = server.post("/embed", {"inputs": "single", "normalize": False})
    np.testing.assert_allclose(np.array(r.json(), np.float32), enc.encode(["single"], normalize=False), atol=1e-5)
    long = "word " * (enc.max_length + 5)
    r = server.post("/embed", {"inputs": ["ok", long], "truncate": False})
    assert r.status_code == 413 and "inputs[1]" in r.json()["error"] and r.json()["error_type"] == "input_too_long"
    r = server.post("/embed", {"inputs": [long]})  # truncated by default
    np.testing.assert_allclose(np.array(r.json(), np.float32), enc.encode([long]), atol=1e-6)


def test_search(server: Server, enc: Encoder) -> None:
    queries = ["a man plays guitar", "red dog in the park"]
    r = server.post("/search", {"query": queries, "k": 5})
    assert r.status_code == 200, r.text
    docs, q = enc.encode(CORPUS), enc.encode(queries)
    scores = q @ docs.T
    for row, s in zip(r.json()["results"], scores, strict=True):
        # numpy's order: best score first, equal scores by smaller id
        best = sorted(range(len(CORPUS)), key=lambda i: (-round(float(s[i]), 5), i))[:5]
        assert [h["id"] for h in row] == best
        assert [h["text"] for h in row] == [CORPUS[i] for i in best]
        np.testing.assert_allclose([h["score"] for h in row], s[best], atol=1e-5)
    r = server.post("/search", {"query": "x", "k": 1000})
    assert len(r.json()["results"][0]) == len(CORPUS)


def test_similar(server: Server) -> None:
    r = server.post("/similar", {"text": "a man is playing guitar", "num": 3})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"] == "a man is playing guitar" and len(out["similar"]) <= 3
    scores = [s["score"] for s in out["similar"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    assert server.post("/similar", {"text": "   "}).status_code == 422
    assert server.post("/similar", {"text": "a cat", "num": 0}).status_code == 422


BAD = [
    ("/v1/embeddings", b"{not json", 422, None),
    ("/v1/embeddings", b"[1, 2]", 422, "JSON object"),
    ("/v1/embeddings", b"", 422, "empty"),
    ("/v1/embeddings", {"model": "tiny"}, 422, "'input' is required"),
    ("/v1/embeddings", {"input": 5, "model": "tiny"}, 422, "'input'"),
    ("/v1/embeddings", {"input": [], "model": "tiny"}, 422, "empty array"),
    ("/v1/embeddings", {"input": ["a", None], "model": "tiny"}, 422, "input[1]"),
    ("/v1/embeddings", {"input": [[1, 2, 3]], "model": "tiny"}, 422, "token arrays"),
    ("/v1/embeddings", {"input": "a"}, 422, "'model'"),
    ("/v1/embeddings", {"input": "a", "model": "other"}, 404, "not served here"),
    ("/v1/embeddings", {"input": "a", "model": "tiny", "encoding_format": "int8"}, 422, "encoding_format"),
    ("/v1/embeddings", {"input": "a", "model": "tiny", "dimensions": 0}, 422, "dimensions"),
    ("/v1/embeddings", {"input": "a", "model": "tiny", "dimensions": 10**6}, 422, "dimensions"),
    ("/v1/embeddings", {"input": "a", "model": "tiny", "dimensions": "8"}, 422, "dimensions"),
    ("/v1/embeddings", {"input": ["a"] * 65, "model": "tiny"}, 413, "at most 64"),
    ("/v1/embeddings", {"input": "a" * 30000, "model": "tiny"}, 413, "limit of 20000 bytes"),
    ("/v1/embeddings", b'{"input": "\\ud800", "model": "tiny"}', 422, "not valid JSON"),
    ("/embed", {"inputs": "a", "normalize": "yes"}, 422, "'normalize'"),
    ("/embed", {"inputs": "a", "truncate": 1}, 422, "'truncate'"),
    ("/embed", {"input": "a"}, 422, "'inputs' is required"),
    ("/search", {"query": "a", "k": 0}, 422, "'k'"),
    ("/search", {"query": "a", "k": 10**9}, 422, "'k'"),
    ("/search", {"query": "a", "k": 2.5}, 422, "'k'"),
    ("/search", {"k": 3}, 422, "'query'"),
    ("/similar", {"text": 3}, 422, "'text'"),
    ("/similar", {"text": "a cat", "num": 10**6}, 422, "'num'"),
]


@pytest.mark.parametrize("path, body, status, needle", BAD)
def test_bad_requests_get_their_4xx(server: Server, path: str, body, status: int, needle: str | None) -> None:
    r = server.post(path, content=body, headers={"content-type": "application/json"}) if isinstance(body, bytes) \
        else server.post(path, body)
    assert r.status_code == status, r.text
    text = r.json()["error"] if path == "/embed" else r.json()["error"]["message"]
    if needle:
        assert needle in text


def test_methods_and_paths(server: Server) -> None:
    assert httpx.get(server.url + "/v1/embeddings").status_code == 405
    assert httpx.get(server.url + "/nope").status_code == 404
    # malformed HTTP that httpx will not send: a raw socket
    for head in (b"Content-Length: abc\r\n", b"Content-Length: 99999999999\r\n", b"Transfer-Encoding: chunked\r\n"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
            c.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + head + b"\r\n"
                      + (b"zz\r\n" if b"chunked" in head else b""))
            c.shutdown(socket.SHUT_WR)
            status = c.recv(64).split(b" ")[1]
        assert status.startswith(b"4"), (head, status)


def test_health_info_metrics(server: Server, tiny_bundle: Path) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    info = httpx.get(server.url + "/info").json()
    assert info["model"] == "tiny" and info["bundle"]["dim"] == 32 and info["index"]["size"] == len(CORPUS)
    assert info["limits"]["max_request_texts"] == 64 and info["backend"]["provider"] == "CPUExecutionProvider"
    before = httpx.get(server.url + "/metrics").text
    for _ in range(3):
        server.post("/embed", {"inputs": 7})
    after = httpx.get(server.url + "/metrics").text

    def count(text: str, series: str) -> float:
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0

    series = 'fastemb_requests_total{endpoint="/embed",status="422"}'
    assert count(after, series) == count(before, series) + 3
    assert "# TYPE fastemb_request_seconds histogram" in after and "fastemb_batch_size_bucket" in after
    assert "fastemb_queue_depth 0" in after


def test_never_5xx_on_random_bodies(server: Server) -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    leaf = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20)
    value = st.recursive(leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                         max_leaves=12)
    keys = st.sampled_from(["input", "inputs", "model", "query", "k", "text", "num", "dimensions", "normalize",
                            "truncate", "encoding_format"])
    body = st.dictionaries(keys, value | st.just("tiny"), max_size=5)
    paths = st.sampled_from(["/v1/embeddings", "/embed", "/search", "/similar"])

    @hypothesis.settings(max_examples=150, deadline=None, database=None)
    @hypothesis.given(paths, body)
    def check(path, b):
        r = httpx.post(server.url + path, content=json.dumps(b, allow_nan=True), timeout=30)
        assert r.status_code < 500, (path, b, r.text)

    check()


def test_queue_full_deadline_and_drain(tiny_bundle: Path, enc: Encoder) -> None:
    # a worker that waits 3 s for a batch to fill keeps the first request queued
    s = Server(str(tiny_bundle), "--model-name", "tiny", "--max-wait-ms", "3000", "--max-queue", "2",
               "--max-batch-size", "64", "--timeout", "20")
    try:
        # a client that gives up: its text is dropped from the queue unrun, and the metrics say so
        batches = [x for x in httpx.get(s.url + "/metrics").text.splitlines() if x.startswith("fastemb_batches_total")]
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
            body = b'{"inputs": "abandoned"}'
            c.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n" + body)
            time.sleep(0.3)
        deadline = time.time() + 10
        while time.time() < deadline:
            m = httpx.get(s.url + "/metrics").text
            if "fastemb_dropped_total 1" in m and 'status="499"} 1' in m:
                break
            time.sleep(0.2)
        assert "fastemb_dropped_total 1" in m and 'fastemb_requests_total{endpoint="/embed",status="499"} 1' in m
        assert batches[0] in m.splitlines()  # no batch ran for it

        results = {}

        def first() -> None:
            results["first"] = s.post("/embed", {"inputs": ["queued one", "queued two"]})

        t = threading.Thread(target=first)
        t.start()
        time.sleep(0.5)
        r = s.post("/embed", {"inputs": "no room"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and "queue full" in r.json()["error"]
        s.proc.send_signal(signal.SIGTERM)  # drain: the queued request still gets its vectors
        t.join(30)
        assert results["first"].status_code == 200
        np.testing.assert_allclose(np.array(results["first"].json(), np.float32),
                                   enc.encode(["queued one", "queued two"]), atol=1e-6)
        # uvicorn re-raises the signal once it has drained; the CLI turns it into exit status 143
        assert s.proc.wait(30) == 143
        with pytest.raises(httpx.ConnectError):
            httpx.get(s.url + "/health", timeout=2)
    finally:
        s.stop()

    s = Server(str(tiny_bundle), "--model-name", "tiny", "--max-wait-ms", "3000", "--timeout", "0.3")
    try:
        r = s.post("/v1/embeddings", {"input": "waits too long", "model": "tiny"})
        assert r.status_code == 503 and "deadline" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "1"
    finally:
        s.stop()


@pytest.mark.parametrize("args, needle", [
    (["does-not-exist"], "does not exist"),
    (["{bundle}", "--texts", "{bundle}/tokenizer.json"], "needs --index"),
    (["{bundle}", "--max-batch-size", "0"], "--max-batch-size must be >= 1"),
    (["{bundle}", "--timeout", "-1"], "--timeout must be > 0"),
    (["{bundle}", "--port", "70000"], "--port"),
])
def test_cli_refuses_bad_arguments(tiny_bundle: Path, args: list[str], needle: str) -> None:
    args = [a.replace("{bundle}", str(tiny_bundle)) for a in args]
    r = subprocess.run([sys.executable, "-m", "fastemb", "serve", *args], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_index_of_other_dimension_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    index = Index(8)
    index.add(np.eye(8, dtype=np.float32))
    index.save(tmp_path / "i8.index")
    s = Server(str(tiny_bundle), "--index", str(tmp_path / "i8.index"), wait=False)
    assert s.proc.wait(60) != 0
    assert "8-dimensional" in s.proc.stdout.read()

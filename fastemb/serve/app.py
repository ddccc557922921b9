"""The HTTP app: OpenAI- and TEI-compatible embeddings, search, similar sentences, health, metrics.

Every embedding request goes through one ``Batcher``: a request is parsed and tokenized on the
event loop (in a worker thread when it holds many texts), queued, and awaited while the batcher's
worker runs the model on whatever the other requests queued meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fastemb.batcher import Batcher, BatcherClosed, DeadlineExceeded, QueueFull, TextTooLong
from fastemb.serve import metrics
from fastemb.serve.schema import (
    ApiError,
    bool_field,
    choice_field,
    int_field,
    read_json,
    text_field,
    texts_field,
)

log = logging.getLogger("fastemb.serve")

# Requests with more texts than this are tokenized in a worker thread, off the event loop.
INLINE_TOKENIZE = 8
ROUTES = ("/v1/embeddings", "/embed", "/search", "/similar", "/health", "/info", "/metrics", "/v1/models")


@dataclass
class ServeConfig:
    """What ``python -m fastemb serve`` was given; ``/info`` reports it."""

    bundle: str
    index: str | None = None
    texts: str | None = None
    generator: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    model_name: str | None = None  # default: the bundle directory's name
    threads: int | None = None
    max_batch_tokens: int = 16384
    max_batch_size: int = 64
    max_wait_ms: float = 0.0
    workers: int = 2
    max_queue: int = 4096
    max_request_texts: int = 256
    max_body_bytes: int = 2 * 1024 * 1024
    timeout_s: float = 30.0
    max_k: int = 1000
    generator_queue: int = 8
    drain_timeout_s: float = 30.0
    verify: bool = True


def read_texts(path: str | Path) -> list[str]:
    """One text per ``\\n``-terminated line (a ``\\r`` before it is dropped); line i is id i."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


class Service:
    """The models a server holds and the counters it keeps."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.state = "loading"
        self.error: str | None = None
        self.encoder = self.batcher = self.index = self.generator = None
        self.texts: list[str] | None = None
        self.model_name = config.model_name or Path(config.bundle).resolve().name
        self.started = time.time()
        self._similar_waiting = 0
        self._similar_lock: asyncio.Lock | None = None
        reg = self.registry = metrics.Registry()
        self.requests = reg.add(metrics.Counter("fastemb_requests_total", "HTTP requests by endpoint and status",
                                                ("endpoint", "status")))
        self.latency = reg.add(metrics.Histogram("fastemb_request_seconds", "HTTP request latency by endpoint",
                                                 metrics.LATENCY_BUCKETS, ("endpoint",)))
        self.texts_total = reg.add(metrics.Counter("fastemb_texts_total", "texts embedded, by endpoint", ("endpoint",)))
        self.tokens_total = reg.add(metrics.Counter("fastemb_tokens_total", "tokens embedded (after truncation)"))
        reg.add(metrics.Gauge("fastemb_queue_depth", "texts queued for the model, not yet running",
                              lambda: self.batcher.queue_depth if self.batcher else 0))
        reg.add(metrics.Gauge("fastemb_workers_busy", "batcher workers running a batch",
                              lambda: self.batcher.busy if self.batcher else 0))
        reg.add(metrics.CounterHistogram("fastemb_batch_size", "texts per model batch", metrics.SIZE_BUCKETS,
                                         lambda: self.batcher.stats.batch_sizes if self.batcher else {}))
        reg.add(metrics.Gauge("fastemb_batches_total", "model batches run",
                              lambda: self.batcher.stats.batches if self.batcher else 0))
        reg.add(metrics.Gauge("fastemb_padded_tokens_total", "tokens run through the model, padding included",
                              lambda: self.batcher.stats.padded_tokens if self.batcher else 0))
        reg.add(metrics.Gauge("fastemb_dropped_total", "requests dropped unrun: cancelled, or deadline passed in the queue",
                              lambda: self.batcher.stats.dropped if self.batcher else 0))

    def load(self) -> None:
        """Load every model, check they fit together, and run a warm-up batch (blocking)."""
        from fastemb.encoder import Encoder

        cfg = self.config
        self.encoder = Encoder(cfg.bundle, threads=cfg.threads, verify=cfg.verify)
        self.batcher = Batcher(self.encoder, max_batch_tokens=max(cfg.max_batch_tokens, self.encoder.max_length),
                               max_batch_size=cfg.max_batch_size, max_wait_ms=cfg.max_wait_ms, max_queue=cfg.max_queue,
                               workers=cfg.workers)
        if cfg.index:
            from fastemb.index import Index

            self.index = Index.load(cfg.index)
            if self.index.dim != self.encoder.dim:
                raise ValueError(f"index {cfg.index} holds {self.index.dim}-dimensional vectors but the bundle "
                                 f"{cfg.bundle} makes {self.encoder.dim}-dimensional ones")
        if cfg.texts:
            if not cfg.index:
                raise ValueError("--texts names the text of each index id: it needs --index")
            self.texts = read_texts(cfg.texts)
            ids = self.index.ids() if hasattr(self.index, "ids") else None
            top = int(ids.max()) if ids is not None and len(ids) else len(self.index) - 1
            if top >= len(self.texts):
                raise ValueError(f"{cfg.texts} has {len(self.texts)} lines but the index holds id {top}: "
                                 "line i must be the text of id i")
        if cfg.generator:
            from fastemb.generator import Generator

            self.generator = Generator(cfg.generator)
        self.batcher.encode(["warm-up", "A longer warm-up sentence, so that more than one shape has run."])
        self.state = "ready"

    def close(self) -> None:
        self.state = "draining"
        if self.batcher is not None:
            self.batcher.close(drain=True, timeout=self.config.drain_timeout_s)

    def info(self) -> dict[str, Any]:
        enc = self.encoder
        out: dict[str, Any] = {"model": self.model_name, "state": self.state, "uptime_s": round(time.time() - self.started, 1)}
        if enc is not None:
            out["bundle"] = {"path": str(enc.bundle.dir), **asdict(enc.bundle.manifest)}
            out["backend"] = {"provider": enc.provider, "threads": getattr(enc.backend, "threads", None),
                              "workers": self.config.workers}
        if self.index is not None:
            out["index"] = {"path": self.config.index, "size": len(self.index), "dim": self.index.dim,
                            "metric": self.index.metric, "storage": self.index.storage, "texts": self.texts is not None}
        if self.generator is not None:
            out["generator"] = {"path": str(self.generator.bundle.dir)}
        out["limits"] = {k: v for k, v in asdict(self.config).items()
                         if k.startswith("max_") or k in ("timeout_s", "generator_queue", "workers")}
        return out

    # -- the shared steps of the endpoints -----------------------------------------------------
    def ready(self) -> None:
        if self.state != "ready":
            raise ApiError(503, f"the server is {self.state}", kind="unavailable", headers={"Retry-After": "1"})

    async def tokenize(self, texts: list[str], truncate: bool, field: str) -> list[list[int]]:
        try:
            if len(texts) <= INLINE_TOKENIZE:
                ids, _ = self.batcher.tokenize(texts, truncate)
            else:
                ids, _ = await run_in_threadpool(self.batcher.tokenize, texts, truncate)
        except TextTooLong as e:
            raise ApiError(413, str(e).replace("texts[", f"{field}[", 1), f"{field}[{e.index}]",
                           kind="input_too_long") from None
        except (TypeError, ValueError) as e:  # e.g. text the tokenizer cannot take
            raise ApiError(422, f"{field}: {e}", field) from None
        return ids

    async def embed(self, request: Request, texts: list[str], ids: list[list[int]], normalize: bool,
                    endpoint: str) -> np.ndarray:
        try:
            work = asyncio.ensure_future(
                self.batcher.aencode(texts, normalize=normalize, timeout=self.config.timeout_s, ids=ids))
            vectors = await _unless_disconnected(request, work)
        except QueueFull as e:
            raise ApiError(429, str(e), kind="rate_limit_exceeded", headers={"Retry-After": "1"}) from None
        except DeadlineExceeded:
            raise ApiError(503, f"no result within this server's deadline of {self.config.timeout_s} s; retry later",
                           kind="timeout", headers={"Retry-After": "1"}) from None
        except BatcherClosed:
            raise ApiError(503, "the server is shutting down", kind="unavailable") from None
        self.texts_total.inc(endpoint, amount=len(texts))
        self.tokens_total.inc(amount=sum(len(x) for x in ids))
        return vectors


async def _unless_disconnected(request: Request, work: asyncio.Future):
    """``work``'s result; if the client disconnects first, cancel it (its queued texts are dropped
    unrun) and answer 499, which nobody receives but the metrics count."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        raise
    finally:
        watch.cancel()
    if not work.done():
        work.cancel()
        raise ApiError(499, "the client closed the connection before its vectors were ready", kind="client_closed")
    return work.result()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json", headers=headers)


# -- endpoints -------------------------------------------------------------------------------
async def openai_embeddings(request: Request) -> Response:
    svc: Service = request.app.state.service
    svc.ready()
    body = await read_json(request, svc.config.max_body_bytes)
    texts, _ = texts_field(body, "input", svc.config.max_request_texts)
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(422, f"field 'model' is required (a string; this server serves {svc.model_name!r})", "model")
    if model != svc.model_name:
        raise ApiError(404, f"model {model!r} is not served here; this server serves {svc.model_name!r}", "model",
                       kind="model_not_found")
    fmt = choice_field(body, "encoding_format", ("float", "base64"), "float")
    dims = int_field(body, "dimensions", None, 1, svc.encoder.dim)
    ids = await svc.tokenize(texts, True, "input")
    vectors = await svc.embed(request, texts, ids, True, "/v1/embeddings")
    if dims is not None and dims < vectors.shape[1]:  # Matryoshka: keep the first dims, L2-normalize again
        vectors = vectors[:, :dims]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.float32(1e-12))
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if fmt == "base64":
        rows: list[Any] = [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
    else:
        rows = list(vectors)
    n_tokens = sum(len(x) for x in ids)
    return _json({"object": "list", "model": svc.model_name,
                  "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(rows)],
                  "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})


async def tei_embed(request: Request) -> Response:
    svc: Service = request.app.state.service
    svc.ready()
    body = await read_json(request, svc.config.max_body_bytes)
    texts, _ = texts_field(body, "inputs", svc.config.max_request_texts)
    normalize = bool_field(body, "normalize", True)
    truncate = bool_field(body, "truncate", True)
    ids = await svc.tokenize(texts, truncate, "inputs")
    vectors = await svc.embed(request, texts, ids, normalize, "/embed")
    return _json(vectors)


async def search(request: Request) -> Response:
    svc: Service = request.app.state.service
    svc.ready()
    if svc.index is None:
        raise ApiError(404, "this server has no index (start it with --index INDEX [--texts TEXTS])", kind="not_found")
    body = await read_json(request, svc.config.max_body_bytes)
    queries, _ = texts_field(body, "query", svc.config.max_request_texts)
    k = int_field(body, "k", 10, 1, svc.config.max_k)
    ids = await svc.tokenize(queries, True, "query")
    vectors = await svc.embed(request, queries, ids, True, "/search")
    scores, hits = await run_in_threadpool(svc.index.search, vectors, min(k, max(1, len(svc.index))))
    results = []
    for row_scores, row_ids in zip(scores.tolist(), hits.tolist(), strict=True):
        row = []
        for s, i in zip(row_scores, row_ids, strict=True):
            if i < 0:
                break
            hit: dict[str, Any] = {"id": i, "score": s}
            if svc.texts is not None:
                hit["text"] = svc.texts[i]
            row.append(hit)
        results.append(row)
    return _json({"results": results})


async def similar(request: Request) -> Response:
    svc: Service = request.app.state.service
    svc.ready()
    if svc.generator is None:
        raise ApiError(404, "this server has no generator (start it with --generator GENERATOR_BUNDLE)", kind="not_found")
    body = await read_json(request, svc.config.max_body_bytes)
    text = text_field(body, "text")
    from fastemb.search import MAX_BEAM_SIZE

    num = int_field(body, "num", 5, 1, MAX_BEAM_SIZE // 4)
    if svc._similar_lock is None:
        svc._similar_lock = asyncio.Lock()
    if svc._similar_waiting >= svc.config.generator_queue:
        raise ApiError(429, f"{svc._similar_waiting} generation requests are waiting (limit "
                            f"{svc.config.generator_queue}); retry later", kind="rate_limit_exceeded",
                       headers={"Retry-After": "2"})
    svc._similar_waiting += 1
    try:
        try:
            await asyncio.wait_for(svc._similar_lock.acquire(), svc.config.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, f"the generator stayed busy past this server's deadline of {svc.config.timeout_s} s",
                           kind="timeout", headers={"Retry-After": "2"}) from None
    finally:
        svc._similar_waiting -= 1
    try:
        found = await run_in_threadpool(svc.generator.similar, text, num)
    except ValueError as e:  # e.g. a text longer than the generator's positions
        raise ApiError(422, str(e), "text") from None
    finally:
        svc._similar_lock.release()
    return _json({"text": text, "similar": [{"text": t, "score": s} for t, s in found]})


async def health(request: Request) -> Response:
    svc: Service = request.app.state.service
    if svc.state != "ready":
        return _json({"status": svc.state, **({"error": svc.error} if svc.error else {})}, 503, {"Retry-After": "1"})
    return _json({"status": "ok"})


async def info(request: Request) -> Response:
    return _json(request.app.state.service.info())


async def prometheus(request: Request) -> Response:
    text = request.app.state.service.registry.render()
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def models(request: Request) -> Response:
    svc: Service = request.app.state.service
    return _json({"object": "list", "data": [{"id": svc.model_name, "object": "model", "created": int(svc.started),
                                              "owned_by": "fastemb"}]})


# -- errors ----------------------------------------------------------------------------------
def _error_body(path: str, status: int, message: str, kind: str, param: str | None) -> dict[str, Any]:
    if path == "/embed":  # text-embeddings-inference's error shape
        return {"error": message, "error_type": kind}
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


async def _api_error(request: Request, exc: ApiError) -> Response:
    return _json(_error_body(request.url.path, exc.status, exc.message, exc.kind, exc.param), exc.status, exc.headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return _json(_error_body(request.url.path, exc.status_code, str(exc.detail), "http_error", None),
                 exc.status_code, dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return _json(_error_body(request.url.path, 500, f"internal error: {type(exc).__name__}", "server_error", None), 500)


class _Metrics:
    """ASGI middleware: count every HTTP request by endpoint and status, and time it."""

    def __init__(self, app, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in ROUTES else "other"
            self.service.requests.inc(path, str(status))
            self.service.latency.observe(time.perf_counter() - start, path)


def create_app(config: ServeConfig, service: Service | None = None) -> Starlette:
    """The Starlette app; models load (and warm up) in its lifespan start-up, before it listens."""
    import contextlib

    service = service or Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if service.state == "loading":
            try:
                await run_in_threadpool(service.load)
            except Exception as e:
                service.state, service.error = "failed", str(e)
                log.error("fastemb serve: cannot start: %s", e)
                raise
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = Starlette(
        routes=[
            Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
            Route("/embed", tei_embed, methods=["POST"]),
            Route("/search", search, methods=["POST"]),
            Route("/similar", similar, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/info", info, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(_Metrics, service=service)
    return app

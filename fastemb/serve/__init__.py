"""``python -m fastemb serve``: an HTTP server for a bundle (and optionally an index and a generator).

Starlette on uvicorn (``pip install 'fastemb[serve]'``). One process holds the models; requests
from all connections meet in one ``fastemb.Batcher``. SIGTERM (or Ctrl-C) stops accepting
connections, lets the requests in flight finish, drains the batcher, then exits.
"""

from __future__ import annotations

import argparse

__all__ = ["ServeConfig", "add_arguments", "create_app", "run"]


def _require() -> None:
    try:
        import orjson  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"fastemb serve needs {e.name}: pip install 'fastemb[serve]'") from None


def __getattr__(name: str):
    if name in ("ServeConfig", "create_app"):
        _require()
        from fastemb.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'fastemb.serve' has no attribute {name!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="encoder bundle to serve")
    p.add_argument("--index", help="a fastemb.Index file for POST /search (its vectors from the same bundle)")
    p.add_argument("--texts", help="text file, line i = the text of index id i (returned by /search)")
    p.add_argument("--generator", help="SimBERT generator bundle for POST /similar")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--model-name", help="the model name clients send and /v1/models lists (default: the bundle's directory name)")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: the cores this process may use)")
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per model batch")
    p.add_argument("--max-batch-size", type=int, default=64, help="texts per model batch")
    p.add_argument("--max-wait-ms", type=float, default=0.0, help="how long an idle worker waits for a batch to fill")
    p.add_argument("--workers", type=int, default=2,
                   help="inference workers: one alone uses every thread; several at once split them (default 2)")
    p.add_argument("--max-queue", type=int, default=4096, help="texts waiting at most; beyond: 429")
    p.add_argument("--max-request-texts", type=int, default=256, help="texts per request at most; beyond: 413")
    p.add_argument("--max-body-bytes", type=int, default=2 * 1024 * 1024, help="request body size at most; beyond: 413")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request deadline in seconds; beyond: 503")
    p.add_argument("--max-k", type=int, default=1000, help="largest k /search accepts")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def config_from_args(args: argparse.Namespace):
    """Check the arguments before anything loads; a bad one raises ValueError naming it."""
    from pathlib import Path

    _require()
    from fastemb.serve.app import ServeConfig

    for name in ("bundle", "index", "texts", "generator"):
        value = getattr(args, name)
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"--{name}: {value} does not exist" if name != "bundle" else f"bundle {value} does not exist")
    if args.texts and not args.index:
        raise ValueError("--texts names the text of each index id: it needs --index")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    for name in ("workers", "max_batch_tokens", "max_batch_size", "max_queue", "max_request_texts", "max_body_bytes", "max_k"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if not 0 <= args.max_wait_ms <= 10_000:
        raise ValueError(f"--max-wait-ms must be in [0, 10000], got {args.max_wait_ms}")
    return ServeConfig(bundle=args.bundle, index=args.index, texts=args.texts, generator=args.generator,
                       host=args.host, port=args.port, model_name=args.model_name, threads=args.threads,
                       max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size,
                       max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, workers=args.workers,
                       max_request_texts=args.max_request_texts, max_body_bytes=args.max_body_bytes,
                       timeout_s=args.timeout, max_k=args.max_k)


def run(config, log_level: str = "info") -> int:
    """Serve until SIGTERM / Ctrl-C; returns the exit status (non-zero if the models failed to load)."""
    _require()
    import logging

    import uvicorn

    from fastemb.serve.app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                                           access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=config.drain_timeout_s))
    server.run()
    return 0 if app.state.service.state in ("draining", "ready") else 1

"""Speed of several encoders on the same texts, each in its own process, in interleaved rounds.

Used by the main job's table and the benchmarks. An engine is ``(kind, path)`` or ``(kind, path,
batch_size)``, kind one of ``"sentence-transformers"`` (a model directory), ``"bundle"`` (a fastemb
bundle through ``fastemb.Encoder``) and ``"model2vec"`` (a saved ``model2vec.StaticModel``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_engines(specs: dict[str, tuple], texts: list[str], rounds: int, batch_size: int = 32,
                 log: Callable[[str], None] = print) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Best sentences/s over ``rounds`` and the vectors of each engine, one process per engine.

    ``specs`` maps a name to an engine (module docstring); ``batch_size`` applies where the engine
    does not name its own.
    Each engine loads and warms up in its own process; then the rounds run the engines one after
    another (interleaved, so they share the machine's noise) while the others wait idle. Separate
    processes because engines disturb each other in one: torch's OpenMP threads keep spinning
    after sentence-transformers returns and take cores from onnxruntime, and onnxruntime's pool
    does the same to torch (README, "Speed against the goals").
    """
    import multiprocessing as mp

    if not specs:
        raise ValueError("time_engines: no engines given")
    if not texts:
        raise ValueError("time_engines: no texts to encode")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    ctx = mp.get_context("spawn")
    workers = {}
    try:
        for name, spec in specs.items():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_engine_worker, args=(spec, batch_size, child), daemon=True)
            proc.start()
            child.close()
            workers[name] = (proc, parent)
            parent.send(texts)  # through the pipe, not the start-up arguments: a dead child raises here
        for name in specs:
            _reply(name, workers[name])  # "ready" after loading and warming up
        best = {name: 0.0 for name in specs}
        vectors: dict[str, np.ndarray] = {}
        for r in range(rounds):
            for name, (_, conn) in workers.items():
                conn.send("vectors" if r == rounds - 1 else "time")
                seconds, v = _reply(name, workers[name])
                best[name] = max(best[name], len(texts) / seconds)
                if v is not None:
                    vectors[name] = v
            log(f"speed round {r + 1}/{rounds} done")
        return best, vectors
    finally:
        for _, conn in workers.values():
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc, _ in workers.values():
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


def _reply(name: str, worker: tuple) -> object:
    proc, conn = worker
    while not conn.poll(1.0):
        if not proc.is_alive():
            raise RuntimeError(f"engine {name!r}: its process exited (code {proc.exitcode}) without a reply")
    msg = conn.recv()
    if isinstance(msg, tuple) and msg and msg[0] == "error":
        raise RuntimeError(f"engine {name!r} failed: {msg[1]}")
    return msg


def _engine_worker(spec: tuple, batch_size: int, conn) -> None:
    """Child process of :func:`time_engines`: load, warm up, then time one pass per request."""
    import traceback

    try:
        texts = conn.recv()
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise ValueError(f"an engine is (kind, path) or (kind, path, batch_size), got {spec!r}")
        kind, path = spec[:2]
        batch_size = int(spec[2]) if len(spec) == 3 else batch_size
        if kind == "sentence-transformers":
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(path, device="cpu")

            def fn(t: list[str]) -> np.ndarray:
                return np.asarray(st.encode(t, batch_size=batch_size, normalize_embeddings=True))
        elif kind == "bundle":
            from fastemb import Encoder

            enc = Encoder(path)

            def fn(t: list[str]) -> np.ndarray:
                return enc.encode(t, batch_size=batch_size)
        elif kind == "model2vec":
            from model2vec import StaticModel

            m2v = StaticModel.from_pretrained(path)

            def fn(t: list[str]) -> np.ndarray:
                return np.asarray(m2v.encode(t, batch_size=batch_size, use_multiprocessing=False))
        else:
            raise ValueError(f"unknown engine kind {kind!r}; use 'sentence-transformers', 'bundle' or 'model2vec'")
        fn(texts[:64])
        conn.send("ready")
        while (cmd := conn.recv()) is not None:
            t0 = time.perf_counter()
            v = fn(texts)
            conn.send((time.perf_counter() - t0, v if cmd == "vectors" else None))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"))

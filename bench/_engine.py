"""One encoding engine in its own process, driven by bench/encode.py over a pipe.

    python bench/_engine.py serve KIND PATH READ_FD WRITE_FD      (started by bench/encode.py)
    python bench/_engine.py prepare KIND SRC DEST                 (build a peer's model once)

Runs under whichever Python the engine needs (the shared venv, or a peer's own venv: see
bench/encode.py), so it imports only numpy and the engine's own library. KIND:

- ``st``, ``st-onnx``, ``st-openvino``: sentence-transformers with its torch, ONNX (optimum +
  onnxruntime) or OpenVINO (optimum-intel) backend, on a sentence-transformers directory; PATH may
  name a file inside it (``onnx/model_qint8_avx512_vnni.onnx``, ``openvino/openvino_model_nncf_int8.xml``),
  which that backend then loads.
- ``fastemb``: a fastemb bundle through ``fastemb.Encoder``; ``fastemb-openvino`` and
  ``fastemb-openvino-bf16`` the same bundle on the OpenVINO backend.

Requests (pickled over the pipe): ``("time", texts, batch_size)`` -> seconds for one pass;
``("vectors", calls, batch_size)`` -> one float32 array per call in ``calls`` (lists of texts);
``("latency", text, n)`` -> ``n`` batch-1 latencies of ``encode(text)`` in seconds; ``None`` ends.
Every reply is ``("ok", value, cpu_seconds)`` (this process's CPU time for the request) or
``("error", message)``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

Encode = Callable[[list[str] | str, int], np.ndarray]


def load(kind: str, path: str) -> Encode:
    """The engine's ``encode(texts, batch_size)`` (a single string gives one vector)."""
    if kind in ("st", "st-onnx", "st-openvino"):
        from sentence_transformers import SentenceTransformer

        p = Path(path)
        backend = {"st": "torch", "st-onnx": "onnx", "st-openvino": "openvino"}[kind]
        kwargs = {}
        if p.is_file():  # a model file inside the directory
            root = next(d for d in p.parents if (d / "modules.json").is_file())
            kwargs["model_kwargs"] = {"file_name": str(p.relative_to(root))}
            p = root
        st = SentenceTransformer(str(p), device="cpu", backend=backend, **kwargs)
        return lambda t, bs: np.asarray(st.encode(t, batch_size=bs, normalize_embeddings=True))
    if kind in ("fastemb", "fastemb-openvino", "fastemb-openvino-bf16"):
        from fastemb import Encoder

        enc = Encoder(path, backend=kind.removeprefix("fastemb-") if kind != "fastemb" else "onnxruntime")
        return lambda t, bs: enc.encode(t, batch_size=bs)
    raise ValueError(f"unknown engine kind {kind!r}")


def prepare(kind: str, src: str, dest: str) -> None:
    """Write a peer's quantized model into a copy of the sentence-transformers directory ``dest``.

    ``st-onnx-int8``: sentence-transformers' ``export_dynamic_quantized_onnx_model`` (optimum's
    dynamic int8 for AVX-512 VNNI). ``openvino-nncf-int8``: the OpenVINO IR that sentence-transformers
    exports, quantized by NNCF (static int8, transformer preset, SmoothQuant alpha 0.8) on 300
    STS-B train sentences (local: no data set is downloaded).
    """
    import shutil

    if not Path(dest, "modules.json").is_file():
        shutil.copytree(src, dest, dirs_exist_ok=True)
    if kind == "st-onnx-int8":
        from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

        st = SentenceTransformer(dest, device="cpu", backend="onnx")
        st.save(dest)  # writes onnx/model.onnx (the ONNX peer loads it instead of exporting again)
        export_dynamic_quantized_onnx_model(st, "avx512_vnni", dest)
    elif kind == "openvino-nncf-int8":
        import nncf
        import openvino as ov
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(dest, device="cpu", backend="openvino")
        st.save(dest)  # writes openvino/openvino_model.xml
        model = ov.Core().read_model(str(Path(dest, "openvino", "openvino_model.xml")))
        texts = _calibration_texts(300)
        inputs = [i.get_any_name() for i in model.inputs]

        def feed(text: str) -> dict:
            enc = st.tokenizer([text], return_tensors="np", truncation=True, max_length=256)
            return {k: enc[k] for k in inputs}

        quantized = nncf.quantize(
            model, nncf.Dataset(texts, feed), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(texts),
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=0.8)),
        )
        ov.save_model(quantized, str(Path(dest, "openvino", "openvino_model_nncf_int8.xml")))
    else:
        raise ValueError(f"unknown prepare kind {kind!r}")


def _calibration_texts(n: int) -> list[str]:
    """The first ``n`` unique sentences of the STS-B train split shipped in this repository."""
    path = Path(__file__).resolve().parents[1] / "distill" / "resources" / "stsb" / "sts-train.csv"
    seen: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        for s in cols[5:7]:
            seen.setdefault(s, None)
        if len(seen) >= n:
            break
    return list(seen)[:n]


def serve(kind: str, path: str, read_fd: int, write_fd: int) -> None:
    from multiprocessing.connection import Connection

    rx, tx = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        encode = load(kind, path)
        encode(["warm-up sentence number one.", "and two"] * 40, 32)
        for _ in range(20):
            encode("warm-up", 1)
        tx.send(("ok", "ready", 0.0))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        tx.send(("error", f"{type(e).__name__}: {e}"))
        return
    while (req := rx.recv()) is not None:
        cpu0 = time.process_time()
        try:
            op, arg, n = req
            if op == "time":
                t0 = time.perf_counter()
                encode(arg, n)
                value = time.perf_counter() - t0
            elif op == "vectors":
                value = [np.asarray(encode(list(call), n), dtype=np.float32) for call in arg]
            elif op == "latency":
                value = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    encode(arg, 1)
                    value.append(time.perf_counter() - t0)
            else:
                raise ValueError(f"unknown request {op!r}")
            tx.send(("ok", value, time.process_time() - cpu0))
        except Exception as e:  # noqa: BLE001
            tx.send(("error", f"{type(e).__name__}: {e}"))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) == 5 and sys.argv[1] == "prepare":
        prepare(*sys.argv[2:])
    else:
        sys.exit(__doc__)

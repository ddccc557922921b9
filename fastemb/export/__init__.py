"""Build-time export: a model directory -> a fastemb bundle (ONNX + tokenizer + manifest).

Needs the ``export`` extra (torch, transformers, onnx, onnxscript): ``pip install 'fastemb[export]'``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from fastemb._checks import integer, number
from fastemb._io import atomic_dir, recover, refuse_overwriting_source
from fastemb.bundle import META_DIM, META_POSITIONS, POOLINGS, Manifest, write_manifest

__all__ = ["export"]


def export(
    src: str | Path,
    out: str | Path,
    *,
    quantize: Literal["int8"] | None = None,
    optimize: bool = False,
    fp16: bool = False,
    pooling: str | None = None,
    max_length: int | None = None,
    overwrite: bool = False,
    check: bool = True,
    max_int8_drop: float | None = None,
    smooth_alpha: float | None = 0.7,
    int8_method: str = "per-row",
    eval_pairs: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Export ``src`` (sentence-transformers, Hugging Face BERT-family or distill TextCNN
    directory) to a bundle at ``out``.

    The bundle is built in a staging directory and renamed to ``out`` only after the check
    passes: the float32 graph must give cosine >= 0.9999 to the torch model on every check
    sentence; an int8 graph must keep the Spearman correlation on ``eval_pairs`` (a file of scored
    sentence pairs, :func:`fastemb.sts.read_scored_pairs`; default the shipped STS-B dev split)
    within ``max_int8_drop`` points (default 1.0) of the torch model; ``int8_method`` picks where int8 activation scales come from
    (:func:`~fastemb.export.onnx_graph.quantize_int8`); an fp16 graph must give cosine >= 0.999 where it can run. A failed
    check raises :class:`~fastemb.export.check.ExportCheckError` and leaves nothing behind.
    """
    from fastemb.export import check as chk
    from fastemb.export import onnx_graph
    from fastemb.export.source import load_source

    check_arguments(src, out, quantize=quantize, fp16=fp16, pooling=pooling, max_length=max_length,
                    overwrite=overwrite, max_int8_drop=max_int8_drop, smooth_alpha=smooth_alpha)
    if quantize == "int8" and int8_method not in onnx_graph.INT8_METHODS:
        raise ValueError(f"int8_method must be one of {', '.join(onnx_graph.INT8_METHODS)}, got {int8_method!r}")
    if eval_pairs is not None and not (quantize == "int8" and check):
        raise ValueError("eval_pairs are what the int8 check scores on: pass them with quantize='int8' and check on")
    pairs = chk.read_eval_pairs(eval_pairs) if quantize == "int8" and check else None
    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    source = load_source(src, pooling=pooling, max_length=max_length)
    say(f"loaded {src} ({source.info.get('format')}, {source.info.get('model_type')}, dim {source.dim}, "
        f"{source.pooling} pooling, inputs {', '.join(source.inputs)})")
    with atomic_dir(out, overwrite=overwrite) as stage:
        shutil.copyfile(source.tokenizer_file, stage / "tokenizer.json")
        graph = stage / "model.onnx"
        onnx_graph.export_onnx(source, graph)
        say("exported float32 ONNX graph")
        fused: dict[str, int] = {}
        if optimize and source.num_heads:
            fused = onnx_graph.optimize(graph, graph, source.num_heads, source.hidden_size)
            say(f"fused: {fused}")
        manifest = Manifest(
            kind="encoder", dim=source.dim, max_length=source.max_length, inputs=list(source.inputs),
            pooling=source.pooling, normalize=source.normalize, precision="fp32",
            source={**source.info, "optimized": bool(optimize), "fused_operators": fused},
        )
        checker = _Checker(stage, manifest, source, say, pairs, eval_pairs) if check else None
        if checker:
            checker.run("fp32", chk.FP32_MIN_COSINE)
        if quantize or fp16:
            fp32 = stage / ".fp32.onnx"
            graph.replace(fp32)
            if quantize == "int8":
                calibration = _calibration_feeds(stage, source)
                if smooth_alpha is not None:
                    from fastemb.export.smooth import smooth

                    n = smooth(fp32, fp32, calibration, alpha=smooth_alpha)
                    say(f"SmoothQuant (alpha {smooth_alpha}): rescaled {n} MatMul inputs")
                onnx_graph.quantize_int8(fp32, graph, int8_method, calibration)
                manifest.precision = "int8"
                manifest.source.update(smooth_alpha=smooth_alpha, int8_method=int8_method)
                say(f"quantized to int8 ({int8_method} activation scales)")
                if source.info.get("folded"):  # a TextCNN's lookup table (see source.py)
                    n = onnx_graph.quantize_tables(graph, graph)
                    say(f"stored {n} lookup table(s) as int8 rows with float32 row scales")
            else:
                onnx_graph.to_fp16(fp32, graph)
                manifest.precision = "fp16"
                say("converted to float16 (pooling and normalization kept in float32)")
            fp32.unlink()
            if checker:
                checker.run(manifest.precision, chk.FP16_MIN_COSINE if fp16 else None, max_int8_drop)
        if checker:
            manifest.extra["checks"] = checker.reports
        stamp_graph(graph, dim=source.dim, max_positions=source.max_positions)
        write_manifest(stage, manifest)
    say(f"wrote {out} ({manifest.precision}) in {time.perf_counter() - t0:.1f} s")
    return Path(out)


def check_arguments(src: str | Path, out: str | Path, *, quantize: str | None = None, fp16: bool = False,
                    pooling: str | None = None, max_length: int | None = None, overwrite: bool = False,
                    max_int8_drop: float | None = None, smooth_alpha: float | None = 0.7) -> None:
    """Refuse bad arguments before any model is loaded (seconds) or anything is written.

    Also cleans what a killed export to ``out`` left (see ``fastemb._io.recover``), so that an
    existing ``out`` is judged as the user left it.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize and fp16:
        raise ValueError("choose one of quantize='int8' (CPU) and fp16=True (GPU), not both")
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    integer("max_length", max_length, min=2, optional=True)  # [CLS] and [SEP] at the least
    number("max_int8_drop", max_int8_drop, min=0.0, optional=True)
    number("smooth_alpha", smooth_alpha, min=0.0, max=1.0, optional=True)
    src, out = Path(src), Path(out)
    if not src.exists():
        raise FileNotFoundError(f"model directory does not exist: {src}")
    refuse_overwriting_source(out, src)
    for line in recover(out):
        print(line, file=sys.stderr)
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"output exists: {out} (pass overwrite=True / --overwrite to replace it)")


def stamp_graph(graph: Path, dim: int | None = None, max_positions: int | None = None) -> None:
    """Write what the graph supports into its ONNX metadata, for ``fastemb.bundle.check_graph``."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if dim is not None:
        props[META_DIM] = str(int(dim))
    if max_positions is not None:
        props[META_POSITIONS] = str(int(max_positions))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(graph))


def _calibration_feeds(stage: Path, source) -> list[dict]:
    """The check sentences, tokenized and padded as the runtime does, in batches of 32."""
    from fastemb.export.check import check_texts, feeds

    return feeds(stage / "tokenizer.json", source.max_length, source.inputs, check_texts())


class _Checker:
    """Runs the bundle being built through the real Encoder and compares it with torch."""

    def __init__(self, stage: Path, manifest: Manifest, source, say: Callable[[str], None],
                 pairs=None, pairs_file: str | Path | None = None) -> None:
        from fastemb.export import check as chk

        self.stage, self.manifest, self.source, self.say = stage, manifest, source, say
        self.pairs = pairs  # the int8 check's scored pairs (fastemb.sts.ScoredPairs)
        self.pairs_name = "STS-B dev" if pairs_file is None else Path(pairs_file).name
        self.texts = chk.check_texts()
        self.reference = chk.torch_vectors(source.module, source.tokenizer_file, source.max_length,
                                           source.inputs, self.texts)
        self.reports: list[dict] = []

    def _encoder(self):
        from fastemb.encoder import Encoder

        write_manifest(self.stage, self.manifest)
        return Encoder(self.stage, verify=False)

    def run(self, precision: str, min_cosine: float | None, max_int8_drop: float | None = None) -> None:
        from fastemb.export import check as chk

        try:
            encoder = self._encoder()
            vectors = encoder.encode(self.texts)
        except Exception as e:  # noqa: BLE001 - CPU onnxruntime lacks some float16 kernels
            if precision != "fp16":
                raise
            self.say(f"check fp16: could not run on this machine's CPU ({str(e).splitlines()[0][:120]})")
            self.reports.append({"precision": "fp16", "skipped": str(e).splitlines()[0][:200]})
            return
        rep = chk.compare(self.reference, vectors, precision, min_cosine)
        if precision == "int8":
            src = self.source
            rep.eval_pairs = self.pairs_name
            rep.eval_spearman_source = chk.score_pairs(
                lambda t: chk.torch_vectors(src.module, src.tokenizer_file, src.max_length, src.inputs, t), self.pairs)
            rep.eval_spearman_bundle = chk.score_pairs(encoder.encode, self.pairs)
            drop = rep.eval_spearman_source - rep.eval_spearman_bundle
            limit = chk.INT8_MAX_STSB_DROP if max_int8_drop is None else max_int8_drop
            self.say(f"check int8: {self.pairs_name} Spearman {rep.eval_spearman_bundle:.2f} vs "
                     f"{rep.eval_spearman_source:.2f} in torch (drop {drop:.2f}, allowed {limit}); "
                     f"min cosine to torch {rep.min_cosine:.4f}")
            if drop > limit:
                raise chk.ExportCheckError(
                    f"int8 export check failed: {self.pairs_name} Spearman drops {drop:.2f} points "
                    f"({rep.eval_spearman_source:.2f} -> {rep.eval_spearman_bundle:.2f}), more than the allowed {limit}")
        else:
            self.say(f"check {precision}: min cosine to torch {rep.min_cosine:.6f} over {rep.sentences} texts")
        self.reports.append(rep.as_dict())

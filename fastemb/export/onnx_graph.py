"""Graph steps of an export: torch -> ONNX, onnxruntime fusions, int8 quantization, fp16."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

from fastemb.export.source import Source

OPSET = 17
OUTPUTS = ("sentence_embedding", "pooled_embedding")


def export_onnx(source: Source, path: Path) -> None:
    """Export ``source.graph_module`` (else ``source.module``) with dynamic batch and sequence axes.

    Two outputs: ``sentence_embedding`` (L2-normalized) and ``pooled_embedding`` (before
    normalization), so ``encode(normalize=False)`` needs no second graph. The TorchScript exporter
    is used: it traces the eager-attention graph that onnxruntime's BERT fusions recognise, and on
    the 2-core CPU it measured as fast as or faster than the dynamo export (README, "Choices").
    """
    import torch

    model = (source.graph_module if source.graph_module is not None else source.module).eval()
    example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in source.inputs)
    axes = {name: {0: "batch", 1: "sequence"} for name in source.inputs}
    axes.update({name: {0: "batch"} for name in OUTPUTS})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, example, str(path), dynamo=False, opset_version=OPSET, input_names=list(source.inputs),
            output_names=list(OUTPUTS), dynamic_axes=axes, do_constant_folding=True,
        )


def optimize(path: Path, out: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """onnxruntime's transformer fusions (Attention, SkipLayerNormalization, BiasGelu, ...)."""
    from onnxruntime.transformers.optimizer import optimize_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=1)
    model.save_model_to_file(str(out))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


INT8_METHODS = ("per-row", "static", "per-token", "dynamic")


def quantize_int8(path: Path, out: Path, method: str = "per-row", calibration: Iterable[dict] | None = None,
                  exclude: list[str] | None = None, block_size: int = 32) -> None:
    """int8 weights (per output channel) and int8 activations for the dense MatMuls.

    ``method`` says where the activation scales come from:

    - ``per-row``: every activation row (token) quantized on its own at run time (symmetric, one
      scale per row), then onnxruntime's integer GEMM (``MatMulInteger``) against int8 weights with
      one scale per output column (:mod:`fastemb.export.rowquant`). Independent of the batch.
    - ``static``: calibrated at export on ``calibration`` (feeds), one per tensor, stored in the
      graph as QuantizeLinear / DequantizeLinear pairs (uint8 activations, int8 weights per output
      channel). A text's vector does not depend on its batch-mates.
    - ``per-token``: ``MatMulNBits`` with 8-bit weights in blocks of ``block_size`` along the input
      dimension and ``accuracy_level`` 4: onnxruntime quantizes each activation row (token) in the
      same blocks at run time. Also independent of the batch.
    - ``dynamic``: one activation scale per tensor per call (``DynamicQuantizeLinear``): the scale
      depends on every text of the batch, so a text's vector does too (the first int8 version,
      kept for comparison in bench/int8_sweep.py).

    Pooling and normalization stay float32.
    """
    import onnx

    if method not in INT8_METHODS:
        raise ValueError(f"int8 method must be one of {', '.join(INT8_METHODS)}, got {method!r}")
    model = onnx.load(str(path))
    keep_fp32 = [n.name for n in model.graph.node if _is_head_node(n.name)] + list(exclude or [])
    if method == "per-row":
        from fastemb.export.rowquant import quantize_per_row

        quantize_per_row(path, out, exclude=keep_fp32)
    elif method == "static":
        if calibration is None:
            raise ValueError("static int8 needs calibration feeds")
        _quantize_static(path, out, calibration, keep_fp32)
    elif method == "per-token":
        import logging

        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # it logs every node it skips at INFO
        try:
            q = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True, accuracy_level=4,
                                     nodes_to_exclude=keep_fp32)
            q.process()
            q.model.save_model_to_file(str(out))
        finally:
            quiet.setLevel(level)
    else:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(path), str(out), per_channel=True, weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Attention", "Gemm"], nodes_to_exclude=keep_fp32,
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def _quantize_static(path: Path, out: Path, calibration: Iterable[dict], keep_fp32: list[str]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(calibration)

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(
            str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
            nodes_to_exclude=keep_fp32, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"MatMulConstBOnly": True},
        )


def to_fp16(path: Path, out: Path) -> None:
    """Float16 weights and activations for GPU targets; inputs, outputs, pooling and normalization
    stay float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    block = [n.name for n in model.graph.node if _is_head_node(n.name)]
    model16 = convert_float_to_float16(model, keep_io_types=True, node_block_list=block)
    onnx.save(model16, str(out))


def _is_head_node(name: str) -> bool:
    """Nodes of pooling, dense and normalization (named after the pipeline's submodules)."""
    return name.startswith(("/pooling/", "/dense/", "/normalize/"))


def quantize_tables(path: Path, out: Path, min_rows: int = 1024) -> int:
    """Store every large lookup table (a float32 ``[rows, cols]`` initializer read by ``Gather`` on
    axis 0, ``rows >= min_rows``) as int8 with one float32 scale per row, dequantized after the
    lookup: ``Gather(q, ids) * Gather(scale, ids)``. Symmetric per row: ``scale = max|row| / 127``,
    so a row's largest entry is exact and the rest are within half a step. A quarter of the bytes;
    only the rows a batch touches are converted. Returns the number of tables converted."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes, converted = [], 0
    for node in graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        table = inits.get(node.input[0]) if node.op_type == "Gather" and axis == 0 else None
        if (table is None or table.data_type != TensorProto.FLOAT or len(table.dims) != 2
                or table.dims[0] < min_rows or uses[node.input[0]] != 1):  # a shared table stays
            nodes.append(node)
            continue
        w = numpy_helper.to_array(table).astype(np.float32)
        scale = np.abs(w).max(axis=1, keepdims=True) / 127.0
        q = np.round(w / np.where(scale > 0, scale, 1.0)).clip(-127, 127).astype(np.int8)
        name = node.input[0]
        graph.initializer.remove(table)
        graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{name}_row_scale")])
        ids, y, tag = node.input[1], node.output[0], node.name or name
        nodes += [
            helper.make_node("Gather", [f"{name}_int8", ids], [f"{y}_q"], name=f"{tag}_gather_int8", axis=0),
            helper.make_node("Gather", [f"{name}_row_scale", ids], [f"{y}_scale"], name=f"{tag}_gather_scale", axis=0),
            helper.make_node("Cast", [f"{y}_q"], [f"{y}_f"], name=f"{tag}_cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{y}_f", f"{y}_scale"], [y], name=f"{tag}_dequantize"),
        ]
        converted += 1
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(out))
    return converted

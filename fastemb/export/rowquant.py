"""Per-row int8: each activation row (token) gets its own scale, then ONNX Runtime's integer GEMM.

For a MatMul ``X @ W`` with a constant float32 ``W [K, N]``:

- ``W`` is stored as int8, symmetric per output column: ``w_n = max_k |W[k, n]| / 127``,
  ``Wq = round(W / w_n)``;
- at run time every row of ``X`` (one token of one text) is quantized on its own, symmetric:
  ``s_m = max_k |X[m, k]| / 127``, ``Xq = round(X / s_m) + 128`` as uint8 (``QuantizeLinear``
  along axis 0 of ``X`` reshaped to ``[M, K]``);
- ``MatMulInteger(Xq, Wq, a_zero_point=128)`` gives the exact int32 product, and
  ``Y = float(int32) * s_m * w_n`` (two ``Mul``s broadcasting ``[M, 1]`` and ``[N]``).

A row's scale is its own, so a text's vector does not depend on its batch-mates. Symmetric rather
than min/max per row because onnxruntime's ``MatMulInteger`` takes one scalar ``a_zero_point``
only (an ``M``-element one, which ONNX allows, fails there: "input1 zero point must be a scalar
or 1D tensor of size 1"), and ``MatMulIntegerToFloat`` takes scalar scales only. MatMuls that
read the same activation (Q, K, V) share its quantization.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

ZERO_POINT = 128  # uint8 offset of the symmetric activation codes: round(x / s) in [-127, 127] -> [1, 255]


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-column int8: ``(Wq int8 [K, N], scale float32 [N])`` with ``W ~ Wq * scale``."""
    scale = np.abs(w).max(axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


def quantize_per_row(path: Path, out: Path, exclude: list[str] | None = None) -> int:
    """Rewrite every MatMul with a constant 2-D float32 weight (but the nodes named in ``exclude``)
    of the graph at ``path`` into per-row int8 (this module's docstring); returns how many."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    skip = set(exclude or [])
    groups: dict[str, list] = defaultdict(list)
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is not None and node.name not in skip and w.data_type == TensorProto.FLOAT and len(w.dims) == 2:
            groups[node.input[0]].append(node)
    if not groups:
        onnx.save(model, str(out))
        return 0

    def const(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    const("rowq_inv127", np.array(1.0 / 127.0, np.float32))
    const("rowq_floor", np.array(1e-12, np.float32))  # an all-zero row: scale > 0, codes 0
    const("rowq_zp", np.array(ZERO_POINT, np.uint8))
    const("rowq_flat", np.array([-1], np.int64))
    const("rowq_col", np.array([-1, 1], np.int64))
    const("rowq_lead_end", np.array([-1], np.int64))
    const("rowq_zero", np.array([0], np.int64))

    replaced: dict[str, list] = {}  # a MatMul's output -> the nodes that replace it
    for i, (act, nodes) in enumerate(groups.items()):
        k = int(inits[nodes[0].input[1]].dims[0])
        p = f"/rowq/{i}"
        const(f"{p}/kshape", np.array([-1, k], np.int64))
        head = [
            helper.make_node("Shape", [act], [f"{p}/shape"], name=f"{p}/Shape"),
            helper.make_node("Slice", [f"{p}/shape", "rowq_zero", "rowq_lead_end"], [f"{p}/lead"], name=f"{p}/Lead"),
            helper.make_node("Reshape", [act, f"{p}/kshape"], [f"{p}/x"], name=f"{p}/Flatten"),
            helper.make_node("Abs", [f"{p}/x"], [f"{p}/abs"], name=f"{p}/Abs"),
            helper.make_node("ReduceMax", [f"{p}/abs"], [f"{p}/amax"], name=f"{p}/RowMax", axes=[1], keepdims=0),
            helper.make_node("Mul", [f"{p}/amax", "rowq_inv127"], [f"{p}/s0"], name=f"{p}/Scale"),
            helper.make_node("Max", [f"{p}/s0", "rowq_floor"], [f"{p}/scale"], name=f"{p}/ScaleFloor"),
            helper.make_node("Shape", [f"{p}/scale"], [f"{p}/m"], name=f"{p}/Rows"),
            helper.make_node("ConstantOfShape", [f"{p}/m"], [f"{p}/zp"], name=f"{p}/ZeroPoints",
                             value=numpy_helper.from_array(np.array([ZERO_POINT], np.uint8))),
            helper.make_node("QuantizeLinear", [f"{p}/x", f"{p}/scale", f"{p}/zp"], [f"{p}/xq"], name=f"{p}/Quantize",
                             axis=0),
            helper.make_node("Reshape", [f"{p}/scale", "rowq_col"], [f"{p}/scol"], name=f"{p}/ScaleColumn"),
        ]
        for j, node in enumerate(nodes):
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            wq, ws = quantize_weight(w)
            q = f"{p}/{j}"
            const(f"{node.input[1]}_int8", wq)
            const(f"{node.input[1]}_col_scale", ws)
            const(f"{q}/n", np.array([w.shape[1]], np.int64))
            body = [
                helper.make_node("MatMulInteger", [f"{p}/xq", f"{node.input[1]}_int8", "rowq_zp"], [f"{q}/y32"],
                                 name=f"{q}/MatMulInteger"),
                helper.make_node("Cast", [f"{q}/y32"], [f"{q}/yf"], name=f"{q}/Cast", to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"{q}/yf", f"{p}/scol"], [f"{q}/yr"], name=f"{q}/RowScale"),
                helper.make_node("Mul", [f"{q}/yr", f"{node.input[1]}_col_scale"], [f"{q}/y2"], name=f"{q}/ColScale"),
                helper.make_node("Concat", [f"{p}/lead", f"{q}/n"], [f"{q}/oshape"], name=f"{q}/OutShape", axis=0),
                helper.make_node("Reshape", [f"{q}/y2", f"{q}/oshape"], [node.output[0]], name=f"{q}/Unflatten"),
            ]
            replaced[node.output[0]] = (head if j == 0 else []) + body
    nodes_out = []
    for node in graph.node:
        nodes_out += replaced.get(node.output[0], [node])
    # the shared head must precede every consumer: it was placed at the group's first MatMul
    del graph.node[:]
    graph.node.extend(nodes_out)
    used = {x for n in graph.node for x in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.save(model, str(out))
    return sum(len(v) for v in groups.values())


def weight_only(model):
    """The same per-row graph (an ``onnx.ModelProto``) for runtimes that quantize activations
    themselves: each per-row product becomes ``MatMul(X, DequantizeLinear(Wq, w_n, axis=1))``,
    float activations and the same int8 weights (OpenVINO compiles that as int8-compressed weights
    with its own per-token dynamic quantization; its ONNX reader cannot broadcast the per-row
    ``QuantizeLinear`` scale). Returns ``model`` rewritten in place."""
    from onnx import helper

    graph = model.graph
    acts, weights, scales, outs = {}, {}, {}, {}
    for n in graph.node:
        if not n.name.startswith("/rowq/"):
            continue
        stem, kind = n.name.rsplit("/", 1)
        if kind == "Flatten":
            acts[stem] = n.input[0]
        elif kind == "MatMulInteger":
            weights[stem] = n.input[1]
        elif kind == "ColScale":
            scales[stem] = n.input[1]
        elif kind == "Unflatten":
            outs[stem] = n.output[0]
    nodes = []
    for n in graph.node:
        if not n.name.startswith("/rowq/"):
            nodes.append(n)
            continue
        stem, kind = n.name.rsplit("/", 1)
        if kind == "Unflatten":
            act = acts[stem.rsplit("/", 1)[0]]
            nodes += [helper.make_node("DequantizeLinear", [weights[stem], scales[stem]], [f"{stem}/w"],
                                       name=f"{stem}/DequantizeWeight", axis=1),
                      helper.make_node("MatMul", [act, f"{stem}/w"], [outs[stem]], name=f"{stem}/MatMul")]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def is_per_row(model) -> bool:
    return any(n.name.startswith("/rowq/") and n.op_type == "MatMulInteger" for n in model.graph.node)

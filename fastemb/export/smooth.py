"""SmoothQuant for dynamic int8: move activation outliers into the weights before quantizing.

Dynamic int8 quantizes each MatMul's activation with one scale per tensor, so a few channels with
large values (BERT's post-LayerNorm outlier dimensions) cost every other channel its precision.
For a MatMul ``A @ W`` with per-channel activation range ``a_k`` (measured on calibration
sentences) and weight-row range ``w_k``, SmoothQuant (Xiao et al., 2023) rescales
``A @ W = (A / s) @ (diag(s) W)`` with ``s_k = a_k^alpha / w_k^(1 - alpha)``: the product is exact,
the activation gets flatter and the weight (quantized per output channel) absorbs the range.
Here ``A / s`` is one float32 ``Mul`` inserted before the MatMuls that share ``A``; residual paths
keep the unscaled ``A``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def smooth(path: Path, out: Path, feeds: Iterable[dict[str, np.ndarray]], alpha: float = 0.5,
           skip_prefixes: tuple[str, ...] = ("/pooling/", "/dense/", "/normalize/")) -> int:
    """Rewrite the float32 graph at ``path`` into ``out``; returns how many activations were smoothed."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    groups: dict[str, list] = defaultdict(list)
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and not node.name.startswith(skip_prefixes):
            w = numpy_helper.to_array(inits[node.input[1]])
            if w.ndim == 2:
                groups[node.input[0]].append(node)
    if not groups:
        return 0

    # Per-channel absolute maxima of each shared activation, over all calibration tokens.
    probe = onnx.load(str(path))
    existing = {o.name for o in probe.graph.output}
    for name in groups:
        if name not in existing:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = list(groups)
    amax = {n: None for n in names}
    for feed in feeds:
        for n, value in zip(names, session.run(names, feed), strict=True):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            amax[n] = m if amax[n] is None else np.maximum(amax[n], m)

    for i, (act, nodes) in enumerate(groups.items()):
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        wmax = np.max(np.abs(np.concatenate(weights, axis=1)), axis=1)
        a = np.maximum(amax[act], 1e-5)
        s = (a**alpha / np.maximum(wmax, 1e-5) ** (1 - alpha)).clip(1e-3, 1e3).astype(np.float32)
        for node, w in zip(nodes, weights, strict=True):
            scaled = numpy_helper.from_array((w * s[:, None]).astype(np.float32), f"{node.input[1]}_smoothed")
            graph.initializer.append(scaled)
            node.input[1] = scaled.name
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"smooth_inv_scale_{i}")
        graph.initializer.append(inv)
        smoothed = f"{act}_smoothed"
        mul = helper.make_node("Mul", [act, inv.name], [smoothed], name=f"/smooth/Mul_{i}")
        for node in nodes:
            node.input[0] = smoothed
        # insert right before the first consumer, keeping the graph topologically sorted
        first = min(list(graph.node).index(n) for n in nodes)
        graph.node.insert(first, mul)
    # drop weights no longer referenced
    used = {x for n in graph.node for x in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.save(model, str(out))
    return len(groups)

"""Build a bundle's ``model.plan``: its ONNX graph compiled by TensorRT for this machine's GPU.

Needs ``tensorrt`` and ``cuda-python`` (``pip install 'fastemb[tensorrt]'``) and a GPU; the int8
option also needs onnxruntime's quantizer (the ``export`` extra).

Precision is decided in the ONNX graph and the network is built *strongly typed*, which is the
mode TensorRT 10 recommends and TensorRT 11 makes the only one:
- ``fp16``: the graph is converted with :func:`fastemb.export.onnx_graph.to_fp16`, which keeps
  pooling, dense and normalization nodes in float32 (the sum of squares overflows float16);
  strong typing makes TensorRT keep exactly those types, and the build checks it did.
- ``int8``: explicit quantization. onnxruntime's static quantizer inserts symmetric int8
  QuantizeLinear/DequantizeLinear pairs around MatMul/Gemm weights and activations, calibrated on
  the bundle's check sentences; the head stays float32. TensorRT runs the Q/DQ pairs as int8 GEMMs.
- ``fp32``: the graph as exported.

The engine's optimization profile covers the batch and sequence ranges given (min / opt / max);
``model.plan.json`` beside it records the GPU, compute capability and TensorRT version it was
built for, and the bundle's manifest is rewritten so its checksums cover both files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fastemb._io import atomic_write_bytes, sha256_file
from fastemb.backends.profiles import EngineMeta, Profile, meta_path
from fastemb.backends.tensorrt import CudaRuntime, require_tensorrt
from fastemb.bundle import Bundle, BundleError, write_manifest

PLAN = "model.plan"
PRECISIONS = ("fp32", "fp16", "int8")
HEAD_PREFIXES = ("/pooling/", "/dense/", "/normalize/")


def export_tensorrt(bundle_dir: str | Path, *, batch: str | Sequence[int] = (1, 32, 128),
                    seq: str | Sequence[int] | None = None, precision: Literal["fp32", "fp16", "int8"] = "fp16",
                    workspace_gb: float = 4.0, log: Callable[[str], None] | None = print) -> Path:
    """Build ``model.plan`` (+ ``model.plan.json``) into an encoder bundle; returns the plan's path."""
    say = log or (lambda _msg: None)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    bundle = Bundle(bundle_dir)
    m = bundle.manifest
    if m.kind != "encoder":
        raise BundleError(f"{bundle.dir}: TensorRT plans are built for encoder bundles, this is a {m.kind} bundle")
    if m.precision == "int8":
        raise BundleError(f"{bundle.dir}: the graph is dynamically quantized for the CPU (MatMulInteger), which TensorRT "
                          "does not run; build the plan from an fp32 bundle with --tensorrt-precision int8")
    if m.precision == "fp16" and precision != "fp16":
        raise BundleError(f"{bundle.dir}: the graph is already float16; build a {precision} plan from an fp32 bundle")
    profile = Profile.create(batch, seq, max_length=m.max_length)
    onnx_path = bundle.graph("encoder")
    plan = bundle.dir / PLAN
    with tempfile.TemporaryDirectory(prefix="fastemb-trt-") as tmp:
        graph = Path(tmp) / "model.onnx"
        if precision == "fp16" and m.precision != "fp16":
            from fastemb.export.onnx_graph import to_fp16

            to_fp16(onnx_path, graph)
        elif precision == "int8":
            feeds = calibration_feeds(bundle, profile)
            quantize_qdq_int8(onnx_path, graph, feeds)
            say(f"inserted int8 Q/DQ nodes, calibrated on {sum(len(f['input_ids']) for f in feeds)} sentences")
        else:
            graph = onnx_path
        meta = build_engine(graph, plan, profile, precision, workspace_gb=workspace_gb, say=say)
    meta.onnx_sha256 = sha256_file(onnx_path)
    meta.save(meta_path(plan))
    m.extra["tensorrt"] = {"plan": PLAN, "meta": meta_path(plan).name, "precision": precision,
                           "gpu": meta.gpu_name, "tensorrt_version": meta.tensorrt_version, "profile": profile.as_dict()}
    write_manifest(bundle.dir, m)
    say(f"wrote {plan} ({precision}, batch {profile.batch.min}..{profile.batch.max}, sequence "
        f"{profile.seq.min}..{profile.seq.max}) for {meta.gpu_name} with TensorRT {meta.tensorrt_version}")
    return plan


def preflight(batch: str | Sequence[int], seq: str | Sequence[int] | None) -> None:
    """Check what a plan build needs before a long export: the libraries, a GPU, valid ranges."""
    from fastemb.backends.profiles import parse_range

    parse_range(batch, "batch")
    if seq is not None:
        parse_range(seq, "sequence")
    require_tensorrt()
    CudaRuntime().device()


def build_engine(onnx_path: Path, plan: Path, profile: Profile, precision: str, *, workspace_gb: float = 4.0,
                 say: Callable[[str], None] = lambda _m: None) -> EngineMeta:
    """Parse ``onnx_path``, build a strongly typed engine for ``profile`` and write it to ``plan``."""
    trt = require_tensorrt()
    gpu, cc = CudaRuntime().device()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    head = check_head_float32(network, trt)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.input_shapes(inputs).items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    say(f"building TensorRT engine ({precision}, {len(head)} head layers in float32) for {gpu}; this takes minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    atomic_write_bytes(plan, bytes(serialized))
    return EngineMeta(gpu_name=gpu, compute_capability=cc, tensorrt_version=trt.__version__, precision=precision,
                      profile=profile.as_dict(), inputs=inputs, outputs=outputs,
                      extra={"float32_head_layers": len(head)})


def check_head_float32(network: Any, trt: Any) -> list[str]:
    """Names of the pooling / dense / normalization layers; raises if one of them is not float32."""
    head, bad = [], []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not any(prefix in layer.name for prefix in HEAD_PREFIXES):  # the parser may decorate node names
            continue
        head.append(layer.name)
        for j in range(layer.num_outputs):
            t = layer.get_output(j)
            if t.dtype in (trt.float16, trt.bfloat16, trt.int8):
                bad.append(f"{layer.name} -> {t.dtype}")
    if bad:
        raise RuntimeError(f"pooling/normalization layers must compute in float32, found: {', '.join(bad[:5])}")
    return head


def is_head_node(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


def calibration_feeds(bundle: Bundle, profile: Profile, batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    """The bundle's check sentences, tokenized and padded in batches the profile accepts."""
    from fastemb.export.check import check_texts
    from fastemb.tokenize import length_batches, load_tokenizer, pad_batch, pad_id_of

    m = bundle.manifest
    tok = load_tokenizer(bundle.file("tokenizer.json"), min(m.max_length, profile.seq.max))
    ids = [e.ids for e in tok.encode_batch(check_texts(), add_special_tokens=True)]
    size = max(profile.batch.min, min(batch_size, profile.batch.max))
    return [pad_batch([ids[j] for j in b], m.inputs, pad_id_of(tok)) for b in length_batches([len(x) for x in ids], size)]


def quantize_qdq_int8(src: Path, out: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """Static int8 with Q/DQ nodes (symmetric, per-channel weights) for TensorRT's explicit quantization."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    keep = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node if is_head_node(n.name)]
    quantize_static(
        str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_exclude=keep, extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )

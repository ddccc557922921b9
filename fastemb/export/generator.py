"""Export a sequence-to-sequence model directory (a SimBERT) to a generator bundle.

The model itself comes from the package that defines it, through ``fastemb.export.registry``
(kind ``generators``; distill registers ``simbert``): its loader returns a
:class:`GeneratorSource` holding the two torch modules below and the model's sizes. This module
exports them, shares their weights and writes the manifest. Two ONNX graphs, float32, everything beam search needs (``fastemb.Generator`` runs them):

``encode_source.onnx``
    inputs  ``input_ids``, ``attention_mask`` ``[batch, len]`` int64 (segment 0: ``[CLS] a [SEP]``)
    outputs ``cls`` ``[batch, dim]`` (the retrieval vector, not normalized), ``logits``
    ``[batch, vocab]`` of the first target token (at the last real position), and the cache
    ``present.{i}.key`` / ``present.{i}.value`` ``[batch, heads, len, head_dim]`` per layer.
``decode_step.onnx``
    inputs  ``input_ids`` ``[batch, 1]``, ``position_ids`` ``[batch, 1]``, ``attention_mask``
    ``[batch, past + 1]`` (1 = a real token; the last column is the new token),
    ``past.{i}.key`` / ``past.{i}.value`` ``[batch, heads, past, head_dim]``
    outputs ``logits`` ``[batch, vocab]`` of the next token and ``present.{i}.*`` with
    ``past + 1`` positions (the new token is segment 1 and attends everything before it).

Both graphs hold the same weights; they are stored once, in ``weights.bin``, which both reference
as ONNX external data (offset + length per tensor), so the bundle is not twice the model's size.

The legacy TorchScript exporter is used (``dynamo=False``): with ``dynamic_axes`` it traces the
cache concatenation with a symbolic length in one pass, and its graphs run on onnxruntime as they
are. The dynamo exporter (torch 2.13) failed in ``torch.export`` on the decode step with a dynamic
cache length (``Dim`` specs for batch and past length, strict and non-strict both tried).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastemb._cli import run_command

__all__ = ["GeneratorSource", "export_generator", "main"]


@dataclass
class GeneratorSource:
    """A generator ready for export (what a registered generator loader returns).

    ``encode_source``: ``(input_ids, attention_mask) -> (cls, logits, *present)`` and
    ``decode_step``: ``(input_ids, position_ids, attention_mask, *past) -> (logits, *present)``,
    torch modules with the signatures of the module docstring, the cache flattened as
    ``key, value`` per layer. ``special_ids`` holds the ids of ``cls``, ``sep``, ``pad``, ``unk``
    and ``mask`` (None where the tokenizer has none).
    """

    encode_source: Any
    decode_step: Any
    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_positions: int
    special_ids: dict[str, int | None]
    info: dict[str, Any] = field(default_factory=dict)


def share_weights(graphs: list[Path], weights: str = "weights.bin", min_bytes: int = 1024) -> None:
    """Move the initializers of ``graphs`` (one directory) into one external-data file, each
    distinct tensor once (same dtype, shape and bytes), 64-byte aligned; rewrite the graphs."""
    import hashlib

    import onnx

    models = [onnx.load(str(g)) for g in graphs]
    where: dict[bytes, tuple[int, int]] = {}
    with open(graphs[0].parent / weights, "wb") as f:
        for model in models:
            for t in model.graph.initializer:
                if not t.HasField("raw_data") or len(t.raw_data) < min_bytes:
                    continue
                key = hashlib.sha256(bytes([t.data_type]) + str(list(t.dims)).encode() + t.raw_data).digest()
                if key not in where:
                    f.write(b"\0" * (-f.tell() % 64))
                    where[key] = (f.tell(), len(t.raw_data))
                    f.write(t.raw_data)
                offset, length = where[key]
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
                del t.external_data[:]
                for k, v in (("location", weights), ("offset", str(offset)), ("length", str(length))):
                    entry = t.external_data.add()
                    entry.key, entry.value = k, v
    for model, g in zip(models, graphs, strict=True):
        onnx.save(model, str(g))


def state_names(num_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def export_generator(
    model_dir: str | Path, out: str | Path, max_length: int | None = None, opset: int = 17,
    overwrite: bool = False, architecture: str = "simbert",
) -> Path:
    """Write the generator bundle of the model in ``model_dir`` to ``out``; returns ``out``.

    ``architecture`` names the registered loader (``fastemb.export.registry``, kind
    ``generators``). ``max_length``: longest source in tokens (the runtime truncates); source
    plus generated tokens must also fit the model's positions. Default: 128, or half the
    positions for a model with fewer than 256.
    """
    from fastemb._checks import integer
    from fastemb.export import check_arguments, registry, stamp_graph

    integer("opset", opset, 7)
    check_arguments(model_dir, out, max_length=max_length, overwrite=overwrite)
    model_dir = Path(model_dir)
    tok_file = model_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise ValueError(f"{model_dir} has no tokenizer.json (a fast tokenizer is required)")
    loader = registry.lookup("generators", architecture)
    if loader is None:
        raise ValueError(f"no generator architecture {architecture!r} is registered (registered: "
                         f"{', '.join(registry.names('generators')) or 'none'}; see fastemb.export.registry)")
    src: GeneratorSource = loader(model_dir)
    import torch

    from fastemb._io import atomic_dir
    from fastemb.bundle import Manifest, write_manifest

    if max_length is None:
        max_length = min(128, src.max_positions // 2)
    if not 2 <= max_length <= src.max_positions - 1:
        raise ValueError(f"max_length must be in 2..{src.max_positions - 1}, got {max_length}")
    L, H, D = src.num_layers, src.num_heads, src.head_dim
    present, past = state_names(L, "present"), state_names(L, "past")

    with atomic_dir(out, overwrite=overwrite) as tmp, torch.no_grad():
        ids = torch.tensor([[2, 7, 8, 9, 3], [2, 7, 3, 0, 0]])
        am = (ids != 0).long()
        torch.onnx.export(
            src.encode_source.eval(), (ids, am), str(tmp / "encode_source.onnx"), dynamo=False, opset_version=opset,
            input_names=["input_ids", "attention_mask"], output_names=["cls", "logits", *present],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                "cls": {0: "batch"}, "logits": {0: "batch"},
                **{n: {0: "batch", 2: "length"} for n in present},
            },
        )
        b, t = 3, 6
        kv = [torch.randn(b, H, t, D) for _ in range(2 * L)]
        step_args = (torch.tensor([[7], [8], [9]]), torch.full((b, 1), t), torch.ones(b, t + 1, dtype=torch.long), *kv)
        torch.onnx.export(
            src.decode_step.eval(), step_args, str(tmp / "decode_step.onnx"), dynamo=False, opset_version=opset,
            input_names=["input_ids", "position_ids", "attention_mask", *past],
            output_names=["logits", *present],
            dynamic_axes={
                "input_ids": {0: "batch"}, "position_ids": {0: "batch"},
                "attention_mask": {0: "batch", 1: "past_plus_one"}, "logits": {0: "batch"},
                **{n: {0: "batch", 2: "past"} for n in past},
                **{n: {0: "batch", 2: "past_plus_one"} for n in present},
            },
        )
        share_weights([tmp / "encode_source.onnx", tmp / "decode_step.onnx"])
        stamp_graph(tmp / "encode_source.onnx", dim=src.hidden_size, max_positions=src.max_positions)
        stamp_graph(tmp / "decode_step.onnx", dim=src.vocab_size, max_positions=src.max_positions)
        shutil.copyfile(tok_file, tmp / "tokenizer.json")
        special = src.special_ids
        manifest = Manifest(
            kind="generator", dim=int(src.hidden_size), max_length=int(max_length),
            inputs=["input_ids", "attention_mask"], pooling="cls", normalize=False, precision="fp32",
            output="cls",
            graphs={"encode_source": "encode_source.onnx", "decode_step": "decode_step.onnx"},
            source={"model_dir": str(model_dir.resolve()), **src.info,
                    "exporter": f"torch {torch.__version__} torch.onnx (TorchScript), opset {opset}"},
            extra={
                "vocab_size": int(src.vocab_size), "max_positions": int(src.max_positions),
                "num_layers": L, "num_heads": H, "head_dim": D,
                "special_ids": special,
                "banned_ids": [special[k] for k in ("pad", "cls", "unk", "mask") if special.get(k) is not None],
                "end_id": special["sep"],
                "encode_source": {"inputs": ["input_ids", "attention_mask"], "outputs": ["cls", "logits", *present]},
                "decode_step": {"inputs": ["input_ids", "position_ids", "attention_mask", *past],
                                "outputs": ["logits", *present]},
            },
        )
        write_manifest(tmp, manifest)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fastemb.export.generator",
        description="Export a SimBERT model directory (distill teach --objective simbert) to a generator bundle.",
    )
    p.add_argument("model", help="model directory (a SimBERT: BertForMaskedLM weights + tokenizer.json)")
    p.add_argument("out", help="bundle directory to write")
    p.add_argument("--max-length", type=int, default=None, help="longest source in tokens (default 128)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--architecture", default="simbert", help="the registered generator type (default simbert)")
    a = p.parse_args(argv)
    return run_command(lambda: print(json.dumps(
        {"bundle": str(export_generator(a.model, a.out, a.max_length, a.opset, a.overwrite, a.architecture))})))


if __name__ == "__main__":
    sys.exit(main())

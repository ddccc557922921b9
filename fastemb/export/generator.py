"""Export a trained SimBERT directory to a generator bundle.

Two ONNX graphs, float32, everything beam search needs (``fastemb.Generator`` runs them):

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
from pathlib import Path

from fastemb._cli import run_command

__all__ = ["export_generator", "main"]


def _require():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:  # pragma: no cover
        raise ImportError(f"exporting needs the export extra: pip install 'fastemb[export]' ({e})") from None


def _graphs(model):
    import torch
    from torch import nn

    from distill.simbert import KVCache

    L = model.num_layers

    def flat(cache):
        return [t for i in range(L) for t in (cache.keys[i], cache.values[i])]

    class EncodeSource(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            cache = KVCache(L)
            hidden = self.model.hidden_states(input_ids, attention_mask=attention_mask, cache=cache)
            last = (attention_mask.sum(1) - 1).clamp(min=0)
            at_last = torch.gather(hidden, 1, last[:, None, None].expand(-1, 1, hidden.shape[2]))[:, 0]
            return (hidden[:, 0], self.model.lm_logits(at_last), *flat(cache))

    class DecodeStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, position_ids, attention_mask, *past):
            cache = KVCache.from_tensors(past[0::2], past[1::2], attention_mask[:, :-1])
            hidden = self.model.hidden_states(
                input_ids, torch.ones_like(input_ids), attention_mask[:, -1:], position_ids, cache
            )
            return (self.model.lm_logits(hidden[:, -1]), *flat(cache))

    return EncodeSource().eval(), DecodeStep().eval()


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


def _check_lm_head(model_dir: Path) -> None:
    """Refuse an encoder without a trained language-model head: it would load (with a fresh, random
    head) and export, and then generate noise."""
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        return  # other weight formats: SimBERT.from_pretrained judges them
    from safetensors import safe_open

    with safe_open(str(weights), framework="np") as f:
        if not any(k.startswith("cls.predictions.") for k in f.keys()):  # noqa: SIM118 - not a dict
            raise ValueError(
                f"{model_dir} is not a SimBERT: its weights have no language-model head (cls.predictions.*), "
                "so it cannot generate; train one with python -m distill teach --objective simbert")


def state_names(num_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def export_generator(
    model_dir: str | Path, out: str | Path, max_length: int | None = None, opset: int = 17,
    overwrite: bool = False,
) -> Path:
    """Write the generator bundle of the SimBERT in ``model_dir`` to ``out``; returns ``out``.

    ``max_length``: longest source in tokens (the runtime truncates); source plus generated
    tokens must also fit the model's ``max_position_embeddings``. Default: 128, or half the
    positions for a model with fewer than 256.
    """
    from fastemb._checks import integer
    from fastemb.export import check_arguments, stamp_graph

    integer("opset", opset, 7)
    check_arguments(model_dir, out, max_length=max_length, overwrite=overwrite)
    model_dir = Path(model_dir)
    tok_file = model_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise ValueError(f"{model_dir} has no tokenizer.json (a fast tokenizer is required)")
    _check_lm_head(model_dir)
    _require()
    import torch

    from distill.simbert import SimBERT
    from fastemb._io import atomic_dir
    from fastemb.bundle import Manifest, write_manifest

    model = SimBERT.from_pretrained(model_dir).eval()
    cfg = model.config
    if max_length is None:
        max_length = min(128, cfg.max_position_embeddings // 2)
    if not 2 <= max_length <= cfg.max_position_embeddings - 1:
        raise ValueError(f"max_length must be in 2..{cfg.max_position_embeddings - 1}, got {max_length}")
    L, H, D = model.num_layers, model.num_heads, model.head_dim
    encode, step = _graphs(model)
    present, past = state_names(L, "present"), state_names(L, "past")

    with atomic_dir(out, overwrite=overwrite) as tmp, torch.no_grad():
        ids = torch.tensor([[2, 7, 8, 9, 3], [2, 7, 3, 0, 0]])
        am = (ids != 0).long()
        torch.onnx.export(
            encode, (ids, am), str(tmp / "encode_source.onnx"), dynamo=False, opset_version=opset,
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
            step, step_args, str(tmp / "decode_step.onnx"), dynamo=False, opset_version=opset,
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
        stamp_graph(tmp / "encode_source.onnx", dim=cfg.hidden_size, max_positions=cfg.max_position_embeddings)
        stamp_graph(tmp / "decode_step.onnx", dim=cfg.vocab_size, max_positions=cfg.max_position_embeddings)
        shutil.copyfile(tok_file, tmp / "tokenizer.json")
        special = {
            name: getattr(model.tokenizer, f"{name}_token_id")
            for name in ("cls", "sep", "pad", "unk", "mask")
        }
        manifest = Manifest(
            kind="generator", dim=int(cfg.hidden_size), max_length=int(max_length),
            inputs=["input_ids", "attention_mask"], pooling="cls", normalize=False, precision="fp32",
            output="cls",
            graphs={"encode_source": "encode_source.onnx", "decode_step": "decode_step.onnx"},
            source={"model_dir": str(model_dir.resolve()), "architecture": "SimBERT (BertForMaskedLM, UniLM mask)",
                    "exporter": f"torch {torch.__version__} torch.onnx (TorchScript), opset {opset}"},
            extra={
                "vocab_size": int(cfg.vocab_size), "max_positions": int(cfg.max_position_embeddings),
                "num_layers": L, "num_heads": H, "head_dim": D,
                "special_ids": special,
                "banned_ids": [special[k] for k in ("pad", "cls", "unk", "mask") if special[k] is not None],
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
    p.add_argument("model", help="SimBERT model directory (BertForMaskedLM weights + tokenizer.json)")
    p.add_argument("out", help="bundle directory to write")
    p.add_argument("--max-length", type=int, default=None, help="longest source in tokens (default 128)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    a = p.parse_args(argv)
    return run_command(
        lambda: print(json.dumps({"bundle": str(export_generator(a.model, a.out, a.max_length, a.opset, a.overwrite))})))


if __name__ == "__main__":
    sys.exit(main())

"""What distill hands to ``fastemb.export``: the loaders of its model types.

Registered with ``fastemb.export.registry`` when distill is imported, and declared as entry
points in pyproject.toml (so ``python -m fastemb export`` finds them without importing distill):

- ``textcnn`` (kind ``sources``): a saved :class:`~distill.textcnn.TextCNN`, checked in torch
  against the model as trained and exported folded (:class:`~distill.textcnn.FoldedTextCNN`);
- ``simbert`` (kind ``generators``): a :class:`~distill.simbert.SimBERT` as the two graphs of a
  generator bundle (encode the source into a key/value cache; one decode step on it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def textcnn_source(path: str | Path, config: dict[str, Any], max_length: int | None = None):
    """The ``fastemb.export.source.Source`` of a saved TextCNN directory."""
    from distill.textcnn import TextCNN
    from fastemb.export.source import Source, build_pipeline

    path = Path(path)
    model = TextCNN.load(path).eval()
    dim = int(config.get("out_dim") or config.get("dim") or 0)
    if dim < 1:
        raise ValueError(f"{path}/config.json: a TextCNN config needs out_dim")
    return Source(
        build_pipeline(model, "mean", [], hf=False), ["input_ids", "attention_mask"],
        str(config.get("pooling", "max")), bool(config.get("normalize", True)), dim,
        int(max_length or config.get("max_length", 256)), path / "tokenizer.json",
        {"format": "distill-textcnn", "path": str(path), "model_type": "textcnn", "folded": True},
        graph_module=build_pipeline(model.folded().eval(), "mean", [], hf=False),
    )


def simbert_generator(model_dir: str | Path):
    """The ``fastemb.export.generator.GeneratorSource`` of a SimBERT directory."""
    model_dir = Path(model_dir)
    _check_lm_head(model_dir)
    from distill.simbert import SimBERT
    from fastemb.export.generator import GeneratorSource

    model = SimBERT.from_pretrained(model_dir).eval()
    encode_source, decode_step = _graphs(model)
    special = {name: getattr(model.tokenizer, f"{name}_token_id") for name in ("cls", "sep", "pad", "unk", "mask")}
    cfg = model.config
    return GeneratorSource(
        encode_source, decode_step, model.num_layers, model.num_heads, model.head_dim, int(cfg.hidden_size),
        int(cfg.vocab_size), int(cfg.max_position_embeddings), special,
        {"architecture": "SimBERT (BertForMaskedLM, UniLM mask)"},
    )


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


def _graphs(model):
    """``(encode_source, decode_step)`` torch modules over ``model`` (fastemb.export.generator)."""
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

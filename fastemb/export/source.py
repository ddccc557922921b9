"""Load a model directory as one torch module: encoder -> pooling -> [dense] -> L2 normalization.

Accepted sources:
- a sentence-transformers directory (``modules.json``: Transformer, Pooling, optional Dense, Normalize);
- a plain Hugging Face BERT-family directory (``config.json`` + weights), pooled as asked (mean by default);
- a directory of a model type another package registers (``fastemb.export.registry``; distill's
  TextCNN: ``config.json`` with ``"model_type": "textcnn"``).

Directories are read by :func:`fastemb.export.layout.read_layout`, which refuses what the pipeline
would not reproduce.

The module's forward takes ``input_ids, attention_mask[, token_type_ids]`` and returns float32
``(normalized, pooled)``, each ``[batch, dim]``; ``normalize`` records whether the source model
itself normalizes (sentence-transformers' Normalize module). Pooling and normalization run in float32 whatever the encoder's precision:
the sum of squares overflows float16.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastemb.bundle import POOLINGS
from fastemb.export import registry
from fastemb.export.layout import ModelLayout, read_json, read_layout

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet")


def _require_torch() -> Any:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"export needs torch and transformers: pip install 'fastemb[export]' ({e})") from None
    return torch


@dataclass
class Source:
    """A model ready for export: the torch module and what the bundle manifest needs to know."""

    module: Any  # torch.nn.Module: (input_ids, attention_mask[, token_type_ids]) -> (normalized, pooled)
    inputs: list[str]
    pooling: str
    normalize: bool
    dim: int
    max_length: int
    tokenizer_file: Path
    info: dict[str, Any] = field(default_factory=dict)
    num_heads: int = 0
    hidden_size: int = 0
    # what goes into the ONNX graph when it differs from ``module`` (the same function computed
    # another way, e.g. a folded TextCNN); ``module`` stays the reference the export is checked against
    graph_module: Any = None
    max_positions: int | None = None  # longest input the graph can take (None: no limit, e.g. TextCNN)
    # config_sentence_transformers.json: named prompts (e5's "query: "), the default one, the similarity
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity: str | None = None


def build_pipeline(encoder: Any, pooling: str, dense: list[Any], hf: bool = True) -> Any:
    """Wrap an encoder with pooling, dense layers and L2 normalization, returning both the
    normalized and the pooled vector. Named submodules give the exported ONNX nodes
    ``/pooling/``, ``/dense/`` and ``/normalize/`` in their names."""
    torch = _require_torch()
    from fastemb.export.heads import Normalize, Pooling

    class Pipeline(torch.nn.Module):
        """Returns ``(normalized, pooled)``, both float32 ``[batch, dim]``."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.pooling = Pooling(pooling if hf else "mean")  # unused when the encoder pools by itself
            self.dense = torch.nn.Sequential(*dense)
            self.normalize = Normalize()

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            if hf:
                kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
                if token_type_ids is not None:
                    kwargs["token_type_ids"] = token_type_ids
                h = self.encoder(**kwargs).last_hidden_state
                v = self.pooling(h, attention_mask)
            else:  # the encoder pools by itself (TextCNN)
                v = self.encoder(input_ids, attention_mask).float()
            pooled = self.dense(v.float())
            return self.normalize(pooled), pooled

    return Pipeline().eval()


def load_source(src: str | Path, pooling: str | None = None, max_length: int | None = None) -> Source:
    """Load ``src`` (see the module docstring) as a :class:`Source`."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"model directory does not exist: {src}")
    if not src.is_dir():
        raise NotADirectoryError(f"expected a model directory, got a file: {src}")
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    config = read_json(src / "config.json") if (src / "config.json").is_file() else {}
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES and model_type is not None and not (src / "modules.json").is_file():
        loader = registry.lookup("sources", str(model_type))
        if loader is not None:
            return loader(src, config, max_length)
    return _load_hf(read_layout(src), pooling, max_length)


def _load_hf(layout: ModelLayout, pooling: str | None, max_length: int | None) -> Source:
    """``max_length`` (the caller's) must fit the model's positions; the model's own setting
    (used when ``max_length`` is None) is cut to them."""
    _require_torch()
    import inspect

    from transformers import AutoConfig, AutoModel

    from fastemb.export.heads import load_dense

    model_dir = layout.transformer_dir
    model_type = layout.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        others = registry.names("sources")
        raise ValueError(
            f"{model_dir}: model_type {model_type!r} is not supported; fastemb exports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} encoders"
            + (f" and, through the packages that register them, {', '.join(others)}" if others else
               " (no installed package registers another type: entry point group fastemb.export.sources)")
        )
    config = AutoConfig.from_pretrained(str(model_dir))
    # Eager attention: the exported graph is the one onnxruntime's BERT fusions recognise.
    model = AutoModel.from_pretrained(str(model_dir), config=config, attn_implementation="eager").eval()
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters and getattr(config, "type_vocab_size", 0) > 1
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if takes_types else [])
    positions = getattr(config, "max_position_embeddings", 512)
    if model_type in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # position ids start after the padding index
    if max_length is not None and max_length > positions:
        raise ValueError(f"max_length {max_length} is more than the model's {positions} positions")
    max_length = int(max_length or min(layout.max_length or positions, positions))
    dense = load_dense(layout)
    pooling = pooling or layout.pooling or "mean"
    module = build_pipeline(model, pooling, dense, hf=True)
    info = {"format": layout.format, "path": str(layout.path), "model_type": model_type,
            "num_layers": getattr(config, "num_hidden_layers", None)}
    if layout.modules:
        info["modules"] = list(layout.modules)
    return Source(module, inputs, pooling, layout.normalize, int(layout.dim or config.hidden_size), max_length,
                  _tokenizer_file(model_dir, layout.path), info,
                  num_heads=getattr(config, "num_attention_heads", 0), hidden_size=getattr(config, "hidden_size", 0),
                  max_positions=int(positions), prompts=dict(layout.prompts),
                  default_prompt_name=layout.default_prompt_name, similarity=layout.similarity)


def _tokenizer_file(model_dir: Path, root: Path) -> Path:
    for d in (model_dir, root):
        if (d / "tokenizer.json").is_file():
            return d / "tokenizer.json"
    # Only a slow tokenizer (vocab.txt): convert it once with transformers.
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    except Exception as e:  # noqa: BLE001 - any failure means: no usable tokenizer
        raise FileNotFoundError(f"{model_dir}: no tokenizer.json and no tokenizer transformers can load ({e})") from None
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="fastemb-tok-")) / "tokenizer.json"
    tok.backend_tokenizer.save(str(out))
    return out

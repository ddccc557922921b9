"""Load a model directory as one torch module: encoder -> pooling -> [dense] -> L2 normalization.

Accepted sources:
- a sentence-transformers directory (``modules.json``: Transformer, Pooling, optional Dense, Normalize);
- a plain Hugging Face BERT-family directory (``config.json`` + weights), pooled as asked (mean by default);
- a ``distill`` TextCNN directory (``config.json`` with ``"model_type": "textcnn"``).

The module's forward takes ``input_ids, attention_mask[, token_type_ids]`` and returns float32
``(normalized, pooled)``, each ``[batch, dim]``; ``normalize`` records whether the source model
itself normalizes (sentence-transformers' Normalize module). Pooling and normalization run in float32 whatever the encoder's precision:
the sum of squares overflows float16.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastemb.bundle import POOLINGS

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet")
IDENTITY_ACTIVATIONS = ("torch.nn.modules.linear.Identity", "Identity", "identity", None)


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


def build_pipeline(encoder: Any, pooling: str, dense: list[Any], hf: bool = True) -> Any:
    """Wrap an encoder with pooling, dense layers and L2 normalization, returning both the
    normalized and the pooled vector. Named submodules give the exported ONNX nodes
    ``/pooling/``, ``/dense/`` and ``/normalize/`` in their names."""
    torch = _require_torch()
    nn = torch.nn

    class Pooling(nn.Module):
        def forward(self, h: Any, mask: Any) -> Any:
            h = h.float()
            m = mask.unsqueeze(-1).to(h.dtype)
            if pooling == "cls":
                return h[:, 0]
            if pooling == "mean":
                return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
            return h.masked_fill(m == 0, float("-inf")).amax(dim=1)

    class Normalize(nn.Module):
        def forward(self, v: Any) -> Any:
            return v / v.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-12)

    class Pipeline(nn.Module):
        """Returns ``(normalized, pooled)``, both float32 ``[batch, dim]``."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.pooling = Pooling()
            self.dense = nn.Sequential(*dense)
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
    config = _read_json(src / "config.json") if (src / "config.json").is_file() else {}
    if config.get("model_type") == "textcnn":
        return _load_textcnn(src, config, max_length)
    if (src / "modules.json").is_file():
        return _load_sentence_transformers(src, pooling, max_length)
    if config:
        return _load_hf(src, src, pooling or "mean", [], True, max_length, {"format": "huggingface"})
    raise ValueError(
        f"{src} is not a supported model directory: it has neither modules.json (sentence-transformers) "
        "nor config.json (Hugging Face / distill)"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _load_sentence_transformers(src: Path, pooling: str | None, max_length: int | None) -> Source:
    modules = _read_json(src / "modules.json")
    transformer_dir: Path | None = None
    st_pooling: str | None = None
    dense_dirs: list[Path] = []
    normalize = False
    for m in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        path = src / m.get("path", "")
        if kind == "Transformer":
            transformer_dir = path
        elif kind == "Pooling":
            st_pooling = _st_pooling_mode(path / "config.json")
        elif kind == "Dense":
            dense_dirs.append(path)
        elif kind == "Normalize":
            normalize = True
        else:
            raise ValueError(f"{src}/modules.json: module type {m.get('type')!r} is not supported by fastemb export")
    if transformer_dir is None:
        raise ValueError(f"{src}/modules.json has no Transformer module")
    st_config = transformer_dir / "sentence_bert_config.json"
    default_length = _read_json(st_config).get("max_seq_length") if st_config.is_file() else None
    dense = [_load_dense(d) for d in dense_dirs]
    info = {"format": "sentence-transformers", "modules": [m.get("type") for m in modules]}
    return _load_hf(src, transformer_dir, pooling or st_pooling or "mean", dense, normalize, max_length, info,
                    default_length)


def _st_pooling_mode(path: Path) -> str:
    cfg = _read_json(path)
    modes = [m for m in ("cls", "mean", "max") if cfg.get(f"pooling_mode_{m}_token" if m == "cls" else f"pooling_mode_{m}_tokens")]
    others = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k not in (
        "pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens")]
    if others or len(modes) != 1:
        raise ValueError(f"{path}: fastemb supports exactly one of cls / mean / max pooling, got {cfg}")
    return modes[0]


def _load_dense(path: Path) -> Any:
    torch = _require_torch()
    cfg = _read_json(path / "config.json")
    if cfg.get("activation_function") not in IDENTITY_ACTIVATIONS and "Tanh" not in str(cfg.get("activation_function")):
        raise ValueError(f"{path}: Dense activation {cfg.get('activation_function')!r} is not supported")
    layer = torch.nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    elif (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{path}: Dense module has no model.safetensors")
    layer.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    if "Tanh" in str(cfg.get("activation_function")):
        return torch.nn.Sequential(layer, torch.nn.Tanh())
    return layer


def _load_hf(root: Path, model_dir: Path, pooling: str, dense: list[Any], normalize: bool,
             max_length: int | None, info: dict[str, Any], default_length: int | None = None) -> Source:
    """``max_length`` (the caller's) must fit the model's positions; ``default_length`` (the
    model's own setting, used when ``max_length`` is None) is cut to them."""
    _require_torch()
    import inspect

    from transformers import AutoConfig, AutoModel

    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir}: config.json is missing")
    model_type = _read_json(config_path).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{model_dir}: model_type {model_type!r} is not supported; fastemb exports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} encoders"
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
    max_length = int(max_length or min(default_length or positions, positions))
    tokenizer_file = _tokenizer_file(model_dir, root)
    dim = dense[-1].out_features if dense and hasattr(dense[-1], "out_features") else (
        dense[-1][0].out_features if dense else config.hidden_size)
    module = build_pipeline(model, pooling, dense, hf=True)
    info = {**info, "path": str(root), "model_type": model_type, "num_layers": getattr(config, "num_hidden_layers", None)}
    return Source(module, inputs, pooling, normalize, int(dim), max_length, tokenizer_file, info,
                  num_heads=getattr(config, "num_attention_heads", 0), hidden_size=getattr(config, "hidden_size", 0),
                  max_positions=int(positions))


def _load_textcnn(src: Path, config: dict[str, Any], max_length: int | None) -> Source:
    try:
        from distill.textcnn import TextCNN
    except ImportError as e:
        raise ImportError(f"exporting a TextCNN needs the distill package and torch: pip install 'fastemb[distill]' ({e})") from None
    model = TextCNN.load(src).eval()
    normalize = bool(config.get("normalize", True))
    module = build_pipeline(model, "mean", [], hf=False)
    dim = int(config.get("out_dim") or config.get("dim") or 0)
    if dim < 1:
        raise ValueError(f"{src}/config.json: a TextCNN config needs out_dim")
    return Source(module, ["input_ids", "attention_mask"], str(config.get("pooling", "max")), normalize, dim,
                  int(max_length or config.get("max_length", 256)), _tokenizer_file(src, src),
                  {"format": "distill-textcnn", "path": str(src), "model_type": "textcnn", "folded": True},
                  graph_module=build_pipeline(model.folded().eval(), "mean", [], hf=False))


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

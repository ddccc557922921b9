"""The one reader (and writer) of sentence-transformers and Hugging Face model directories.

:func:`read_layout` says what a directory computes after its transformer, from its JSON files
alone (no torch): pooling, the Dense layers with their activations, L2 normalization, the
maximum length, and the prompts of ``config_sentence_transformers.json``. Export
(:mod:`fastemb.export.source`) and training (``distill.model``) both read directories through it,
so the two cannot disagree about a model; :func:`write_layout` writes the same files back.

Supported: ``modules.json`` of Transformer -> Pooling (exactly one of cls / mean / max) ->
any number of Dense (identity or tanh activation) -> optional Normalize, in the module formats
of sentence-transformers 2.x to 6.x; or a plain Hugging Face directory (``config.json``, no
``modules.json``), whose pooling the directory does not say. Anything else raises
:class:`UnsupportedModelError` naming the file and the value: a silently different model is
worse than none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

POOLINGS = ("cls", "mean", "max")
ACTIVATIONS = ("identity", "tanh")
# how sentence-transformers writes an activation (its module path) -> ours
_ACTIVATION_NAMES = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.Tanh": "tanh",
}
# legacy Pooling keys (sentence-transformers < 6) -> the mode names of the current format
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_ST = "sentence_transformers.models."
_EMBEDDING = "sentence_embedding"
# tokenizer_config.json says 1e30 and the like when a tokenizer has no limit
_NO_LIMIT = 1_000_000


class UnsupportedModelError(ValueError):
    """A model directory holds a module, an activation or a pooling fastemb does not reproduce."""


@dataclass(frozen=True)
class DenseLayer:
    """One sentence-transformers Dense module: ``activation(x W^T + b)``; weights in ``path``."""

    path: Path
    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "identity"


@dataclass(frozen=True)
class ModelLayout:
    """What a model directory computes after its transformer.

    ``pooling`` is None for a plain Hugging Face directory (it does not say; sentence-transformers
    and fastemb then use mean). ``max_length`` is None when the directory does not set one.
    """

    path: Path
    format: Literal["sentence-transformers", "huggingface"]
    transformer_dir: Path
    config: dict[str, Any]
    pooling: str | None = None
    dense: tuple[DenseLayer, ...] = ()
    normalize: bool = False
    max_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity: str | None = None
    modules: tuple[str, ...] = ()

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def hidden_size(self) -> int | None:
        h = self.config.get("hidden_size", self.config.get("dim"))
        return int(h) if isinstance(h, int) else None

    @property
    def dim(self) -> int | None:
        """Width of the sentence vector: the last Dense's output, else the transformer's width."""
        return self.dense[-1].out_features if self.dense else self.hidden_size


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_layout(path: str | Path) -> ModelLayout:
    """Read ``path`` (see the module docstring); raises :class:`UnsupportedModelError`,
    ``FileNotFoundError`` or ``ValueError`` naming what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory does not exist: {path}" if not path.exists()
                                else f"expected a model directory, got a file: {path}")
    if (path / "modules.json").is_file():
        return _read_sentence_transformers(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a supported model directory: it has neither modules.json "
                         "(sentence-transformers) nor config.json (Hugging Face)")
    return ModelLayout(path, "huggingface", path, read_json(path / "config.json"))


def _read_sentence_transformers(root: Path) -> ModelLayout:
    where = root / "modules.json"
    modules = read_json(where)
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise ValueError(f"{where}: expected a list of modules with a 'type' each")
    kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
    dirs = [root / str(m.get("path", "")) for m in modules]
    unsupported = [m["type"] for m, k in zip(modules, kinds, strict=True)
                   if k not in ("Transformer", "Pooling", "Dense", "Normalize")]
    if unsupported:
        raise UnsupportedModelError(f"{where}: module {unsupported[0]!r} is not supported; fastemb reads "
                                    "Transformer -> Pooling -> Dense ... -> Normalize")
    shape = "".join({"Transformer": "T", "Pooling": "P", "Dense": "D", "Normalize": "N"}[k] for k in kinds)
    if not (shape.startswith("TP") and set(shape[2:].rstrip("N")) <= {"D"} and shape.count("N") <= 1):
        raise UnsupportedModelError(f"{where}: modules {' -> '.join(kinds)} are not in an order fastemb "
                                    "reproduces (Transformer -> Pooling -> Dense ... -> Normalize)")
    transformer_dir = dirs[0]
    if not (transformer_dir / "config.json").is_file():
        raise FileNotFoundError(f"{transformer_dir}: the Transformer module has no config.json")
    config = read_json(transformer_dir / "config.json")
    pooling = _read_pooling(dirs[1] / "config.json", config)
    dense: list[DenseLayer] = []
    width = config.get("hidden_size")
    for d in dirs[2:len(dirs) - shape.count("N")]:
        layer = _read_dense(d)
        if isinstance(width, int) and layer.in_features != width:
            raise UnsupportedModelError(f"{d}/config.json: in_features {layer.in_features} does not match the "
                                        f"{width} values coming in")
        dense.append(layer)
        width = layer.out_features
    if "N" in shape:
        _check_input(dirs[-1] / "config.json")
    st = root / "config_sentence_transformers.json"
    st_config = read_json(st) if st.is_file() else {}
    model_kind = st_config.get("model_type", "SentenceTransformer")
    if model_kind != "SentenceTransformer":
        raise UnsupportedModelError(f"{st}: model_type {model_kind!r} is not a sentence embedding model")
    prompts = st_config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ValueError(f"{st}: prompts must map names to strings, got {prompts!r}")
    default_prompt = st_config.get("default_prompt_name")
    if default_prompt is not None and default_prompt not in prompts:
        raise ValueError(f"{st}: default_prompt_name {default_prompt!r} is not one of the prompts {sorted(prompts)}")
    return ModelLayout(
        root, "sentence-transformers", transformer_dir, config, pooling, tuple(dense), "N" in shape,
        _max_length(transformer_dir), dict(prompts), default_prompt, st_config.get("similarity_fn_name"),
        tuple(str(m["type"]) for m in modules),
    )


def _read_pooling(path: Path, config: dict[str, Any]) -> str:
    cfg = read_json(path)
    if "pooling_mode" in cfg:
        mode = cfg["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode)
    else:
        modes = [name for key, name in _LEGACY_POOLING.items() if cfg.get(key)]
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise UnsupportedModelError(f"{path}: pooling {' + '.join(map(str, modes)) or 'none'} is not supported; "
                                    f"fastemb pools with exactly one of {', '.join(POOLINGS)}")
    if cfg.get("include_prompt", True) is not True:
        raise UnsupportedModelError(f"{path}: include_prompt=false (prompt tokens left out of pooling) is not supported")
    width = cfg.get("embedding_dimension", cfg.get("word_embedding_dimension"))
    hidden = config.get("hidden_size")
    if isinstance(width, int) and isinstance(hidden, int) and width != hidden:
        raise UnsupportedModelError(f"{path}: pools {width} values, but the transformer's hidden_size is {hidden}")
    return modes[0]


def _read_dense(path: Path) -> DenseLayer:
    where = path / "config.json"
    cfg = read_json(where)
    name = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")  # sentence-transformers' default
    if name not in _ACTIVATION_NAMES:
        raise UnsupportedModelError(f"{where}: Dense activation {name!r} is not supported "
                                    f"(fastemb reproduces {', '.join(ACTIVATIONS)})")
    if cfg.get("use_residual"):
        raise UnsupportedModelError(f"{where}: a Dense module with use_residual=true is not supported")
    _check_input(where)
    try:
        layer = DenseLayer(path, int(cfg["in_features"]), int(cfg["out_features"]), bool(cfg.get("bias", True)),
                           _ACTIVATION_NAMES[name])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: a Dense config needs integer in_features and out_features ({e!r})") from None
    if not any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        raise FileNotFoundError(f"{path}: the Dense module has no model.safetensors (or pytorch_model.bin)")
    return layer


def _check_input(where: Path) -> None:
    cfg = read_json(where) if where.is_file() else {}
    for key in ("module_input_name", "module_output_name"):
        if cfg.get(key, _EMBEDDING) != _EMBEDDING:
            raise UnsupportedModelError(f"{where}: {key} {cfg[key]!r} is not supported (only {_EMBEDDING!r})")


def _max_length(transformer_dir: Path) -> int | None:
    """``max_seq_length`` of ``sentence_bert_config.json``; sentence-transformers 6 keeps it as the
    tokenizer's ``model_max_length`` instead."""
    sb = transformer_dir / "sentence_bert_config.json"
    if sb.is_file():
        cfg = read_json(sb)
        task = cfg.get("transformer_task", "feature-extraction")
        if task != "feature-extraction":
            raise UnsupportedModelError(f"{sb}: transformer_task {task!r} is not supported (only feature-extraction)")
        if isinstance(cfg.get("max_seq_length"), int):
            return int(cfg["max_seq_length"])
    tc = transformer_dir / "tokenizer_config.json"
    limit = read_json(tc).get("model_max_length") if tc.is_file() else None
    return int(limit) if isinstance(limit, (int, float)) and 0 < limit < _NO_LIMIT else None


def write_layout(directory: str | Path, *, pooling: str, hidden_size: int, dense: Sequence[DenseLayer] = (),
                 normalize: bool = False, max_length: int | None = None, prompts: dict[str, str] | None = None,
                 default_prompt_name: str | None = None, similarity: str | None = None) -> list[Path]:
    """Write the sentence-transformers files of a model whose transformer is saved in ``directory``
    itself: modules.json, Pooling, the Dense configs, Normalize, ``sentence_bert_config.json`` and
    (when there are prompts or a similarity) ``config_sentence_transformers.json``. Returns the
    Dense directories, in order, for the caller to put each layer's weights in (``dense[i].path``
    is ignored). Legacy module names and pooling keys: every sentence-transformers release reads them.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    d = Path(directory)
    _write(d / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False}
           if max_length is not None else {"do_lower_case": False})
    modules = [{"idx": 0, "name": "0", "path": "", "type": _ST + "Transformer"}]
    _write(d / "1_Pooling" / "config.json", {
        "word_embedding_dimension": int(hidden_size),
        **{key: name == pooling for key, name in _LEGACY_POOLING.items()},
    })
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST + "Pooling"})
    dense_dirs = []
    for layer in dense:
        if layer.activation not in ACTIVATIONS:
            raise ValueError(f"Dense activation must be one of {', '.join(ACTIVATIONS)}, got {layer.activation!r}")
        i = len(modules)
        dense_dirs.append(d / f"{i}_Dense")
        _write(dense_dirs[-1] / "config.json", {
            "in_features": layer.in_features, "out_features": layer.out_features, "bias": layer.bias,
            "activation_function": next(k for k, v in _ACTIVATION_NAMES.items() if v == layer.activation)})
        modules.append({"idx": i, "name": str(i), "path": f"{i}_Dense", "type": _ST + "Dense"})
    if normalize:
        i = len(modules)
        (d / f"{i}_Normalize").mkdir(parents=True, exist_ok=True)
        modules.append({"idx": i, "name": str(i), "path": f"{i}_Normalize", "type": _ST + "Normalize"})
    _write(d / "modules.json", modules)
    if prompts or similarity:
        _write(d / "config_sentence_transformers.json", {
            "prompts": dict(prompts or {}), "default_prompt_name": default_prompt_name,
            **({"similarity_fn_name": similarity} if similarity else {})})
    return dense_dirs


def _write(path: Path, obj: Any) -> None:
    # the caller writes the whole directory under a temporary name (fastemb._io.atomic_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")

"""SentenceEncoder: a Hugging Face encoder + pooling (+ whitening) (+ L2 normalization).

Saved as a sentence-transformers directory that sentence-transformers and ``fastemb.export`` load::

    config.json, model.safetensors, tokenizer files     the Hugging Face encoder
    sentence_bert_config.json                           max_seq_length
    modules.json                                        Transformer -> Pooling [-> Dense] [-> Normalize]
    1_Pooling/config.json                               cls / mean / max
    2_Dense/{config.json, model.safetensors}            whitening x -> (x - mu) W, only when set
    N_Normalize/                                        only when normalizing
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from distill.io import atomic_dir, write_json

Pooling = Literal["cls", "mean", "max"]
POOLINGS: tuple[str, ...] = ("cls", "mean", "max")
_ST = "sentence_transformers.models."


def pool(hidden: Tensor, attention_mask: Tensor, mode: str) -> Tensor:
    """Pool token states [b, L, d] into [b, d], in float32 (METHODS.md, Pooling)."""
    hidden = hidden.float()
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLINGS)}")


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """x / max(||x||_2, eps), computed in float32."""
    x = x.float()
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=eps)


class SentenceEncoder(nn.Module):
    """``forward(input_ids, attention_mask, token_type_ids=None) -> [b, dim]`` sentence vectors."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: object,
        pooling: Pooling = "mean",
        normalize: bool = False,
        max_length: int = 128,
        whitening: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.whitening = whitening

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def dim(self) -> int:
        return self.whitening.out_features if self.whitening is not None else self.hidden_size

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        attn_implementation: str | None = None,
    ) -> SentenceEncoder:
        """Load a sentence-transformers or plain Hugging Face encoder directory.

        Pooling, normalization, whitening and max length come from the directory's
        sentence-transformers files when present (mean / no normalization / 128 otherwise); the
        keyword arguments override them. Pass ``attn_implementation="eager"`` before an ONNX export.
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ValueError(f"{path} is not a supported encoder: no config.json")
        model_type = json.loads(cfg_file.read_text()).get("model_type")
        if model_type == "textcnn":
            raise ValueError(f"{path} is a TextCNN; load it with distill.textcnn.TextCNN.load")
        st = _read_st_layout(path)
        try:
            config = AutoConfig.from_pretrained(path)
            kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
            backbone = AutoModel.from_pretrained(path, config=config, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        except (ValueError, OSError, KeyError) as e:
            raise ValueError(
                f"{path} is not a supported encoder (model_type {model_type!r}): {e}"
            ) from e
        if not hasattr(backbone.config, "hidden_size"):
            raise ValueError(f"{path} is not a supported encoder: its config has no hidden_size")
        whitening = None
        if st.get("dense"):
            from safetensors.torch import load_file

            dense_dir = path / st["dense"]
            dcfg = json.loads((dense_dir / "config.json").read_text())
            whitening = nn.Linear(
                dcfg["in_features"], dcfg["out_features"], bias=dcfg.get("bias", True)
            )
            state = load_file(dense_dir / "model.safetensors")
            whitening.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        return cls(
            backbone,
            tokenizer,
            pooling=pooling or st.get("pooling", "mean"),
            normalize=st.get("normalize", False) if normalize is None else normalize,
            max_length=max_length or st.get("max_length", 128),
            whitening=whitening,
        )

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
        }

    def pooled(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Pooled vectors before whitening and normalization (what whitening is fitted on)."""
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return pool(out.last_hidden_state, attention_mask, self.pooling)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        x = self.pooled(input_ids, attention_mask, token_type_ids)
        if self.whitening is not None:
            x = self.whitening(x.float())
        return l2_normalize(x) if self.normalize else x

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return encode(self, texts, batch_size)

    def save(self, path: str | Path) -> None:
        """Write the sentence-transformers directory (atomically: a crash leaves no half directory)."""
        with atomic_dir(path) as tmp:
            self.backbone.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            write_json(
                tmp / "sentence_bert_config.json",
                {"max_seq_length": self.max_length, "do_lower_case": False},
            )
            modules = [{"idx": 0, "name": "0", "path": "", "type": _ST + "Transformer"}]
            write_json(
                tmp / "1_Pooling" / "config.json",
                {
                    "word_embedding_dimension": self.hidden_size,
                    "pooling_mode_cls_token": self.pooling == "cls",
                    "pooling_mode_mean_tokens": self.pooling == "mean",
                    "pooling_mode_max_tokens": self.pooling == "max",
                    "pooling_mode_mean_sqrt_len_tokens": False,
                },
            )
            modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST + "Pooling"})
            if self.whitening is not None:
                from safetensors.torch import save_file

                d = tmp / "2_Dense"
                write_json(
                    d / "config.json",
                    {
                        "in_features": self.whitening.in_features,
                        "out_features": self.whitening.out_features,
                        "bias": self.whitening.bias is not None,
                        "activation_function": "torch.nn.modules.linear.Identity",
                    },
                )
                state = {
                    k: v.detach().float().contiguous().cpu()
                    for k, v in self.whitening.state_dict().items()
                }
                save_file(
                    {f"linear.{k}": v for k, v in state.items()}, str(d / "model.safetensors")
                )
                modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": _ST + "Dense"})
            if self.normalize:
                i = len(modules)
                (tmp / f"{i}_Normalize").mkdir()
                modules.append(
                    {"idx": i, "name": str(i), "path": f"{i}_Normalize", "type": _ST + "Normalize"}
                )
            write_json(tmp / "modules.json", modules)


def _read_st_layout(path: Path) -> dict:
    """Pooling mode, normalization, whitening dir and max length from sentence-transformers files."""
    out: dict = {}
    sb = path / "sentence_bert_config.json"
    if sb.is_file():
        out["max_length"] = int(json.loads(sb.read_text()).get("max_seq_length", 128))
    mfile = path / "modules.json"
    if not mfile.is_file():
        return out
    for m in json.loads(mfile.read_text()):
        kind = m["type"].rsplit(".", 1)[-1]
        if kind == "Pooling":
            cfg = json.loads((path / m["path"] / "config.json").read_text())
            for mode in POOLINGS:
                key = "pooling_mode_cls_token" if mode == "cls" else f"pooling_mode_{mode}_tokens"
                if cfg.get(key):
                    out["pooling"] = mode
                    break
        elif kind == "Normalize":
            out["normalize"] = True
        elif kind == "Dense":
            out["dense"] = m["path"]
    return out


def encode(model: nn.Module, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """float32 [n, dim] vectors of ``texts`` in input order; batches sorted by length, no grad."""
    texts = list(texts)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.zeros((len(texts), model.dim), dtype=np.float32)
    try:
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                idx = order[s : s + batch_size]
                features = model.tokenize([texts[i] for i in idx])
                vec = model(**{k: v.to(device) for k, v in features.items()})
                out[idx] = vec.float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def load_encoder(path: str | Path, **kwargs: object) -> nn.Module:
    """A SentenceEncoder or a TextCNN, whichever the directory holds (by config.json model_type)."""
    path = Path(path)
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ValueError(f"{path} is not a supported encoder: no config.json")
    if json.loads(cfg.read_text()).get("model_type") == "textcnn":
        from distill.textcnn import TextCNN

        return TextCNN.load(path)
    return SentenceEncoder.from_pretrained(path, **kwargs)

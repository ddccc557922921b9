"""SentenceEncoder: a Hugging Face encoder + pooling (+ Dense layers) (+ whitening) (+ L2 normalization).

Read and written as a sentence-transformers directory that sentence-transformers and
``fastemb.export`` load, through fastemb's one reader and writer of that layout
(``fastemb.export.layout``; the torch modules are ``fastemb.export.heads``)::

    config.json, model.safetensors, tokenizer files     the Hugging Face encoder
    sentence_bert_config.json                           max_seq_length
    modules.json                                        Transformer -> Pooling [-> Dense ...] [-> Normalize]
    1_Pooling/config.json                               cls / mean / max
    k_Dense/{config.json, model.safetensors}            the model's Dense layers (activation kept), then
                                                        whitening x -> (x - mu) W, when set
    N_Normalize/                                        only when normalizing
    config_sentence_transformers.json                   prompts and similarity, when the source had them

A module the reader does not reproduce (another pooling, activation or module type) is refused
with the file and value named, rather than loaded as something else.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from distill.io import atomic_dir
from fastemb.export.heads import Dense, l2_normalize, pool
from fastemb.export.layout import POOLINGS, read_json, read_layout

Pooling = Literal["cls", "mean", "max"]
__all__ = ["POOLINGS", "SentenceEncoder", "encode", "l2_normalize", "load_encoder", "pool"]


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
        dense: Sequence[nn.Module] = (),
        st_config: dict[str, Any] | None = None,
    ) -> None:
        """``dense``: the model's own Dense layers (``fastemb.export.heads.Dense``, or ``nn.Linear``
        for identity ones), applied after pooling; ``whitening``: a linear map distill fits
        (whitening, a projection head), applied after them. ``st_config``: the prompts and
        similarity of ``config_sentence_transformers.json``, written back by :meth:`save`."""
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.dense = nn.ModuleList(Dense.wrap(d) for d in dense)
        self.whitening = whitening
        self.st_config = dict(st_config or {})

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def dim(self) -> int:
        if self.whitening is not None:
            return self.whitening.out_features
        return self.dense[-1].out_features if len(self.dense) else self.hidden_size

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
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise ValueError(f"{path} is not a supported encoder: no config.json")
        layout = read_layout(path)
        model_type = layout.model_type
        if model_type == "textcnn":
            raise ValueError(f"{path} is a TextCNN; load it with distill.textcnn.TextCNN.load")
        try:
            config = AutoConfig.from_pretrained(layout.transformer_dir)
            kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
            backbone = AutoModel.from_pretrained(layout.transformer_dir, config=config, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(layout.transformer_dir, use_fast=True)
        except (ValueError, OSError, KeyError) as e:
            raise ValueError(
                f"{path} is not a supported encoder (model_type {model_type!r}): {e}"
            ) from e
        if not hasattr(backbone.config, "hidden_size"):
            raise ValueError(f"{path} is not a supported encoder: its config has no hidden_size")
        st_config = {"prompts": layout.prompts, "default_prompt_name": layout.default_prompt_name,
                     "similarity": layout.similarity}
        return cls(
            backbone,
            tokenizer,
            pooling=pooling or layout.pooling or "mean",
            normalize=layout.normalize if normalize is None else normalize,
            max_length=max_length or layout.max_length or 128,
            dense=[Dense.load(layer) for layer in layout.dense],
            st_config={k: v for k, v in st_config.items() if v},
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
        """Pooled vectors, before the Dense layers, whitening and normalization."""
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return pool(out.last_hidden_state, attention_mask, self.pooling)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        x = self.pooled(input_ids, attention_mask, token_type_ids)
        for dense in self.dense:
            x = dense(x)
        if self.whitening is not None:
            x = self.whitening(x.float())
        return l2_normalize(x) if self.normalize else x

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return encode(self, texts, batch_size)

    def save(self, path: str | Path) -> None:
        """Write the sentence-transformers directory (atomically: a crash leaves no half directory)."""
        from fastemb.export.heads import save_heads

        dense = [*self.dense, *([self.whitening] if self.whitening is not None else [])]
        with atomic_dir(path) as tmp:
            self.backbone.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            save_heads(tmp, pooling=self.pooling, hidden_size=self.hidden_size, dense=dense,
                       normalize=self.normalize, max_length=self.max_length, **self.st_config)


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
    if read_json(cfg).get("model_type") == "textcnn":
        from distill.textcnn import TextCNN

        return TextCNN.load(path)
    return SentenceEncoder.from_pretrained(path, **kwargs)

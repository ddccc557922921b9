"""SimBERT: a BERT encoder read as a UniLM seq2seq model, with a language-model head tied to the
word embeddings, and its training objective (generation loss + in-batch similarity loss).

Input layout: ``[CLS] a [SEP] b [SEP]``, segment 0 for ``[CLS] a [SEP]`` and 1 for ``b [SEP]``.
The UniLM mask keeps segment 0 bidirectional and blind to segment 1, so the [CLS] vector of the
pair is exactly a's sentence vector, and makes segment 1 causal, so b can be generated one token
at a time from a key/value cache (``distill.decoding``).

The transformer is run here, layer by layer, over the weights of a Hugging Face
``BertForMaskedLM``: one code path serves training (full sequences), cached decoding (one token
per step) and ONNX export, which is what makes cached and recomputed decoding agree.
The model directory is a plain ``BertForMaskedLM`` directory (safetensors + config + tokenizer).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.objectives.base import Example, Objective

__all__ = ["KVCache", "SimBERT", "SimBERTLoss", "unilm_mask"]


def unilm_mask(token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Boolean UniLM seq2seq mask, ``[batch, len, len]``: ``mask[b, i, j]`` is True where query
    ``i`` may attend key ``j``.

    Segment-0 tokens see all of segment 0; a segment-1 token sees all of segment 0 and the
    segment-1 tokens at or before it; padding (``attention_mask == 0``) is never attended.
    With ``c = cumsum(token_type_ids)`` that is ``c[j] <= c[i]``: ``c`` is 0 over segment 0 and
    counts segment-1 tokens after it.
    """
    if not torch.jit.is_tracing() and (token_type_ids.shape != attention_mask.shape or token_type_ids.dim() != 2):
        raise ValueError(
            f"token_type_ids and attention_mask must both be [batch, len], got "
            f"{tuple(token_type_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    c = torch.cumsum(token_type_ids.long(), dim=1)
    return (c[:, None, :] <= c[:, :, None]) & attention_mask.bool()[:, None, :]


class KVCache:
    """Keys and values of every layer, as named states ``layer.{i}.key`` / ``layer.{i}.value``
    of shape ``[batch, heads, length, head_dim]``, plus the key mask ``[batch, length]`` (True =
    a real token that later queries attend).

    ``update`` appends one forward pass's keys/values, ``advance`` grows the mask after the last
    layer, ``reorder`` gathers rows (beam indices) of every state; ``reset`` empties it.
    """

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.reset()

    def reset(self) -> None:
        self.keys: list[torch.Tensor | None] = [None] * self.num_layers
        self.values: list[torch.Tensor | None] = [None] * self.num_layers
        self.mask: torch.Tensor | None = None

    @classmethod
    def from_tensors(
        cls, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], mask: torch.Tensor
    ) -> KVCache:
        cache = cls(len(keys))
        cache.keys, cache.values, cache.mask = list(keys), list(values), mask.bool()
        return cache

    @property
    def length(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def get_layer_cache(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.keys[layer], self.values[layer]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys/values of ``layer``; return all keys/values of that layer."""
        pk, pv = self.keys[layer], self.values[layer]
        if pk is not None:
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def advance(self, new_mask: torch.Tensor) -> None:
        self.mask = new_mask.bool() if self.mask is None else torch.cat([self.mask, new_mask.bool()], 1)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` of every state (beam reordering, expansion, dropping rows)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.mask = self.mask.index_select(0, index)

    def states(self) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(self.num_layers):
            out[f"layer.{i}.key"], out[f"layer.{i}.value"] = self.keys[i], self.values[i]
        return out


class SimBERT(nn.Module):
    """BERT + tied LM head, run with the UniLM mask.

    ``hidden_states`` runs the transformer (whole sequences, or new tokens over a ``KVCache``),
    ``lm_logits`` maps hidden states to the vocabulary. As a sentence encoder (the protocol of
    ``distill.objectives.base``: ``tokenize``, ``forward -> [b, dim]``, ``dim``, ``save``) its
    vector is the [CLS] hidden state of ``[CLS] a [SEP]``.
    """

    def __init__(self, mlm: nn.Module, tokenizer: Any = None, max_length: int = 128) -> None:
        super().__init__()
        self.max_length = max_length
        self.mlm = mlm  # the only submodule: state_dict keys are those of BertForMaskedLM
        self.config = mlm.config
        self.tokenizer = tokenizer
        self.num_heads = self.config.num_attention_heads
        self.head_dim = self.config.hidden_size // self.num_heads
        self.num_layers = self.config.num_hidden_layers

    @property
    def bert(self) -> nn.Module:
        return self.mlm.bert

    @property
    def head(self) -> nn.Module:
        return self.mlm.cls.predictions

    @property
    def dim(self) -> int:
        return int(self.config.hidden_size)

    # -- persistence -------------------------------------------------------------------------
    @classmethod
    def from_encoder(cls, encoder: nn.Module) -> SimBERT:
        """Wrap a ``distill.model.SentenceEncoder`` over a BERT backbone: its weights, a fresh LM
        head tied to its word embeddings, its tokenizer and max length."""
        from transformers import BertForMaskedLM

        backbone = getattr(encoder, "backbone", None)
        if backbone is None or getattr(backbone.config, "model_type", None) != "bert":
            raise ValueError("SimBERT needs a BERT encoder (a SentenceEncoder over a BertModel)")
        mlm = BertForMaskedLM(backbone.config)
        state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("pooler.")}
        mlm.bert.load_state_dict(state, strict=False)
        mlm.tie_weights()
        return cls(mlm, encoder.tokenizer, getattr(encoder, "max_length", 128))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SimBERT:
        """Load a BERT directory; an encoder-only one (e.g. all-MiniLM-L6-v2) gets a fresh LM
        head whose decoder is tied to the word embeddings."""
        from transformers import AutoTokenizer, BertConfig, BertForMaskedLM
        from transformers.utils import logging as hf_logging

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a model directory (no config.json)")
        config = BertConfig.from_pretrained(path)
        if config.model_type != "bert":
            raise ValueError(f"SimBERT needs a BERT model, {path} is {config.model_type!r}")
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "newly initialized cls.*" is expected for encoders
        try:
            mlm = BertForMaskedLM.from_pretrained(path, config=config)
        finally:
            hf_logging.set_verbosity(verbosity)
        tokenizer = AutoTokenizer.from_pretrained(path)
        max_length = 128
        if (path / "sentence_bert_config.json").is_file():
            max_length = int(json.loads((path / "sentence_bert_config.json").read_text()).get("max_seq_length", 128))
        return cls(mlm, tokenizer, max_length)

    def save(self, path: str | Path) -> None:
        """A ``BertForMaskedLM`` directory (LM head included) that is also a sentence-transformers
        directory with [CLS] pooling, so encoder tools load its retrieval vectors; atomic."""
        from distill.io import atomic_dir, write_json

        st = "sentence_transformers.models."
        with atomic_dir(path) as tmp:
            self.mlm.save_pretrained(tmp)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            write_json(tmp / "sentence_bert_config.json", {"max_seq_length": self.max_length, "do_lower_case": False})
            write_json(tmp / "1_Pooling" / "config.json", {
                "word_embedding_dimension": self.dim, "pooling_mode_cls_token": True,
                "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            })
            write_json(tmp / "modules.json", [
                {"idx": 0, "name": "0", "path": "", "type": st + "Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": st + "Pooling"},
            ])

    save_pretrained = save

    # -- the transformer ---------------------------------------------------------------------
    def hidden_states(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final hidden states ``[batch, len, hidden]`` of ``input_ids`` ``[batch, len]``.

        Without ``cache`` the sequence is run whole under ``unilm_mask``. With a cache the new
        tokens also attend every real token already in it (right for segment-1 tokens, and for
        the source when the cache is empty); their keys/values are appended to it. Positions
        default to the number of real tokens in the cache plus 0, 1, ...
        """
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = unilm_mask(token_type_ids, attention_mask)
        past_mask = cache.mask if cache is not None else None
        if past_mask is not None:
            mask = torch.cat([past_mask[:, None, :].expand(-1, input_ids.shape[1], -1), mask], dim=2)
        if position_ids is None:
            start = past_mask.sum(1, keepdim=True) if past_mask is not None else 0
            position_ids = start + torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]

        emb = self.bert.embeddings
        x = emb.word_embeddings(input_ids) + emb.position_embeddings(position_ids)
        x = emb.dropout(emb.LayerNorm(x + emb.token_type_embeddings(token_type_ids)))
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(
            ~mask, torch.finfo(x.dtype).min
        )[:, None]  # [batch, 1, q, k]
        for i, layer in enumerate(self.bert.encoder.layer):
            x = self._layer(layer, x, bias, i, cache)
        if cache is not None:
            cache.advance(attention_mask)
        return x

    def _layer(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor, i: int, cache: KVCache | None) -> torch.Tensor:
        att = layer.attention.self
        b, t, _ = x.shape
        split = lambda y: y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(att.query(x)), split(att.key(x)), split(att.value(x))
        if cache is not None:
            k, v = cache.update(i, k, v)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias
        probs = att.dropout(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, -1)
        out = layer.attention.output
        x = out.LayerNorm(out.dropout(out.dense(ctx)) + x)
        ffn = layer.output
        return ffn.LayerNorm(ffn.dropout(ffn.dense(layer.intermediate(x))) + x)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of hidden states (the decoder shares the word-embedding matrix)."""
        return self.head(hidden)

    # -- the sentence-encoder protocol -------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[CLS] vectors ``[b, dim]``: with the UniLM mask, that of ``[CLS] a [SEP] b [SEP]`` is
        a's alone."""
        return self.hidden_states(input_ids, token_type_ids, attention_mask)[:, 0]

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """[CLS] vectors of ``texts`` as float32 ``[n, dim]``, in input order."""
        from distill.model import encode

        return encode(self, texts, batch_size)


class SimBERTLoss(Objective):
    """SimBERT objective on a batch of similar pairs ``(a_i, b_i)``.

    Every pair enters twice, as ``[CLS] a [SEP] b [SEP]`` and ``[CLS] b [SEP] a [SEP]`` (rows
    ``2i`` and ``2i + 1``). Loss = generation loss (cross-entropy of each token of the second
    segment, ``[SEP]`` included, predicted from the position before it) + similarity loss
    (cosine of the rows' [CLS] vectors times ``scale``, diagonal masked, cross-entropy with the
    partner row as label).

    Batch (``collate`` of ``Example((a, b))`` rows; reader ``pairs``): ``{"input_ids",
    "token_type_ids", "attention_mask"}``, tensors ``[2n, L]`` of the interleaved rows above.
    ``encoder`` is a ``SimBERT`` or a BERT ``SentenceEncoder`` (wrapped with a fresh tied LM head).
    """

    name = "simbert"
    data_format = "pairs"
    num_texts = 2
    min_batch_size = 2

    def __init__(self, encoder: nn.Module, scale: float = 30.0, max_length: int | None = None) -> None:
        model = encoder if isinstance(encoder, SimBERT) else SimBERT.from_encoder(encoder)
        super().__init__(model)
        self.scale = float(scale)
        self.max_length = max_length or model.max_length

    @classmethod
    def from_pretrained(cls, path: str | Path, scale: float = 30.0, max_length: int | None = None) -> SimBERTLoss:
        """The objective over ``SimBERT.from_pretrained(path)`` (what ``distill teach`` calls)."""
        model = SimBERT.from_pretrained(path)
        if max_length is not None:
            model.max_length = int(max_length)
        return cls(model, scale)

    @property
    def model(self) -> SimBERT:
        return self.encoder

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        return self.tokenize([ex.texts[0] for ex in examples], [ex.texts[1] for ex in examples])

    def tokenize(self, sentence1: Sequence[str], sentence2: Sequence[str]) -> dict[str, torch.Tensor]:
        if len(sentence1) != len(sentence2):
            raise ValueError(f"sentence1 and sentence2 differ in length: {len(sentence1)} vs {len(sentence2)}")
        if len(sentence1) < 2:
            raise ValueError(f"SimBERT's in-batch similarity needs at least 2 pairs per batch, got {len(sentence1)}")
        first = [s for a, b in zip(sentence1, sentence2, strict=True) for s in (a, b)]
        second = [s for a, b in zip(sentence1, sentence2, strict=True) for s in (b, a)]
        enc = self.model.tokenizer(
            first, second, padding=True, truncation="longest_first",
            max_length=self.max_length, return_tensors="pt",
        )
        return {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")}

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        ids, types, mask = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
        hidden = self.model.hidden_states(ids, types, mask)
        return self.generation_loss(hidden, ids, types, mask) + self.similarity_loss(hidden[:, 0])

    def generation_loss(self, hidden: torch.Tensor, ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = (types[:, 1:] == 1) & mask[:, 1:].bool()  # tokens of b [SEP]
        logits = self.model.lm_logits(hidden[:, :-1][target])  # predicted from the position before
        return F.cross_entropy(logits.float(), ids[:, 1:][target])

    def similarity_loss(self, cls: torch.Tensor) -> torch.Tensor:
        v = F.normalize(cls.float(), dim=-1)
        sim = v @ v.T * self.scale
        n = sim.shape[0]
        sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=sim.device), -1e12)
        idx = torch.arange(n, device=sim.device)
        labels = idx + 1 - 2 * (idx % 2)  # partner row: 0<->1, 2<->3, ...
        return F.cross_entropy(sim, labels)

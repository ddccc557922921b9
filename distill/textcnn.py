"""TextCNN sentence encoder: token embeddings -> parallel 1-D convolutions -> masked pooling -> linear.

``forward(input_ids, attention_mask) -> [b, out_dim]`` un-normalized sentence vectors. The forward
pass is plain embedding / conv1d / masked max / masked mean / linear, so it exports to ONNX.
Padding positions are zeroed before the convolutions and ignored by pooling, so a sentence's vector
does not depend on how much padding its batch has.

Saved as ``config.json`` (``"model_type": "textcnn"``), ``model.safetensors`` and ``tokenizer.json``
(a Hugging Face fast tokenizer: a teacher's, or a character-level one from
:func:`build_char_tokenizer`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distill.io import atomic_dir, write_json

TextCNNPooling = Literal["max", "mean", "max+mean"]


@dataclass
class TextCNNConfig:
    vocab_size: int
    embed_dim: int = 300
    kernel_sizes: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    num_filters: int = 256
    pooling: TextCNNPooling = "max"
    out_dim: int = 384
    dropout: float = 0.1
    max_length: int = 128
    pad_id: int = 0
    model_type: str = "textcnn"


class TextCNN(nn.Module):
    def __init__(self, config: TextCNNConfig, tokenizer: object | None = None) -> None:
        super().__init__()
        if config.pooling not in ("max", "mean", "max+mean"):
            raise ValueError(
                f"unknown TextCNN pooling {config.pooling!r}; choose max, mean or max+mean"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.embedding = nn.Embedding(
            config.vocab_size, config.embed_dim, padding_idx=config.pad_id
        )
        self.convs = nn.ModuleList(
            nn.Conv1d(config.embed_dim, config.num_filters, k) for k in config.kernel_sizes
        )
        n_pool = 2 if config.pooling == "max+mean" else 1
        self.dropout = nn.Dropout(config.dropout)
        self.proj = nn.Linear(
            n_pool * len(config.kernel_sizes) * config.num_filters, config.out_dim
        )

    @property
    def dim(self) -> int:
        return self.config.out_dim

    @classmethod
    def from_teacher(
        cls, teacher_dir: str | Path, embed_dim: int | None = None, **config: object
    ) -> TextCNN:
        """A TextCNN with the teacher's tokenizer and word embeddings (PCA-projected to ``embed_dim``
        when it is smaller than the teacher's width)."""
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        teacher_dir = Path(teacher_dir)
        tok_file = teacher_dir / "tokenizer.json"
        weights = teacher_dir / "model.safetensors"
        if not tok_file.is_file() or not weights.is_file():
            raise ValueError(
                f"{teacher_dir} is not a supported teacher: needs tokenizer.json and model.safetensors"
            )
        tokenizer = Tokenizer.from_file(str(tok_file))
        keys = [k for k in load_file(weights) if k.endswith("word_embeddings.weight")]
        if not keys:
            raise ValueError(f"{weights}: no word_embeddings.weight tensor")
        matrix = load_file(weights)[keys[0]].float()
        if embed_dim is not None and embed_dim < matrix.shape[1]:
            matrix = pca_project(matrix, embed_dim)
        pad_id = tokenizer.token_to_id("[PAD]")
        cfg = TextCNNConfig(
            vocab_size=matrix.shape[0], embed_dim=matrix.shape[1], pad_id=pad_id or 0, **config
        )
        model = cls(cfg, tokenizer)
        with torch.no_grad():
            model.embedding.weight.copy_(matrix)
        return model

    @classmethod
    def with_tokenizer(cls, tokenizer_file: str | Path, **config: object) -> TextCNN:
        """A randomly initialized TextCNN over an existing ``tokenizer.json`` (no teacher weights)."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        pad_id = tokenizer.token_to_id("[PAD]") or 0
        return cls(
            TextCNNConfig(vocab_size=tokenizer.get_vocab_size(), pad_id=pad_id, **config), tokenizer
        )

    @classmethod
    def with_char_vocab(
        cls, sentences: Iterable[str], min_freq: int = 1, **config: object
    ) -> TextCNN:
        """A randomly initialized TextCNN over a character vocabulary built from ``sentences``."""
        tokenizer = build_char_tokenizer(sentences, min_freq=min_freq)
        return cls(
            TextCNNConfig(vocab_size=tokenizer.get_vocab_size(), pad_id=0, **config), tokenizer
        )

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        tok = self.tokenizer
        # the teacher's tokenizer.json may ship its own padding/truncation: set both explicitly
        tok.enable_padding(
            pad_id=self.config.pad_id, pad_token=tok.id_to_token(self.config.pad_id) or "[PAD]"
        )
        tok.enable_truncation(max_length=self.config.max_length)
        enc = tok.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        mask = attention_mask.unsqueeze(1).float()  # [b, 1, L]
        x = self.dropout(self.embedding(input_ids)).transpose(1, 2) * mask  # [b, e, L], pads zeroed
        pooled = []
        for conv in self.convs:
            # right-pad by k-1 so position t sees tokens t..t+k-1 (zeros past the end): length L
            c = F.relu(conv(F.pad(x, (0, conv.kernel_size[0] - 1))))  # [b, f, L]
            if self.config.pooling in ("max", "max+mean"):
                pooled.append(c.masked_fill(mask == 0, float("-inf")).amax(dim=2))
            if self.config.pooling in ("mean", "max+mean"):
                pooled.append((c * mask).sum(dim=2) / mask.sum(dim=2).clamp(min=1.0))
        return self.proj(self.dropout(torch.cat(pooled, dim=1)))

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        from distill.model import encode

        return encode(self, texts, batch_size)

    def folded(self) -> FoldedTextCNN:
        """The same function with the embedding folded into the convolutions (see
        :class:`FoldedTextCNN`): what the exported bundle runs."""
        return FoldedTextCNN(self)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        with atomic_dir(path) as tmp:
            write_json(tmp / "config.json", asdict(self.config))
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"))
            self.tokenizer.save(str(tmp / "tokenizer.json"))

    @classmethod
    def load(cls, path: str | Path) -> TextCNN:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ValueError(f"{path} is not a TextCNN directory: no config.json")
        raw = json.loads(cfg_file.read_text())
        if raw.get("model_type") != "textcnn":
            raise ValueError(
                f"{path} is not a TextCNN directory: model_type is {raw.get('model_type')!r}"
            )
        model = cls(TextCNNConfig(**raw), Tokenizer.from_file(str(path / "tokenizer.json")))
        model.load_state_dict(load_file(path / "model.safetensors"))
        return model


class FoldedTextCNN(nn.Module):
    """A trained :class:`TextCNN` rewritten so that inference needs no convolution.

    A width-k convolution over embeddings is linear in them before its ReLU:
    ``conv[t] = b + sum_j W_j @ E[id[t + j]]``. Each product ``W_j @ E[v]`` depends on the token
    ``v`` alone, so it is computed once per vocabulary entry: ``table[v] = [E[v] @ W_j^T for every
    (width, j)]``, ``[vocab + 1, filters * sum(widths)]``. A sentence then costs one row lookup per
    token and ``sum(widths) - len(widths)`` additions of shifted slices, instead of
    ``2 * embed * filters * sum(widths)`` multiply-adds per token. Row ``vocab`` is all zeros:
    padding positions and positions past the end look it up, which is what zeroing the embeddings
    under the mask does in :class:`TextCNN`. Evaluation-mode only (no dropout).
    """

    def __init__(self, model: TextCNN) -> None:
        super().__init__()
        cfg = model.config
        self.config = cfg
        self.widths = [int(k) for k in cfg.kernel_sizes]
        self.filters = cfg.num_filters
        emb = model.embedding.weight.detach().float()
        blocks = []
        with torch.no_grad():
            for conv in model.convs:
                w = conv.weight.detach().float()  # [filters, embed, k]
                blocks.extend(emb @ w[:, :, j].T for j in range(w.shape[2]))
            table = torch.cat(blocks, dim=1)
            table = torch.cat([table, table.new_zeros(1, table.shape[1])], dim=0)
        self.zero_row = emb.shape[0]
        self.table = nn.Parameter(table, requires_grad=False)
        self.biases = nn.ParameterList(
            nn.Parameter(conv.bias.detach().float().clone(), requires_grad=False)
            for conv in model.convs
        )
        self.proj = model.proj

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        length = input_ids.shape[1]
        ids = torch.where(attention_mask > 0, input_ids, torch.full_like(input_ids, self.zero_row))
        ids = F.pad(ids, (0, max(self.widths) - 1), value=self.zero_row)
        g = F.embedding(ids, self.table)  # [b, L + kmax - 1, filters * sum(widths)]
        invalid = (attention_mask == 0).unsqueeze(-1)  # [b, L, 1]
        keep = attention_mask.unsqueeze(-1).float()
        pooled = []
        col, f = 0, self.filters
        for k, bias in zip(self.widths, self.biases, strict=True):
            acc = g[:, 0:length, col:col + f]
            for j in range(1, k):
                acc = acc + g[:, j:j + length, col + j * f:col + (j + 1) * f]
            col += k * f
            c = F.relu(acc + bias)  # [b, L, filters]
            if self.config.pooling in ("max", "max+mean"):
                pooled.append(c.masked_fill(invalid, float("-inf")).amax(dim=1))
            if self.config.pooling in ("mean", "max+mean"):
                pooled.append((c * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0))
        return self.proj(torch.cat(pooled, dim=1))


def pca_project(matrix: Tensor, k: int) -> Tensor:
    """Rows of ``matrix`` [v, d] projected onto their first k principal components: [v, k]."""
    centered = matrix - matrix.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    return centered @ vh[:k].T


def build_char_tokenizer(sentences: Iterable[str], min_freq: int = 1) -> object:
    """A character-level ``tokenizers.Tokenizer``: NFKC + lowercase, one token per non-space
    character, ``[PAD]`` = 0 and ``[UNK]`` = 1."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer

    tok = Tokenizer(WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
    )
    trainer = WordLevelTrainer(
        special_tokens=["[PAD]", "[UNK]"], min_frequency=min_freq, show_progress=False
    )
    tok.train_from_iterator(sentences, trainer=trainer)
    return tok

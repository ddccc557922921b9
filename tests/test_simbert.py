"""SimBERT: the UniLM mask, the model over BertForMaskedLM weights, and the SimBERT objective.

Tiny random BERTs built here; tolerances: 1e-5 absolute on float32 hidden states and losses.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast  # noqa: E402

from distill.simbert import KVCache, SimBERT, SimBERTLoss, unilm_mask  # noqa: E402

WORDS = "a man is playing guitar the woman cat dog sits on mat plays piano runs fast slow big small".split()


def tiny_tokenizer() -> BertTokenizerFast:
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True)


@pytest.fixture()
def tokenizer():
    return tiny_tokenizer()


def tiny_simbert(tokenizer=None, vocab_size: int = 5 + len(WORDS), seed: int = 0) -> SimBERT:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, initializer_range=0.2,
    )
    return SimBERT(BertForMaskedLM(config), tokenizer).eval()


def test_unilm_mask_exact_pattern():
    # [CLS] a1 [SEP] b1 b2 [SEP] [PAD] [PAD]
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1, 0, 0],  # padding rows: never attended, their own output unused
            [1, 1, 1, 1, 1, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(unilm_mask(types, attn)[0], expected)


def test_unilm_mask_never_attends_padding_and_matches_definition():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n0, n1, pad = (int(x) for x in torch.randint(1, 6, (3,), generator=g))
        types = torch.tensor([[0] * n0 + [1] * n1 + [0] * pad])
        attn = torch.tensor([[1] * (n0 + n1) + [0] * pad])
        m = unilm_mask(types, attn)[0]
        assert not m[:, n0 + n1 :].any()
        for i in range(n0 + n1):
            for j in range(n0 + n1):
                want = j < n0 if i < n0 else (j < n0 or j <= i)
                assert bool(m[i, j]) == want, (n0, n1, i, j)


def test_unilm_mask_rejects_bad_shapes():
    with pytest.raises(ValueError, match="batch, len"):
        unilm_mask(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))


def test_segment_zero_matches_hugging_face_bert():
    model = tiny_simbert()
    ids = torch.randint(5, model.config.vocab_size, (2, 7))
    attn = torch.ones_like(ids)
    attn[1, 5:] = 0
    ours = model.hidden_states(ids, attention_mask=attn)
    ref = model.bert(input_ids=ids, attention_mask=attn).last_hidden_state
    real = attn.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=1e-5, rtol=0)


def test_cls_of_pair_equals_cls_of_first_sentence(tokenizer):
    model = tiny_simbert(tokenizer)
    single = tokenizer(["a man is playing guitar"], return_tensors="pt")
    pair = tokenizer(["a man is playing guitar"], ["the man plays piano"], return_tensors="pt")
    n = single["input_ids"].shape[1]
    assert torch.equal(pair["input_ids"][:, :n], single["input_ids"])
    h_single = model.hidden_states(single["input_ids"], single["token_type_ids"], single["attention_mask"])
    h_pair = model.hidden_states(pair["input_ids"], pair["token_type_ids"], pair["attention_mask"])
    torch.testing.assert_close(h_pair[:, :n], h_single, atol=1e-5, rtol=0)  # all of segment 0
    torch.testing.assert_close(
        model(pair["input_ids"], pair["attention_mask"], pair["token_type_ids"]),
        model(single["input_ids"], single["attention_mask"]), atol=1e-5, rtol=0,
    )


def test_padding_does_not_change_outputs(tokenizer):
    model = tiny_simbert(tokenizer)
    enc = tokenizer(["a cat"], ["the big dog sits on the mat"], return_tensors="pt")
    h = model.hidden_states(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
    pad = lambda t, v: torch.cat([t, torch.full((1, 3), v)], 1)  # noqa: E731
    hp = model.hidden_states(pad(enc["input_ids"], 0), pad(enc["token_type_ids"], 0), pad(enc["attention_mask"], 0))
    torch.testing.assert_close(hp[:, : h.shape[1]], h, atol=1e-5, rtol=0)


def test_lm_head_is_tied_to_word_embeddings():
    model = tiny_simbert()
    assert model.head.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_kv_cache_matches_full_sequence_and_reorders():
    model = tiny_simbert()
    ids = torch.randint(5, model.config.vocab_size, (3, 6))
    types = torch.tensor([[0, 0, 0, 1, 1, 1]] * 3)
    full = model.hidden_states(ids, types)
    cache = KVCache(model.num_layers)
    parts = [model.hidden_states(ids[:, :3], types[:, :3], cache=cache)]
    for t in range(3, 6):
        parts.append(model.hidden_states(ids[:, t : t + 1], types[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
    assert cache.length == 6 and set(cache.states()) == {f"layer.{i}.{kv}" for i in range(2) for kv in ("key", "value")}
    before = cache.states()
    cache.reorder(torch.tensor([2, 2, 0, 1]))
    assert torch.equal(cache.states()["layer.1.value"], before["layer.1.value"][[2, 2, 0, 1]])
    assert cache.mask.shape == (4, 6)
    cache.reset()
    assert cache.length == 0


def _direct_simbert_loss(model, enc, scale=30.0):
    """Token by token, row by row: the formulas of METHODS.md."""
    hidden = model.hidden_states(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
    terms = []
    for r in range(hidden.shape[0]):
        for p in range(1, hidden.shape[1]):
            if enc["token_type_ids"][r, p] == 1 and enc["attention_mask"][r, p] == 1:
                logp = torch.log_softmax(model.lm_logits(hidden[r, p - 1]), -1)
                terms.append(-logp[enc["input_ids"][r, p]])
    gen = torch.stack(terms).mean()
    v = hidden[:, 0]
    n = v.shape[0]
    sims = []
    for i in range(n):
        row = torch.stack([
            torch.tensor(-1e12) if i == j else scale * F.cosine_similarity(v[i], v[j], dim=0) for j in range(n)
        ])
        partner = i + 1 if i % 2 == 0 else i - 1
        sims.append(-torch.log_softmax(row, 0)[partner])
    return gen + torch.stack(sims).mean()


def test_simbert_loss_equals_direct_computation(tokenizer):
    from distill.objectives.base import Example

    model = tiny_simbert(tokenizer)
    objective = SimBERTLoss(model)
    pairs = [("a man is playing guitar", "the man plays guitar"), ("a cat sits on the mat", "the cat sits"),
             ("a dog runs fast", "the big dog runs")]
    batch = objective.collate([Example(p) for p in pairs])
    # interleaved rows: (a0, b0), (b0, a0), (a1, b1), ...
    assert batch["input_ids"].shape[0] == 6
    first = tokenizer.decode(batch["input_ids"][1][batch["token_type_ids"][1] == 0], skip_special_tokens=True)
    assert first == pairs[0][1]
    loss = objective.loss(batch)
    torch.testing.assert_close(loss, _direct_simbert_loss(model, batch), atol=1e-5, rtol=1e-5)
    loss.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad is not None


def test_simbert_loss_rejects_small_batches(tokenizer):
    from distill.objectives.base import Example

    objective = SimBERTLoss(tiny_simbert(tokenizer))
    with pytest.raises(ValueError, match="at least 2"):
        objective.collate([Example(("a cat", "the cat"))])


def test_save_and_load_roundtrip(tokenizer, tmp_path):
    model = tiny_simbert(tokenizer)
    model.save(tmp_path / "m")
    loaded = SimBERT.from_pretrained(tmp_path / "m").eval()
    assert loaded.head.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    enc = tokenizer(["a cat"], ["the cat sits"], return_tensors="pt")
    args = (enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
    torch.testing.assert_close(
        loaded.lm_logits(loaded.hidden_states(*args)), model.lm_logits(model.hidden_states(*args)), atol=1e-5, rtol=0
    )
    assert (tmp_path / "m" / "1_Pooling" / "config.json").is_file()  # CLS pooling for encoder tools


def test_from_pretrained_rejects_non_model_dir(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        SimBERT.from_pretrained(tmp_path)

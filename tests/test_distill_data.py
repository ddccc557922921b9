"""Data readers: each format, and file:line errors for malformed or empty files."""

from __future__ import annotations

import pytest

from distill.data import (
    read_examples,
    read_labeled_pairs,
    read_nli_triplets,
    read_pairs,
    read_scored_pairs,
    read_sentences,
)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_scored_pairs_stsb_and_three_columns(tmp_path):
    stsb = write(
        tmp_path,
        "a.csv",
        'g\tf\t2012\t1\t3.8\tA "quoted" man.\tA man.\n\ng\tf\t2012\t2\t0\tx\ty\tsrc1\tsrc2\n',
    )
    rows = read_scored_pairs(stsb)
    assert [(r.texts, r.label) for r in rows] == [
        (('A "quoted" man.', "A man."), 3.8),
        (("x", "y"), 0.0),
    ]
    zh = write(tmp_path, "b.data", "你好\t您好\t1\n")
    assert read_scored_pairs(zh)[0].label == 1.0


def test_scored_pairs_errors_name_file_and_line(tmp_path):
    bad = write(tmp_path, "bad.csv", "a\tb\t1\nonly two\tcols\n")
    with pytest.raises(ValueError, match=r"bad.csv:2:"):
        read_scored_pairs(bad)
    nan = write(tmp_path, "nan.tsv", "a\tb\tx\n")
    with pytest.raises(ValueError, match=r"nan.tsv:1: score is not a number"):
        read_scored_pairs(nan)
    with pytest.raises(ValueError, match=r"empty.tsv: no rows"):
        read_scored_pairs(write(tmp_path, "empty.tsv", "\n\n"))


def test_nli_triplets(tmp_path):
    p = write(tmp_path, "nli.csv", 'sent0,sent1,hard_neg\n"A, b",c,d\ne,f,g\n')
    assert [r.texts for r in read_nli_triplets(p)] == [("A, b", "c", "d"), ("e", "f", "g")]
    assert [(r.texts, r.label) for r in read_labeled_pairs(p)][:2] == [
        (("A, b", "c"), 0),
        (("A, b", "d"), 2),
    ]
    with pytest.raises(ValueError, match=r"nli2.csv:3:"):
        read_nli_triplets(write(tmp_path, "nli2.csv", "sent0,sent1,hard_neg\na,b,c\nd,e\n"))
    with pytest.raises(ValueError, match=r"nli3.csv:1: expected header"):
        read_nli_triplets(write(tmp_path, "nli3.csv", "a,b,c\n"))


def test_pairs_sentences_and_labeled_tsv(tmp_path):
    p = write(tmp_path, "p.tsv", "sentence1\tsentence2\tscore\na\tb\t4.2\n")
    assert read_pairs(p)[0].texts == ("a", "b")
    with pytest.raises(ValueError, match=r"p2.tsv:3:"):
        read_pairs(write(tmp_path, "p2.tsv", "sentence1\tsentence2\na\tb\nlonely\n"))
    assert [r.texts for r in read_sentences(write(tmp_path, "s.txt", "one\n\n two \n"))] == [
        ("one",),
        ("two",),
    ]
    with pytest.raises(ValueError, match="no rows"):
        read_sentences(write(tmp_path, "s2.txt", ""))
    assert read_labeled_pairs(write(tmp_path, "l.tsv", "a\tb\t1\n"))[0].label == 1
    with pytest.raises(ValueError, match=r"l2.tsv:1:"):
        read_labeled_pairs(write(tmp_path, "l2.tsv", "a\tb\tyes\n"))


def test_read_examples_dispatch(tmp_path):
    with pytest.raises(ValueError, match="sentences"):
        read_examples(tmp_path / "x", "images")
    with pytest.raises(FileNotFoundError):
        read_examples(tmp_path / "missing.txt", "sentences")


def test_shipped_corpus_holds_no_stsb_dev_or_test_sentence_even_retokenized():
    """The main job reports STS-B test and picks checkpoints on dev: neither may be in its corpus.
    MRPC and SNLI hold copies of STS-B sentences tokenized differently ("do n't", spaces before
    punctuation), so the check compares letters and digits only."""
    import re

    from distill.sts import load_stsb
    from distill.students import CORPUS, read_corpus

    def key(s: str) -> str:  # independent of distill.sts.sentence_key
        return "".join(ch for ch in s.lower() if ch.isascii() and ch.isalnum())

    held = {key(s) for split in ("dev", "test") for p in [load_stsb(split)] for s in p.sentences1 + p.sentences2}
    corpus = read_corpus(CORPUS)
    leaked = [s for s in corpus if key(s) in held]
    assert len(corpus) > 60_000 and not leaked, leaked[:5]
    assert re.sub(r"[^a-z0-9]+", "", "Do n't , go !".lower()) == key("Don't go!")

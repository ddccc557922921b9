"""Readers for training data. Each returns ``list[Example]``; a malformed line raises
``ValueError("FILE:LINE: ...")`` and an empty file raises ``ValueError("FILE: no rows")``.

Formats (``data_format`` of an objective):
    scored-pairs    STS-B format (TAB, score in column 4, sentences in 5 and 6) or a 3-column TSV
                    ``sentence1 TAB sentence2 TAB score`` (the Chinese sets); label = float score
    triplets        CSV with header ``sent0,sent1,hard_neg`` (SimCSE NLI format); no label
    labeled-pairs   the NLI triplet CSV expanded to (sent0, sent1, 0 entailment) and
                    (sent0, hard_neg, 2 contradiction), or a 3-column TSV ``s1 TAB s2 TAB int label``
    pairs           TSV with a header whose first two columns are the two sentences (paraphrases)
    sentences       one sentence per line (blank lines skipped)
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from distill.objectives.base import Example
from fastemb.sts import read_scored_pairs as read_sts

NLI_HEADER = ["sent0", "sent1", "hard_neg"]


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    with path.open(encoding="utf-8") as f:
        return [(i, line.rstrip("\n").rstrip("\r")) for i, line in enumerate(f, start=1)]


def _nonempty(path: Path, rows: list[Example]) -> list[Example]:
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def read_scored_pairs(path: str | Path) -> list[Example]:
    pairs = read_sts(path)  # one reader of both formats (fastemb.sts)
    return [Example((a, b), score)
            for a, b, score in zip(pairs.sentences1, pairs.sentences2, pairs.scores.tolist(), strict=True)]


def read_nli_triplets(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    rows: list[Example] = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: no rows")
        if [h.strip() for h in header[:3]] != NLI_HEADER:
            raise ValueError(
                f"{path}:1: expected header {','.join(NLI_HEADER)}, got {','.join(header)!r}"
            )
        for row in reader:
            lineno = reader.line_num
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) < 3 or not all(c.strip() for c in row[:3]):
                raise ValueError(
                    f"{path}:{lineno}: expected 3 non-empty columns sent0,sent1,hard_neg"
                )
            rows.append(Example(tuple(row[:3])))
    return _nonempty(path, rows)


def read_labeled_pairs(path: str | Path) -> list[Example]:
    path = Path(path)
    first = _lines(path)[:1]
    if first and first[0][1].split(",")[:3] == NLI_HEADER:
        rows = []
        for ex in read_nli_triplets(path):
            a, pos, neg = ex.texts
            rows += [Example((a, pos), 0), Example((a, neg), 2)]
        return rows
    rows = []
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 3 or not cols[2].strip().isdigit():
            raise ValueError(
                f"{path}:{lineno}: expected 'sentence1<TAB>sentence2<TAB>integer label'"
            )
        rows.append(Example((cols[0], cols[1]), int(cols[2])))
    return _nonempty(path, rows)


def read_pairs(path: str | Path) -> list[Example]:
    path = Path(path)
    lines = _lines(path)
    rows: list[Example] = []
    for lineno, line in lines[1:]:  # header
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            raise ValueError(f"{path}:{lineno}: expected two non-empty tab-separated sentences")
        rows.append(Example((cols[0], cols[1])))
    return _nonempty(path, rows)


def read_sentences(path: str | Path) -> list[Example]:
    path = Path(path)
    rows = [Example((line.strip(),)) for _, line in _lines(path) if line.strip()]
    return _nonempty(path, rows)


READERS: dict[str, Callable[[str | Path], list[Example]]] = {
    "scored-pairs": read_scored_pairs,
    "triplets": read_nli_triplets,
    "labeled-pairs": read_labeled_pairs,
    "pairs": read_pairs,
    "sentences": read_sentences,
}


def read_examples(path: str | Path, data_format: str) -> list[Example]:
    if data_format not in READERS:
        raise ValueError(f"unknown data format {data_format!r}; choose one of {', '.join(READERS)}")
    return READERS[data_format](path)

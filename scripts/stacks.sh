#!/usr/bin/env bash
# The tests marked `stack` on the other stacks pyproject.toml promises (.ci/run runs both):
#
#   bash scripts/stacks.sh newest floors     # or one of them; arguments after -- go to pytest
#
#   newest   the newest torch and transformers pip resolves (torch unpinned: where no CPU wheel
#            index is set, that is the CUDA build, several GB; it runs on a CPU)
#   floors   pyproject.toml's floors: torch 2.11.0, transformers 5.20.0
#
#   GROUNDED_SEG_STACKS   where their environments live (default: ~/.cache/grounded_seg/stacks)
#
# Each stack gets its own environment (scripts/env.sh with GROUNDED_SEG_TORCH and
# GROUNDED_SEG_TRANSFORMERS), built once and rebuilt when pyproject.toml changes. The parity tests'
# oracle is the one scripts/test.sh uses (built there when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root="${GROUNDED_SEG_STACKS:-${XDG_CACHE_HOME:-$HOME/.cache}/grounded_seg/stacks}"
stacks=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do stacks+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
for stack in "${stacks[@]}"; do
    case "$stack" in
        newest) torch="torch" transformers="transformers" ;;
        floors) torch="torch==2.11.0" transformers="transformers==5.20.0" ;;
        *) echo "stacks.sh: expected newest or floors, got $stack" >&2; exit 2 ;;
    esac
    began=$(date +%s)
    GROUNDED_SEG_VENV="$root/$stack" GROUNDED_SEG_TORCH="$torch" \
        GROUNDED_SEG_TRANSFORMERS="$transformers" bash scripts/test.sh -m stack -p no:cacheprovider "$@"
    "$root/$stack/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|transformers) '
    echo "the $stack stack ($torch, $transformers) took $(( $(date +%s) - began )) s"
done

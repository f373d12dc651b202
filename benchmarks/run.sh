#!/usr/bin/env bash
# One command, from a fresh clone: build what is missing, then run benchmarks/vs_reference.py
# (grounded_seg against the official Grounded-SAM pipeline) and write benchmarks/RESULTS.md.
#
#   bash benchmarks/run.sh                      # CPU: cases 1, 3, 4, 5, 3 repeats
#   bash benchmarks/run.sh --slow               # and case 2 (SAM-H)
#   bash benchmarks/run.sh --device cuda --slow --repeats 10
#
# grounded_seg's environment: made by scripts/env.sh when missing ($GROUNDED_SEG_VENV, default
# .venv). The reference's environment: $GROUNDED_SEG_ORACLE_PYTHON, or the one scripts/test.sh
# builds once ($GROUNDED_SEG_ORACLE, default ~/.cache/grounded_seg/oracle-env).
# Run it alone on the machine: the two pipelines are timed against each other.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/env.sh
. scripts/env.sh

oracle="${GROUNDED_SEG_ORACLE_PYTHON:-}"
if [ -z "$oracle" ]; then
    dest="${GROUNDED_SEG_ORACLE:-${XDG_CACHE_HOME:-$HOME/.cache}/grounded_seg/oracle-env}"
    [ -f "$dest/.complete" ] || { mkdir -p "$(dirname "$dest")"; bash tests/oracle/make_env.sh "$dest"; }
    oracle="$dest/bin/python"
fi

exec python benchmarks/vs_reference.py --oracle-python "$oracle" "$@"

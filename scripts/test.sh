#!/usr/bin/env bash
# README's test command, from a fresh clone: makes grounded_seg's environment and the official
# packages' environment (the parity tests' oracle) when they are missing, then runs pytest.
#
#   bash scripts/test.sh                 # everything (about 12 min on 2 cores the first time,
#                                        # building both environments; then about 6 min)
#   bash scripts/test.sh -k threads -x   # arguments go to pytest
#
#   GROUNDED_SEG_ORACLE        where the oracle environment lives (default:
#                              ~/.cache/grounded_seg/oracle-env; built once, then reused)
#   GROUNDED_SEG_NO_ORACLE=1   skip building it (the 34 parity tests then skip, saying why)
#   GROUNDED_SEG_NO_BROWSER=1  do not install Debian's chromium for the browser test (see
#                              scripts/browser.sh; without it that test skips, saying why)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
. scripts/env.sh
# shellcheck source=scripts/browser.sh
. scripts/browser.sh
if [ -z "${GROUNDED_SEG_NO_ORACLE:-}" ] && [ -z "${GROUNDED_SEG_ORACLE_PYTHON:-}" ]; then
    oracle="${GROUNDED_SEG_ORACLE:-${XDG_CACHE_HOME:-$HOME/.cache}/grounded_seg/oracle-env}"
    if [ ! -f "$oracle/.complete" ]; then
        echo "building the oracle environment in $oracle (once: a few minutes)" >&2
        mkdir -p "$(dirname "$oracle")"
        bash tests/oracle/make_env.sh "$oracle"
    fi
    export GROUNDED_SEG_ORACLE_PYTHON="$oracle/bin/python"
fi
exec python -m pytest "$@"

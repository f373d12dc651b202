"""The parity tests' oracle environment: its python (a fixture) and running a runner in it.

``GROUNDED_SEG_ORACLE_PYTHON`` names the python of the environment holding the official packages
(``scripts/test.sh`` builds it once with ``tests/oracle/make_env.sh`` and sets it); without it the
parity tests skip locally and fail in CI.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import STRICT

ORACLE_ENV = "GROUNDED_SEG_ORACLE_PYTHON"
ORACLE_DIR = Path(__file__).parent / "oracle"
RUNNER = ORACLE_DIR / "official_runner.py"


@pytest.fixture(scope="module")
def oracle_python() -> str:
    path = os.environ.get(ORACLE_ENV, "")
    if not path or not Path(path).is_file():
        message = (
            "the parity tests need the official packages' environment: run the tests with "
            f"`bash scripts/test.sh`, which builds it once, or set {ORACLE_ENV} to its python "
            "(`bash tests/oracle/make_env.sh DEST` builds one)"
        )
        if STRICT:
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_oracle(python: str, *args: str, runner: Path = RUNNER) -> None:
    """Run ``runner`` (default ``official_runner.py``) with ``args`` in the oracle environment,
    offline and without this environment's packages; the test fails with its stderr if it does."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)  # the oracle must not see this environment's packages
    done = subprocess.run(
        [python, str(runner), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"the oracle failed ({' '.join(args[:1])}):\n{done.stderr[-3000:]}")

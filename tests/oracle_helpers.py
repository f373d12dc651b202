"""The parity tests' oracle environment: its python (a fixture) and running a runner in it.

``GROUNDED_SEG_ORACLE_PYTHON`` names the python of the environment holding the official packages
(``scripts/test.sh`` builds it once with ``tests/oracle/make_env.sh`` and sets it); without it the
parity tests skip locally and fail in CI.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STRICT

ORACLE_ENV = "GROUNDED_SEG_ORACLE_PYTHON"
LOGIT_TOL = 1e-3  # the tolerance on low-res mask logits
# Masks are the logits > 0 after bilinear upsampling, which cannot enlarge a logit difference; with
# the measured low-res differences of ~2e-5, a pixel can flip only where the official logit is that
# close to 0 (measured: every differing pixel has |logit| < 1e-5). Beyond this, masks are identical.
MASK_FLIP_TOL = 1e-4

PARITY_BOXES = [[30, 40, 300, 350], [200, 10, 590, 200], [5, 5, 100, 100]]
"""Box prompts (xyxy pixels of the parity image) shared by the segmenter parity tests."""

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


def write_parity_image(folder: Path) -> Path:
    """``folder/image.png``: a 400 x 600 RGB image of smooth random colour, the parity tests'
    input (resized to 800 x 1200 by Grounding DINO, 683 x 1024 by SAM, 1024 x 1024 by SAM 2)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    small = (rng.random((48, 72, 3)) * 255).astype(np.uint8)
    path = Path(folder) / "image.png"
    Image.fromarray(small).resize((600, 400), Image.Resampling.BILINEAR).save(path)
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


def max_diff(a: torch.Tensor, b: torch.Tensor, what: str = "") -> float:
    """Max abs difference; printed (``pytest -s``) so the measured figures can be quoted."""
    assert a.shape == b.shape, (a.shape, b.shape)
    value = float((a.float() - b.float()).abs().max())
    if what:
        print(f"parity: {what}: max abs diff {value:.3g}")
    return value


def assert_masks_match(ours: np.ndarray, official_logits: torch.Tensor) -> None:
    """Binarised masks are identical at every pixel whose official logit is farther than
    ``MASK_FLIP_TOL`` from the threshold; the few others (float rounding across two torch builds
    and two attention implementations) are counted and printed."""
    official = (official_logits > 0).numpy()
    assert ours.shape == official.shape
    differ = ours != official
    worst = float(official_logits.abs().numpy()[differ].max()) if differ.any() else 0.0
    print(
        f"parity: masks: {int(differ.sum())} of {differ.size} pixels differ; the largest "
        f"|official logit| among them is {worst:.3g}"
    )
    near = (official_logits.abs() <= MASK_FLIP_TOL).numpy()
    assert not (differ & ~near).any(), (
        f"{int((differ & ~near).sum())} pixels differ where the official logit is beyond "
        f"{MASK_FLIP_TOL}; {int(differ.sum())} differ in all of {differ.size}"
    )
    assert differ.mean() < 1e-4, f"{int(differ.sum())} of {differ.size} pixels differ"

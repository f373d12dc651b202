"""Hub ids wherever a model name goes, and a first run without the models that fails at once.

The Hugging Face cache is built offline here (the tiny models written into the cache's own
layout: ``models--owner--name/refs/<ref>`` and ``snapshots/<commit>/``), so ``owner/name`` and
``owner/name@revision`` load through the real hub code paths with no network. Each case runs in
a subprocess because huggingface_hub reads its cache and endpoint settings at import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _add_to_cache(cache: Path, repo: str, folder: Path, ref: str = "main") -> None:
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / COMMIT, dirs_exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(COMMIT)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_gdino_dir, tiny_sam_dir) -> Path:
    cache = tmp_path_factory.mktemp("hf-cache")
    _add_to_cache(cache, "test-owner/tiny-sam", tiny_sam_dir)
    _add_to_cache(cache, "test-owner/tiny-gdino", tiny_gdino_dir, ref="v1")
    return cache


RUN = """
import json, sys, time
import numpy as np
from grounded_seg import segment
start = time.perf_counter()
try:
    det = segment(np.full((40, 60, 3), 128, np.uint8), "red square", box_threshold=0.0,
                  device="cpu", **json.loads(sys.argv[1]))
    print(json.dumps({"found": len(det)}))
except Exception as err:
    print(json.dumps({"error": type(err).__name__, "message": str(err)}))
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def _segment(cache: Path, env: dict[str, str] | None = None, **kwargs) -> dict:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cache.parent),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "GROUNDED_SEG_WEIGHTS": "/nonexistent-grounded-seg-weights",
        **(env or {}),
    }
    environment = {k: v for k, v in environment.items() if v is not None}
    run = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        cwd=cache.parent,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return {k: v for line in lines for k, v in line.items()}


def test_hub_ids_load_from_the_cache_with_a_revision(hub_cache):
    got = _segment(hub_cache, detector="test-owner/tiny-gdino@v1", segmenter="test-owner/tiny-sam")
    assert got.get("found") == 20, got  # every query of the tiny model at threshold 0


def test_a_hub_id_of_the_wrong_kind_of_model_is_refused(hub_cache):
    got = _segment(
        hub_cache, detector="test-owner/tiny-gdino@v1", segmenter="test-owner/tiny-gdino@v1"
    )
    assert got["error"] == "InvalidWeightsError"
    assert "holds a grounding_dino model; expected a SAM, SAM 2.1 or SAM-HQ" in got["message"]


def test_every_missing_model_is_named_at_once_offline(hub_cache):
    got = _segment(hub_cache, segmenter="test-owner/not-cached")
    assert got["error"] == "WeightsNotFoundError", got
    message = got["message"]
    assert message.startswith("2 models needed and not available here (HF_HUB_OFFLINE is set")
    assert "hf download IDEA-Research/grounding-dino-tiny --local-dir" in message
    assert "segmenter 'test-owner/not-cached': download it once with `hf download " in message
    assert "hf download test-owner/not-cached`" in message


def test_an_unreachable_hub_fails_at_once_without_retries(hub_cache):
    got = _segment(
        hub_cache,
        env={"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"},  # nothing listens
    )
    assert got["error"] == "WeightsNotFoundError", got
    assert "the hub cannot be reached (no connection to 127.0.0.1:9)" in got["message"]
    assert "grounding-dino-tiny" in got["message"] and "sam-vit-base" in got["message"]


def test_the_cli_names_every_missing_model_and_exits_1(hub_cache, tmp_path):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (30, 20)).save(image)
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_OFFLINE": "1",
        "GROUNDED_SEG_WEIGHTS": "/nonexistent",
    }
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "grounded_seg.cli", "segment", str(image), "black cat"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    print(f"offline first run: exit {run.returncode} after {time.perf_counter() - start:.2f} s")
    assert run.returncode == 1
    assert run.stderr.count("hf download") == 2, run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("facebook/sam-vit-base", ("facebook/sam-vit-base", None)),
        ("IDEA-Research/grounding-dino-tiny@main", ("IDEA-Research/grounding-dino-tiny", "main")),
        ("owner/name@0123abcd", ("owner/name", "0123abcd")),
        ("./owner/name", None),
        ("/abs/path", None),
        ("a/b/c", None),
        ("../x/y", None),
    ],
)
def test_what_is_spelled_as_a_hub_id(text, expected):
    from grounded_seg.registry import parse_hub_id

    assert parse_hub_id(text) == expected


def test_a_missing_path_that_is_no_hub_id_still_says_no_such_file():
    from grounded_seg.registry import resolve_model

    with pytest.raises(FileNotFoundError, match=r"no such file or folder: \./nothing/here"):
        resolve_model("./nothing/here", "segmenter")

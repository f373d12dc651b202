"""The example scripts run as a user would run them, on the tiny offline models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip


def test_single_image_example(tiny_gdino_dir, tiny_sam_dir, scene, tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(scene).save(image)
    out = tmp_path / "annotated.png"
    result = run(
        "single_image.py", str(image), "red square", "-o", str(out),
        "--detector", str(tiny_gdino_dir), "--segmenter", str(tiny_sam_dir), "--box-threshold", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "20 detection(s); wrote" in result.stderr
    annotated = np.asarray(Image.open(out))
    assert annotated.shape == scene.shape and not np.array_equal(annotated, scene)


def test_several_prompts_example(tiny_gdino_dir, tiny_sam_dir, scene, tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(scene).save(image)
    result = run(
        "several_prompts.py", str(image), "red square", "blue car. dog.",
        "--detector", str(tiny_gdino_dir), "--segmenter", str(tiny_sam_dir), "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if " found (" in line]
    assert len(lines) == 2 and lines[0].startswith("'red square'")


def test_clip_route_picture_example(tmp_path):
    out = tmp_path / "clip_route.png"
    result = run("clip_route.py", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "kept 2 for 'yellow star. red circle.'" in result.stderr
    assert Image.open(out).size == (1040, 512)


def test_explain_and_edit_pictures_example(tmp_path):
    why, edits = tmp_path / "explain.png", tmp_path / "edit.png"
    result = run("explain_and_edit.py", "--explain", str(why), "--edit", str(edits))
    assert result.returncode == 0, result.stderr
    assert "3 detections explained" in result.stderr and "4 edits" in result.stderr
    assert Image.open(edits).size == (5 * 384 + 4 * 10, 384 + 28)
    assert Image.open(why).size[0] >= 1000


def test_shapes_video_example(tmp_path):
    result = run("shapes_video.py", str(tmp_path / "video"), "--frames", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(".")  # the prompt naming the video's objects
    assert len(list((tmp_path / "video" / "frames").glob("*.png"))) == 5
    assert (tmp_path / "video" / "gt.txt").read_text().startswith("1,")


def test_track_strip_example(tmp_path):
    out = tmp_path / "strip.png"
    result = run("track_strip.py", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "ID switches; wrote" in result.stderr and "IDF1" in result.stderr
    assert Image.open(out).size == (6 * 256 + 5 * 6, 256)

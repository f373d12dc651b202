"""Tests for the ``grounded-seg`` command (``grounded_seg.cli.main``), run in-process.

The models are the tiny random-weight folders from ``conftest.py``; with random weights
``--box-threshold 0`` makes every query a detection and ``--box-threshold 1.0`` gives none.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import grounded_seg
from grounded_seg.cli import main
from grounded_seg.export import rle_decode

PROMPT = "Cat. black  dog"
CLASSES = ["cat", "black dog"]  # normalize_prompt(PROMPT).classes


@pytest.fixture
def scene_png(tmp_path, scene) -> Path:
    path = tmp_path / "scene.png"
    Image.fromarray(scene).save(path)
    return path


@pytest.fixture
def model_args(tiny_gdino_dir, tiny_sam_dir) -> list[str]:
    return ["--detector", str(tiny_gdino_dir), "--segmenter", str(tiny_sam_dir), "--device", "cpu"]


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# ---------------------------------------------------------------------------- models


def test_models_lists_every_registered_name(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    names = [spec.name for spec in grounded_seg.list_models()]
    assert names  # the registry is not empty
    listed = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    assert listed == names


def test_models_role_segmenter_lists_only_segmenters(capsys):
    assert main(["models", "--role", "segmenter"]) == 0
    out = capsys.readouterr().out
    segmenters = [spec.name for spec in grounded_seg.list_models("segmenter")]
    detectors = [spec.name for spec in grounded_seg.list_models("detector")]
    assert segmenters and detectors
    listed = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    assert listed == segmenters
    for name in detectors:
        assert name not in out


def test_models_bad_role_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["models", "--role", "classifier"])
    assert exc.value.code == 2
    assert "classifier" in capsys.readouterr().err


# ---------------------------------------------------------------------------- segment


def test_segment_writes_image_json_and_masks(tmp_path, scene, scene_png, model_args, capsys):
    out_png = tmp_path / "out.png"
    out_json = tmp_path / "out.json"
    masks_dir = tmp_path / "masks"
    rc = main(
        [
            "segment",
            str(scene_png),
            PROMPT,
            "-o",
            str(out_png),
            "--json",
            str(out_json),
            "--masks-dir",
            str(masks_dir),
            "--box-threshold",
            "0",
            *model_args,
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err

    # The annotated image has the input's size.
    with Image.open(out_png) as img:
        assert img.size == (120, 90)
        assert img.mode == "RGB"

    report = json.loads(out_json.read_text())
    assert report["height"] == 90
    assert report["width"] == 120
    assert report["classes"] == CLASSES
    assert report["prompt"] == PROMPT
    detections = report["detections"]
    assert len(detections) > 0  # box threshold 0: every query is a detection
    assert f"{len(detections)} detection(s)" in captured.out

    mask_files = sorted(p for p in masks_dir.iterdir() if p.name != "mask.png")
    assert len(mask_files) == len(detections)
    assert sorted(Path(row["mask_file"]) for row in detections) == mask_files
    # the label map: each pixel the id of the best detection covering it, 0 for none
    with Image.open(masks_dir / "mask.png") as label_img:
        labels = np.asarray(label_img)
    assert labels.shape == (90, 120)
    covered = np.zeros((90, 120), bool)
    for row in detections:
        mask = rle_decode(row["mask_rle"])  # the JSON's COCO RLE is the mask itself
        assert int(mask.sum()) == row["mask_area"]
        np.testing.assert_array_equal(labels[mask & ~covered], row["instance_id"])
        covered |= mask
    assert not labels[~covered].any()

    for row in detections:
        assert row["class_name"] in CLASSES
        assert row["class_name"] == CLASSES[row["class_id"]]
        x1, y1, x2, y2 = row["box_xyxy"]
        assert 0 <= x1 <= x2 <= 120
        assert 0 <= y1 <= y2 <= 90
        assert 0.0 <= row["confidence"] <= 1.0
        assert 0.0 <= row["mask_score"] <= 1.0
        with Image.open(row["mask_file"]) as mask_img:
            assert mask_img.size == (120, 90)
            mask = np.asarray(mask_img)
        assert set(np.unique(mask).tolist()) <= {0, 255}  # a binary mask
        assert row["mask_area"] == int((mask == 255).sum())

    # The CLI gives what the library gives for the same image and arguments.
    expected = grounded_seg.segment(
        scene,
        PROMPT,
        detector=model_args[1],
        segmenter=model_args[3],
        box_threshold=0.0,
        device="cpu",
    )
    assert len(expected) == len(detections)
    np.testing.assert_allclose(
        [row["box_xyxy"] for row in detections],
        np.round(expected.xyxy.astype(np.float64), 2),  # the JSON keeps boxes to 0.01 px
        atol=1e-3,
    )
    assert [row["class_name"] for row in detections] == expected.data["class_name"].tolist()
    assert [row["class_id"] for row in detections] == expected.class_id.tolist()
    assert [row["mask_area"] for row in detections] == expected.mask.sum(axis=(1, 2)).tolist()
    # and the annotated image is annotate() of those detections on the input.
    np.testing.assert_array_equal(_read_rgb(out_png), grounded_seg.annotate(scene, expected))


def test_segment_nothing_found(tmp_path, scene, scene_png, model_args, capsys):
    out_png = tmp_path / "out.png"
    out_json = tmp_path / "out.json"
    masks_dir = tmp_path / "masks"
    rc = main(
        [
            "segment",
            str(scene_png),
            PROMPT,
            "-o",
            str(out_png),
            "--json",
            str(out_json),
            "--masks-dir",
            str(masks_dir),
            "--box-threshold",
            "1.0",
            *model_args,
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "0 detection(s)" in captured.out
    report = json.loads(out_json.read_text())
    assert report["detections"] == []
    assert report["classes"] == CLASSES
    assert (report["height"], report["width"]) == (90, 120)
    np.testing.assert_array_equal(_read_rgb(out_png), scene)
    assert [p.name for p in masks_dir.iterdir()] == ["mask.png"]  # the label map of nothing
    with Image.open(masks_dir / "mask.png") as label_img:
        assert not np.asarray(label_img).any()


# ---------------------------------------------------------------------------- never overwrite


def test_existing_output_is_kept_without_overwrite(tmp_path, scene_png, model_args, capsys):
    out_png = tmp_path / "out.png"
    out_png.write_bytes(b"precious bytes")
    rc = main(
        [
            "segment",
            str(scene_png),
            PROMPT,
            "-o",
            str(out_png),
            "--box-threshold",
            "1.0",
            *model_args,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert str(out_png) in err
    assert "--overwrite" in err
    assert out_png.read_bytes() == b"precious bytes"


def test_existing_json_is_kept_without_overwrite(tmp_path, scene_png, model_args, capsys):
    out_json = tmp_path / "out.json"
    out_json.write_text("{}")
    out_png = tmp_path / "out.png"
    rc = main(
        [
            "segment",
            str(scene_png),
            PROMPT,
            "-o",
            str(out_png),
            "--json",
            str(out_json),
            "--box-threshold",
            "1.0",
            *model_args,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert str(out_json) in err and "--overwrite" in err
    assert out_json.read_text() == "{}"
    assert not out_png.exists()  # nothing is written when any output is refused


def test_existing_mask_file_is_kept_without_overwrite(tmp_path, scene_png, model_args, capsys):
    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    first = masks_dir / "000_cat.png"
    first.write_bytes(b"precious")
    # The first detection's class decides the file name; write both candidates.
    second = masks_dir / "000_black-dog.png"
    second.write_bytes(b"precious")
    out_png = tmp_path / "out.png"
    rc = main(
        [
            "segment",
            str(scene_png),
            PROMPT,
            "-o",
            str(out_png),
            "--masks-dir",
            str(masks_dir),
            "--box-threshold",
            "0",
            *model_args,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "--overwrite" in err and "earlier run" in err
    assert first.read_bytes() == b"precious"
    assert second.read_bytes() == b"precious"
    assert sorted(p.name for p in masks_dir.iterdir()) == ["000_black-dog.png", "000_cat.png"]
    assert not out_png.exists()


def test_masks_of_an_earlier_run_are_replaced_not_mixed(tmp_path, scene_png, model_args):
    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    (masks_dir / "notes.txt").write_text("the user's own file")
    argv = ["segment", str(scene_png), PROMPT, "--masks-dir", str(masks_dir), *model_args]
    assert main([*argv, "--box-threshold", "0"]) == 0
    many = sorted(p.name for p in masks_dir.iterdir())
    assert len(many) == 20 + 2  # 20 masks, mask.png, notes.txt
    assert main([*argv, "--box-threshold", "0", "--max-detections", "3", "--overwrite"]) == 0
    few = sorted(p.name for p in masks_dir.iterdir())
    assert len(few) == 3 + 2 and "notes.txt" in few  # the earlier run's other 17 are gone
    assert (masks_dir / "notes.txt").read_text() == "the user's own file"


def test_output_is_never_the_input_image(tmp_path, scene_png, model_args, capsys):
    before = scene_png.read_bytes()
    rc = main(
        [
            "segment",
            str(scene_png),
            PROMPT,
            "-o",
            str(scene_png),
            "--overwrite",
            "--box-threshold",
            "0",
            *model_args,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "input" in err
    assert scene_png.read_bytes() == before


def test_json_is_never_the_input_image(tmp_path, scene_png, model_args, capsys, monkeypatch):
    before = scene_png.read_bytes()
    monkeypatch.chdir(tmp_path)
    same = f"./{scene_png.name}"  # another spelling of the input's path
    rc = main(
        [
            "segment",
            str(scene_png),
            PROMPT,
            "--json",
            same,
            "--overwrite",
            "--box-threshold",
            "1.0",
            *model_args,
        ]
    )
    assert rc == 2
    assert "input" in capsys.readouterr().err
    assert scene_png.read_bytes() == before


def test_overwrite_replaces_an_existing_output(tmp_path, scene, scene_png, model_args, capsys):
    out_png = tmp_path / "out.png"
    out_png.write_bytes(b"old bytes")
    out_json = tmp_path / "out.json"
    out_json.write_text("old")
    rc = main(
        [
            "segment",
            str(scene_png),
            PROMPT,
            "-o",
            str(out_png),
            "--json",
            str(out_json),
            "--overwrite",
            "--box-threshold",
            "1.0",
            *model_args,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    np.testing.assert_array_equal(_read_rgb(out_png), scene)
    assert json.loads(out_json.read_text())["detections"] == []


# ---------------------------------------------------------------------------- bad input


def _segment_without_model(image: Path, prompt: str, out: Path, *extra: str) -> int:
    """Run ``segment`` with a detector that does not exist: only input errors can come first."""
    return main(
        [
            "segment",
            str(image),
            prompt,
            "-o",
            str(out),
            "--detector",
            "/nonexistent",
            "--segmenter",
            "/nonexistent",
            "--device",
            "cpu",
            *extra,
        ]
    )


def _assert_input_error(rc: int, err: str, out: Path, *fragments: str) -> None:
    assert rc == 2
    assert err.startswith("error: ")
    assert "nonexistent" not in err  # the input was rejected, not the model
    assert "detector" not in err
    for fragment in fragments:
        assert fragment in err
    assert not out.exists()


def test_missing_image_file(tmp_path, capsys):
    missing = tmp_path / "missing.png"
    out = tmp_path / "out.png"
    rc = _segment_without_model(missing, PROMPT, out)
    _assert_input_error(rc, capsys.readouterr().err, out, str(missing), "not found")


def test_text_file_named_png(tmp_path, capsys):
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image\n")
    out = tmp_path / "out.png"
    rc = _segment_without_model(fake, PROMPT, out)
    _assert_input_error(rc, capsys.readouterr().err, out, str(fake))
    assert fake.read_text() == "this is not an image\n"


def test_empty_prompt(tmp_path, scene_png, capsys):
    out = tmp_path / "out.png"
    rc = _segment_without_model(scene_png, "  . ", out)
    _assert_input_error(rc, capsys.readouterr().err, out, "prompt")


@pytest.mark.parametrize("option", ["--box-threshold", "--text-threshold"])
def test_threshold_out_of_range(tmp_path, scene_png, capsys, option):
    out = tmp_path / "out.png"
    rc = _segment_without_model(scene_png, PROMPT, out, option, "1.5")
    _assert_input_error(rc, capsys.readouterr().err, out, f"{option}:", "1.5")  # CLI words


def test_unknown_detector_name_lists_valid_names(tmp_path, scene_png, tiny_sam_dir, capsys):
    out = tmp_path / "out.png"
    rc = main(
        [
            "segment",
            str(scene_png),
            PROMPT,
            "-o",
            str(out),
            "--detector",
            "grounding-dino-tiniest",
            "--segmenter",
            str(tiny_sam_dir),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "grounding-dino-tiniest" in err
    for spec in grounded_seg.list_models("detector"):
        assert spec.name in err
    assert not out.exists()


def test_registered_detector_without_weights_says_how_to_get_them(
    tmp_path, scene_png, tiny_sam_dir, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # no ./weights/ here; the conftest points GROUNDED_SEG_WEIGHTS away
    out = tmp_path / "out.png"
    rc = main(
        [
            "segment",
            str(scene_png),
            PROMPT,
            "-o",
            str(out),
            "--detector",
            "grounding-dino-tiny",
            "--segmenter",
            str(tiny_sam_dir),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "hf download" in err
    assert "IDEA-Research/grounding-dino-tiny" in err
    assert not out.exists()


# ---------------------------------------------------------------------------- output arguments
# These assert the documented contract ("2 for a bad argument", "existing files are never
# replaced") for output arguments that cli.py does not check before running the models.


def test_same_path_for_image_and_json_is_refused(tmp_path, scene_png, model_args, capsys):
    both = tmp_path / "out.png"
    rc = main(
        [
            "segment",
            str(scene_png),
            PROMPT,
            "-o",
            str(both),
            "--json",
            str(both),
            "--box-threshold",
            "1.0",
            *model_args,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert str(both) in err
    assert not both.exists()


def test_masks_dir_that_is_a_file_is_a_bad_argument(tmp_path, scene_png, model_args, capsys):
    not_a_dir = tmp_path / "masks"
    not_a_dir.write_text("a file, not a folder")
    out_png = tmp_path / "out.png"
    rc = main(
        [
            "segment",
            str(scene_png),
            PROMPT,
            "-o",
            str(out_png),
            "--masks-dir",
            str(not_a_dir),
            "--box-threshold",
            "0",
            *model_args,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert str(not_a_dir) in err
    assert not_a_dir.read_text() == "a file, not a folder"
    assert not out_png.exists()


def test_unknown_output_extension_is_refused_before_any_model_loads(tmp_path, scene_png, capsys):
    out = tmp_path / "out.xyz"
    masks_dir = tmp_path / "masks"
    rc = _segment_without_model(scene_png, PROMPT, out, "--masks-dir", str(masks_dir))
    _assert_input_error(rc, capsys.readouterr().err, out, ".xyz")
    assert not masks_dir.exists()  # nothing written when an argument is bad


def test_train_gdino_runs_in_parts_and_resumes(tmp_path, capsys, caplog, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where training's scratch goes
    out = tmp_path / "gdino"
    args = ["train", "shapes", "--model", "gdino", "--out", str(out), "--steps", "3",
            "--batch-size", "2", "--threads", "1"]  # fmt: skip
    assert main([*args, "--stop-at", "1"]) == 0
    assert "stopped after step 1" in capsys.readouterr().out
    assert "step 1/3" in caplog.text  # training logs its progress without -v
    assert (out / "checkpoint.pt").is_file() and not (out / "model.safetensors").exists()
    assert main([*args, "--stop-at", "2"]) == 0
    assert "stopped after step 2" in capsys.readouterr().out
    import torch

    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and state["resumed_at"] == [1]
    assert list(scratch.glob("shapes-gdino-*")) == []  # no scratch folder left behind


@pytest.mark.parametrize(
    "option",
    [["--batch-size", "4"], ["--init-from", "weights/shapes/gdino"], ["--learning-rate", "1e-4"],
     ["--single-phrase-share", "0.4"]],
)  # fmt: skip
def test_train_rejects_gdino_options_for_other_models(capsys, option):
    assert main(["train", "shapes", "--model", "sam", *option]) == 2
    assert "apply to --model gdino" in capsys.readouterr().err


def test_a_reader_that_leaves_early_gets_no_traceback():
    """``grounded-seg models | head -1``: the pipe closes early; no BrokenPipeError traceback."""
    import subprocess
    import sys

    run = subprocess.run(
        f"{sys.executable} -m grounded_seg.cli models | head -1",
        shell=True, capture_output=True, text=True,
    )  # fmt: skip
    assert run.stdout.count("\n") == 1
    assert "Traceback" not in run.stderr and "BrokenPipeError" not in run.stderr, run.stderr

"""Bad input gets a clear error saying expected vs got, at once, before any model is loaded."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from grounded_seg import (
    GroundedSAM,
    InvalidWeightsError,
    WeightsNotFoundError,
    segment,
)
from grounded_seg.proposers.grounding_dino import GroundingDinoProposer
from grounded_seg.segmenters.sam import SamSegmenter

GOOD = np.zeros((32, 48, 3), np.uint8)
NO_MODEL = "/nonexistent/model-folder"  # loading this would fail: input errors must come first


@pytest.fixture
def files(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:60])
    return {"text": text, "truncated": truncated, "missing": tmp_path / "missing.jpg"}


BAD_CALLS = [
    # (id, image, prompt, kwargs, error, message regex)
    ("missing file", "missing", "cat", {}, FileNotFoundError, "missing.jpg"),
    ("non-image file", "text", "cat", {}, ValueError, "could not read .*notes.png.* as an image"),
    ("truncated image", "truncated", "cat", {}, ValueError, "could not read .*truncated.png"),
    ("zero-size array", np.zeros((0, 10, 3), np.uint8), "cat", {}, ValueError, r"\(0, 10, 3\)"),
    ("1-D array", np.zeros(30, np.uint8), "cat", {}, ValueError, r"\(30,\)"),
    ("2 channels", np.zeros((8, 8, 2), np.uint8), "cat", {}, ValueError, r"\(8, 8, 2\)"),
    ("5 channels", np.zeros((8, 8, 5), np.uint8), "cat", {}, ValueError, r"\(8, 8, 5\)"),
    ("float array", np.zeros((8, 8, 3), np.float32), "cat", {}, TypeError, "uint8.*float32"),
    ("list image", [[0, 0, 0]], "cat", {}, TypeError, "got list"),
    ("bad image_format", GOOD, "cat", {"image_format": "RGBA"}, ValueError, "RGB.*BGR"),
    ("empty prompt", GOOD, "", {}, ValueError, "expected text"),
    ("whitespace prompt", GOOD, "  \n . ", {}, ValueError, "expected text"),
    ("non-str prompt", GOOD, 3, {}, TypeError, "expected a str or a list of str, got int"),
    ("list with non-str", GOOD, ["cat", None], {}, TypeError, r"prompt\[1\]: expected str"),
    ("box threshold > 1", GOOD, "cat", {"box_threshold": 1.5}, ValueError, "box_threshold.*1.5"),
    ("box threshold < 0", GOOD, "cat", {"box_threshold": -0.1}, ValueError, "box_threshold"),
    ("text threshold nan", GOOD, "cat", {"text_threshold": float("nan")}, ValueError, "nan"),
    ("threshold str", GOOD, "cat", {"box_threshold": "0.3"}, TypeError, "got str"),
    ("threshold bool", GOOD, "cat", {"text_threshold": True}, TypeError, "got bool"),
]


@pytest.mark.parametrize(
    ("image", "prompt", "kwargs", "error", "match"),
    [case[1:] for case in BAD_CALLS],
    ids=[case[0] for case in BAD_CALLS],
)
def test_bad_call_fails_before_models_load(files, image, prompt, kwargs, error, match):
    if isinstance(image, str):
        image = files[image]
    with pytest.raises(error, match=match):
        segment(image, prompt, detector=NO_MODEL, segmenter=NO_MODEL, **kwargs)


def test_the_placeholder_model_really_would_fail():
    """Guards the table above: with good input, the missing model is what fails."""
    with pytest.raises(FileNotFoundError, match=r"no such file or folder"):
        segment(GOOD, "cat", detector=NO_MODEL, segmenter=NO_MODEL)


@pytest.mark.parametrize(
    ("detector", "error", "match"),
    [
        ("grounding-dino-tin", ValueError, "unknown model name.*grounding-dino-tiny.*sam-vit-huge"),
        ("sam-vit-base", ValueError, "is a segmenter, expected one of: grounding-dino-tiny"),
        ("", ValueError, "empty string"),
        (3.5, TypeError, "expected a model name or a path, got float"),
    ],
)
def test_bad_model_names(detector, error, match):
    with pytest.raises(error, match=match):
        GroundingDinoProposer.from_pretrained(detector)


def test_registry_name_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsNotFoundError) as info:
        SamSegmenter.from_pretrained("sam-vit-base", device="cpu")
    message = str(info.value)
    assert "hf download facebook/sam-vit-base --local-dir" in message
    assert str(tmp_path / "weights" / "sam-vit-base") in message or "sam-vit-base" in message


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_weights_file(tiny_sam_dir, tmp_path):
    folder = copy_model(tiny_sam_dir, tmp_path / "sam")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(
        InvalidWeightsError, match=r"could not load weights from .*model.safetensors"
    ):
        SamSegmenter.from_pretrained(folder, device="cpu")


def test_corrupt_weights_file(tiny_gdino_dir, tmp_path):
    folder = copy_model(tiny_gdino_dir, tmp_path / "gdino")
    (folder / "model.safetensors").write_bytes(b"\x00" * 1000)
    with pytest.raises(InvalidWeightsError, match=r"model.safetensors.*truncated or corrupt"):
        GroundingDinoProposer.from_pretrained(folder, device="cpu")


def test_incomplete_weights_are_refused_not_half_loaded(tiny_sam_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = copy_model(tiny_sam_dir, tmp_path / "sam")
    state = load_file(folder / "model.safetensors")
    dropped = sorted(state)[3]
    del state[dropped]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InvalidWeightsError, match=f"1 missing keys \\(e.g. {dropped}"):
        SamSegmenter.from_pretrained(folder, device="cpu")


def test_weights_of_the_wrong_model_type(tiny_sam_dir, tiny_gdino_dir):
    with pytest.raises(
        InvalidWeightsError,
        match=r"expected a 'grounding-dino' or 'mm-grounding-dino' model, got .*'sam'",
    ):
        GroundedSAM(detector=tiny_sam_dir, segmenter=tiny_sam_dir, device="cpu")
    with pytest.raises(
        InvalidWeightsError, match=r"expected a 'sam' model, got .*'grounding-dino'"
    ):
        SamSegmenter.from_pretrained(tiny_gdino_dir, device="cpu")


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidWeightsError, match=r"has no config.json"):
        SamSegmenter.from_pretrained(tmp_path, device="cpu")


def test_predict_before_set_image(tiny_gdino_dir, tiny_sam_dir):
    gs = GroundedSAM(detector=tiny_gdino_dir, segmenter=tiny_sam_dir, device="cpu")
    with pytest.raises(RuntimeError, match=r"must be set with .set_image\(image\)"):
        gs.predict("cat")


def test_caller_inputs_are_not_modified(tiny_gdino_dir, tiny_sam_dir, scene):
    image = scene.copy()
    classes = ["Red Square", "blue car"]
    segment(
        image, classes, detector=tiny_gdino_dir, segmenter=tiny_sam_dir, box_threshold=0.0,
        device="cpu", image_format="BGR",
    )  # fmt: skip
    np.testing.assert_array_equal(image, scene)
    assert classes == ["Red Square", "blue car"]

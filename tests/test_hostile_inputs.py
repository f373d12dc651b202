"""Inputs a careless caller or an attacker would send: each gets a clear error or a right answer.

Decompression bombs, FIFOs, images thousands of times wider than tall, numbers too large for a
float, hand-built prompts, undecodable text, tokenizer special tokens typed as text, classes of
200,000 characters, and detections that cannot be drawn.
"""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import supervision as sv
import torch
from PIL import Image, ImageFile

from grounded_seg import GroundedSAM, Prompt, annotate, load_image, normalize_prompt, segment
from grounded_seg.images import DEFAULT_MAX_PIXELS
from grounded_seg.proposers.clip import ClipProposer
from grounded_seg.segmenters.sam import SamSegmenter

NO_MODEL = "/nonexistent/model-folder"  # loading this would fail: input errors must come first
SHAPES = {"detector": "shapes-gdino", "segmenter": "shapes-sam", "device": "cpu"}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb(path: Path, width: int, height: int, rows: int | None = None) -> Path:
    """A valid grey PNG of ``width x height`` zeros, streamed (a few KB per 10^8 pixels).
    With ``rows``, only that many rows are stored: the header still claims the full size."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    data += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )
    return path


# ---------------------------------------------------------------------- images


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    bomb = write_bomb(tmp_path / "bomb.png", 10_000, 10_001, rows=16)  # 10^8 pixels claimed
    assert bomb.stat().st_size < 20_000

    def never(self):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    with pytest.raises(ValueError, match=r"10000 x 10001 = 100,010,000 pixels, more than max"):
        load_image(bomb)
    with pytest.raises(ValueError, match="more than max_pixels=1,000"):
        segment(bomb, "cat", detector=NO_MODEL, max_pixels=1000)
    with pytest.raises(ValueError, match="more than max_pixels"):
        load_image(Image.open(bomb))  # a lazily opened PIL image: checked before its load


def test_beyond_pils_own_limit_is_a_clear_error_not_a_pil_exception(tmp_path):
    bomb = write_bomb(tmp_path / "huge.png", 20_000, 20_000, rows=1)
    with pytest.raises(ValueError, match=r"could not read .*huge\.png.*MAX_IMAGE_PIXELS"):
        load_image(bomb, max_pixels=None)


def test_max_pixels_applies_to_arrays_and_can_be_lifted(scene):
    with pytest.raises(ValueError, match="the array is 120 x 90 = 10,800 pixels"):
        load_image(scene, max_pixels=10_000)
    assert load_image(scene, max_pixels=None).shape == scene.shape
    assert DEFAULT_MAX_PIXELS == 100_000_000
    with pytest.raises(TypeError, match="max_pixels: expected an int >= 1 or None, got float"):
        load_image(scene, max_pixels=1e9)


def test_cli_reports_a_bomb_with_exit_2(tmp_path, capsys):
    from grounded_seg.cli import main

    bomb = write_bomb(tmp_path / "bomb.png", 10_000, 10_001, rows=4)
    assert main(["segment", str(bomb), "cat", "--detector", NO_MODEL]) == 2
    assert "more than --max-pixels 100,000,000" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_instead_of_waiting_forever(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    code = "import sys; from grounded_seg import load_image; load_image(sys.argv[1])"
    run = subprocess.run(
        [sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60
    )  # the old code blocked in open() until the timeout
    assert run.returncode == 1 and "got a FIFO, socket or device" in run.stderr


@pytest.mark.parametrize("shape", [(1, 4000), (4000, 1), (3, 9000), (1, 100_000)])
def test_very_thin_images_are_segmented(shape, tiny_gdino_dir, tiny_sam_dir):
    """Thinner than 2667:1 the official resize gives 0 pixels and PIL failed."""
    image = np.full((*shape, 3), 128, np.uint8)
    for detector, segmenter in ((tiny_gdino_dir, tiny_sam_dir), ("shapes-gdino", "shapes-sam")):
        det = segment(image, "red square", detector=detector, segmenter=segmenter,
                      device="cpu", box_threshold=0.0)  # fmt: skip
        assert len(det) > 0 and det.mask.shape[1:] == shape
        assert np.all(det.xyxy <= [shape[1], shape[0]] * 2)


# ---------------------------------------------------------------------- numbers and prompts


@pytest.mark.parametrize("value", [10**400, -(10**5000)], ids=["10**400", "-10**5000"])
def test_a_threshold_too_large_for_a_float_is_a_value_error(value, scene):
    with pytest.raises(
        ValueError, match=r"box_threshold: expected a number in \[0, 1\], got an int"
    ):
        segment(scene, "cat", detector=NO_MODEL, box_threshold=value)


@pytest.mark.parametrize(
    ("classes", "error", "match"),
    [
        (("Cat",), ValueError, "expected a normalised class"),
        (("cat. dog",), ValueError, "no '.'"),
        (("cat", "cat"), ValueError, "repeated"),
        (("",), ValueError, "expected a normalised class"),
        (("two  spaces",), ValueError, "expected a normalised class"),
        ((), ValueError, "at least one class"),
        ((3,), TypeError, "expected str, got int"),
        ("cat", TypeError, "expected a tuple of str, got str"),
        (("bad \udcff",), ValueError, "not valid Unicode"),
    ],
)
def test_a_hand_built_prompt_is_validated(classes, error, match):
    with pytest.raises(error, match=match):
        Prompt(classes)


def test_a_valid_hand_built_prompt_is_the_normalised_one():
    assert Prompt(("black cat", "dog")) == normalize_prompt("Black  Cat. dog.")
    assert Prompt(["cat"]).classes == ("cat",)  # a list is taken as a tuple


@pytest.mark.parametrize("prompt", ["black \udcffcat", ["dog", "c\ud800t"]])
def test_lone_surrogates_are_refused_before_any_model_loads(prompt, scene):
    with pytest.raises(ValueError, match="not valid Unicode at position"):
        segment(scene, prompt, detector=NO_MODEL)


def test_undecodable_command_line_bytes_are_a_bad_argument(tmp_path, scene):
    image = tmp_path / "scene.png"
    Image.fromarray(scene).save(image)
    command = [sys.executable, "-m", "grounded_seg.cli", "segment", str(image)]
    run = subprocess.run(
        [os.fsencode(part) for part in command] + [b"black \xffcat", b"--detector", NO_MODEL],
        capture_output=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr  # not 1 (model missing): the prompt fails first
    assert b"not valid Unicode" in run.stderr


def test_a_giant_class_gets_a_short_message():
    with pytest.raises(ValueError) as info:
        normalize_prompt(["x" * 200_000, "x" * 200_000])
    assert len(str(info.value)) < 300 and "200,000 characters" in str(info.value)


def test_forty_thousand_classes_normalise_correctly():
    names = [f"class {i}" for i in range(40_000)]
    assert normalize_prompt(". ".join(names)).classes == tuple(names)
    assert normalize_prompt(names).classes == tuple(names)
    with pytest.raises(ValueError, match=r"prompt\[39999\]: class 'class 7' repeats prompt\[7\]"):
        normalize_prompt([*names[:-1], "class 7"])


def test_a_prompt_needing_many_passes_is_a_warning(tiny_gdino_dir, caplog, scene):
    from grounded_seg.proposers.grounding_dino import GroundingDinoProposer

    proposer = GroundingDinoProposer.from_pretrained(tiny_gdino_dir, device="cpu")
    with caplog.at_level(logging.WARNING, logger="grounded_seg"):
        passes = proposer.text_passes(normalize_prompt([f"c{i}" for i in range(1500)]))
    assert len(passes) > 8
    assert f"1500 classes need {len(passes)} passes" in caplog.text


# ---------------------------------------------------------------------- special tokens


def test_clip_reads_special_tokens_in_a_prompt_as_text():
    sam = SamSegmenter.from_pretrained("shapes-sam", device="cpu")
    scorer = ClipProposer.from_pretrained("shapes-clip", segmenter=sam, device="cpu").scorer
    texts = ("a photo of a <|endoftext|> red circle.", "a photo of a <|endoftext|> blue star.")
    first, second = scorer.embed_texts(texts)
    # read as the end token, both texts ended there and got one embedding
    assert not torch.allclose(first, second)
    ids = scorer.tokenizer(texts[0], split_special_tokens=True)["input_ids"]
    assert ids.count(scorer.tokenizer.eos_token_id) == 1


def test_grounding_dino_reads_special_tokens_in_a_prompt_as_text(bert_tokenizer):
    from grounded_seg.prompts import plan_text_passes

    (text_pass,) = plan_text_passes(normalize_prompt(["[SEP] cat", "dog"]), bert_tokenizer, 256)
    assert text_pass.input_ids.count(102) == 1 and text_pass.input_ids[-1] == 102
    assert text_pass.input_ids.count(101) == 1
    pieces = bert_tokenizer.convert_ids_to_tokens(list(text_pass.input_ids))
    assert pieces[1:5] == ["[", "sep", "]", "cat"]


# ---------------------------------------------------------------------- drawing


def _detection(**kwargs) -> sv.Detections:
    return sv.Detections(xyxy=np.array([[10, 5, 60, 40]], np.float32), **kwargs)


def test_annotate_without_class_ids_or_names(scene):
    out = annotate(scene, _detection(confidence=np.array([0.5])))
    assert out.shape == scene.shape and not np.array_equal(out, scene)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_annotate_refuses_non_finite_boxes(value, scene):
    detections = _detection(class_id=np.array([0]))
    detections.xyxy[0, 2] = value  # supervision checks at construction only
    with pytest.raises(ValueError, match="expected finite pixel coordinates"):
        annotate(scene, detections)


def test_annotate_draws_boxes_far_outside_the_image(scene):
    detections = _detection(class_id=np.array([0]))
    detections.xyxy[0] = [-1e30, 5, 1e30, 40]
    out = annotate(scene, detections)
    assert not np.array_equal(out, scene)
    assert detections.xyxy[0, 0] == np.float32(-1e30)  # the caller's detections untouched


def test_annotate_refuses_what_is_not_detections(scene):
    with pytest.raises(TypeError, match=r"expected a supervision\.Detections, got dict"):
        annotate(scene, {"xyxy": [[1, 2, 3, 4]]})


def test_grounded_sam_set_image_takes_max_pixels(scene):
    gs = GroundedSAM(**SHAPES)
    with pytest.raises(ValueError, match="more than max_pixels=100"):
        gs.set_image(scene, max_pixels=100)
    gs.set_image(scene, max_pixels=None)
    assert gs.image_size == scene.shape[:2]

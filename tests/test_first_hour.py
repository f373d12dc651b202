"""What a new user meets in the first hour: the command line's manners and empty results that
explain themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import grounded_seg
from grounded_seg import GroundedSAM, segment
from grounded_seg.cli import cli_words, main
from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene

SHAPES = ["--detector", "shapes-gdino", "--segmenter", "shapes-sam"]


@pytest.fixture
def scene_png(tmp_path) -> Path:
    path = tmp_path / "scene.png"
    Image.fromarray(make_scene(HELD_OUT_SEEDS.start + 123).image).save(path)
    return path


# ---------------------------------------------------------------------- the command line


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"grounded-seg {grounded_seg.__version__}"


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_command(where):
    from grounded_seg.cli.parser import build_parser

    argv = ["segment", "in.png", "red circle"]
    argv = ["-v", *argv] if where == "before" else [*argv, "-v"]
    assert build_parser().parse_args(argv).verbose is True
    assert build_parser().parse_args(["segment", "in.png", "cat"]).verbose is False


def test_help_shows_the_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for shown in (
        "(default: 0.35)",
        "(default: 0.25)",
        "(default: 100)",
        "(default: 0.5)",
        "(default: sam-vit-base;",
        "(default: auto)",
        "(default: 100000000)",
    ):
        assert shown in out, shown


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--proposer", "clip", "--detector", "shapes-gdino"], "is a grounding_dino model"),
        (["--device", "cuda:7"], "device 'cuda:7'"),
        (["--box-threshold", "1.5"], "--box-threshold: expected a number in [0, 1]"),
        (["--max-detections", "0"], "--max-detections: expected an int >= 1"),
        (["--nms-threshold", "2"], "nms_threshold: expected an IoU in (0, 1]"),
    ],
)
def test_every_bad_argument_exits_2_before_loading(argv, message, scene_png, capsys):
    if argv[0] == "--device" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    # the default detector is not on this machine: reaching the loading would exit 1
    rc = main(["segment", str(scene_png), "red circle", "--segmenter", "shapes-sam", *argv])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_messages_name_options_not_python_arguments():
    assert cli_words("out exists; pass overwrite=True to replace it") == (
        "out exists; pass --overwrite to replace it"
    )
    assert cli_words("... delete it or pass resume=False (--restart) to start over") == (
        "... delete it or pass --restart to start over"
    )
    assert cli_words("box_threshold: expected a number") == "--box-threshold: expected a number"
    assert "--max-pixels 100" in cli_words("is 1 x 1 = 1 pixels, more than max_pixels=100 (x)")


def test_a_finished_model_is_refused_in_cli_words(tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"trained")
    rc = main(["train", "shapes", "--model", "sam", "--out", str(tmp_path), "--steps", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err


def test_the_module_runs_as_the_command():
    run = subprocess.run(
        [sys.executable, "-m", "grounded_seg.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and run.stdout.startswith("grounded-seg ")


# ---------------------------------------------------------------------- empty results


def test_nothing_found_says_the_best_score_and_the_threshold(caplog):
    scene = make_scene(HELD_OUT_SEEDS.start + 123)
    gs = GroundedSAM(detector="shapes-gdino", segmenter="shapes-sam", device="cpu")
    gs.set_image(scene.image)
    every = gs.predict("red circle", box_threshold=0.0, max_detections=None)
    import logging

    with caplog.at_level(logging.INFO, logger="grounded_seg"):
        none = gs.predict("red circle", box_threshold=0.99)
    assert len(none) == 0
    assert none.metadata["best_score"] == pytest.approx(float(every.confidence.max()))
    assert none.metadata["box_threshold"] == 0.99
    assert f"the best score, {float(every.confidence.max()):.3f}, is not above" in caplog.text


def test_words_a_detector_cannot_read_are_named(scene_png, capsys):
    det = segment(np.full((64, 64, 3), 128, np.uint8), "zebra. red circle", **dict(
        detector="shapes-gdino", segmenter="shapes-sam"))  # fmt: skip
    assert det.metadata["unknown_words"] == ["zebra"]
    assert main(["segment", str(scene_png), "purple elephant", *SHAPES]) == 0
    out = capsys.readouterr().out
    assert "the detector does not know the words 'elephant'" in out
    assert "nothing scored above --box-threshold 0.35: the best was" in out


def test_real_bert_words_are_known_and_nonsense_is_not(bert_tokenizer, tiny_gdino_dir):
    from grounded_seg.prompts import normalize_prompt
    from grounded_seg.proposers.grounding_dino import GroundingDinoProposer

    proposer = GroundingDinoProposer.from_pretrained(tiny_gdino_dir, device="cpu")
    proposer.tokenizer = bert_tokenizer  # the real bert-base-uncased vocabulary
    prompt = normalize_prompt(["zebra", "pottedplant", "qxzq", "a"])
    assert proposer.unknown_words(proposer.text_passes(prompt)) == ("qxzq",)


# ---------------------------------------------------------------------- progress


def test_loading_is_quiet_unless_progress_is_asked(capfd):
    import logging

    from grounded_seg.segmenters.sam import SamSegmenter

    library = logging.getLogger("grounded_seg")
    previous = library.level
    try:
        library.setLevel(logging.WARNING)  # the default
        SamSegmenter.from_pretrained("shapes-sam", device="cpu")
        assert "Loading weights" not in capfd.readouterr().err
        library.setLevel(logging.INFO)  # what -v does
        SamSegmenter.from_pretrained("shapes-sam", device="cpu")
        assert "Loading weights" in capfd.readouterr().err
    finally:
        library.setLevel(previous)
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # the switch is put back


def test_eta_and_durations():
    from grounded_seg.progress import eta, format_seconds

    assert eta(30.0, 10, 100) == "ETA 4 min 30 s"
    assert eta(5.0, 0, 100) == "ETA unknown" and eta(5.0, 100, 100) == "ETA 0 s"
    assert [format_seconds(s) for s in (9.4, 192, 7500)] == ["9 s", "3 min 12 s", "2 h 05 min"]


def test_eval_shows_a_progress_bar_without_verbose(tmp_path, capfd):
    from grounded_seg.shapes import export_coco

    annotations = export_coco(range(HELD_OUT_SEEDS.start + 50, HELD_OUT_SEEDS.start + 53), tmp_path)
    rc = main(["eval", str(annotations), "--detector", "shapes-gdino", "--segmenter", "shapes-sam"])
    assert rc == 0
    err = capfd.readouterr().err
    assert "eval: 100%" in err and "3/3" in err

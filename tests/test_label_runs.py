"""Long labelling runs: killed and resumed, on Ray, and refused early when the input or the
output is wrong (before any model loads)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import STRICT

from grounded_seg import label_images
from grounded_seg.cli import main
from grounded_seg.errors import OutputError
from grounded_seg.labeling import run as run_module
from grounded_seg.labeling.records import RECORDS, done_batches, read_images, record_detections
from grounded_seg.shapes import HELD_OUT_SEEDS, PHRASES, export_coco

SEEDS = range(HELD_OUT_SEEDS.start + 3500, HELD_OUT_SEEDS.start + 3580)  # 80 fixed scenes
MODELS = {"detector": "shapes-gdino", "segmenter": "shapes-sam", "device": "cpu"}
CLI_MODELS = ["--detector", "shapes-gdino", "--segmenter", "shapes-sam", "--device", "cpu"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return export_coco(SEEDS, tmp_path_factory.mktemp("scenes")).parent / "images"


@pytest.fixture
def no_models(monkeypatch):
    """Any model load fails the test: the errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(run_module, "load_predictor", refuse)


def _label_command(images: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "grounded_seg.cli", "label", str(images), ". ".join(PHRASES),
        "--out", str(out), "--batch-size", "1", "--workers", "1", "--no-progress",
        *CLI_MODELS, *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_resume_after_a_kill_writes_the_same_file(images, tmp_path):
    whole = tmp_path / "whole"
    run = subprocess.run(_label_command(images, whole), env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    reference = (whole / "annotations.json").read_bytes()

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _label_command(images, killed), env=_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(done_batches(killed)) < 10 and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = done_batches(killed)
    assert 10 <= len(done) < len(SEEDS), len(done)  # killed mid-way, not before nor after
    assert not (killed / "annotations.json").exists()
    stamps = {b: (killed / RECORDS / f"{b // 1000:06d}" / f"{b:09d}.json").stat().st_mtime_ns
              for b in done}  # fmt: skip

    again = subprocess.run(_label_command(images, killed), env=_env(), capture_output=True,
                           text=True)  # fmt: skip
    assert again.returncode == 2 and "--resume" in again.stderr  # not without asking

    resumed = subprocess.run(
        _label_command(images, killed, "--resume"), env=_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done)} were done by an earlier run" in resumed.stdout
    assert (killed / "annotations.json").read_bytes() == reference
    for batch, stamp in stamps.items():  # no batch done twice
        path = killed / RECORDS / f"{batch // 1000:06d}" / f"{batch:09d}.json"
        assert path.stat().st_mtime_ns == stamp
    ids = [a["id"] for a in json.loads(reference)["annotations"]]
    assert ids == list(range(1, len(ids) + 1))


def test_resume_refuses_other_settings_and_redoes_nothing_when_done(images, tmp_path):
    some = sorted(images.glob("*.png"))[:6]
    out = tmp_path / "ds"
    label_images(some, "red circle. blue star.", out, progress=False, **MODELS)
    first = (out / "annotations.json").read_bytes()
    with pytest.raises(ValueError, match=r"other settings.*box_threshold: 0.35 -> 0.5"):
        label_images(some, "red circle. blue star.", out, resume=True, box_threshold=0.5,
                     progress=False, **MODELS)  # fmt: skip
    report = label_images(some, "red circle. blue star.", out, resume=True, progress=False,
                          format="yolo", **MODELS)  # fmt: skip
    assert report.resumed == 6 and (out / "data.yaml").is_file()  # another format, no rerun
    assert (out / "annotations.json").read_bytes() == first


def test_ray_on_a_local_instance_equals_the_local_run(images, tmp_path):
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        if STRICT:
            pytest.fail('CI installs Ray Data (pip install "grounded-seg[ray]")')
        pytest.skip("Ray Data is not installed")
    some = sorted(images.glob("*.png"))[:16]
    local = label_images(some, list(PHRASES), tmp_path / "local", batch_size=4, progress=False,
                         **MODELS)  # fmt: skip
    on_ray = label_images(some, list(PHRASES), tmp_path / "ray", batch_size=4, ray=True,
                          progress=False, **MODELS)  # fmt: skip
    assert (on_ray.labelled, on_ray.detections) == (local.labelled, local.detections)
    assert on_ray.per_class == local.per_class
    ours = list(read_images(tmp_path / "local"))
    theirs = list(read_images(tmp_path / "ray"))
    assert [i["name"] for i in ours] == [i["name"] for i in theirs]
    for a, b in zip(ours, theirs, strict=True):
        da, db = record_detections(a), record_detections(b)
        assert da.class_id.tolist() == db.class_id.tolist()
        np.testing.assert_allclose(da.xyxy, db.xyxy, atol=0.01)  # CPU threads: rounding
        np.testing.assert_allclose(da.confidence, db.confidence, atol=1e-4)
        for x, y in zip(da.mask, db.mask, strict=True):
            assert (x & y).sum() / max(1, (x | y).sum()) >= 0.99
    written = json.loads((tmp_path / "ray" / "annotations.json").read_text())
    assert len(written["images"]) == 16


def test_ray_without_ray_says_what_to_install(images, tmp_path, monkeypatch, capsys, no_models):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code = main(["label", str(images), "red circle", "--out", str(tmp_path / "ds"), "--ray"])
    assert code == 2
    assert 'pip install "grounded-seg[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty folder", "no images in this folder"),
        ("no match", "no files match this pattern"),
        ("missing", "no such folder, image, list file or pattern"),
        ("bad json", "not a JSON ontology"),
        ("not an object", "expected a JSON object mapping phrases to class names, got list"),
        ("maps nothing", "maps no phrase to a class"),
        ("empty class", "must map to a class name"),
        ("out inside input", "is inside the input folder"),
        ("unwritable", "cannot write the data set"),
        ("not ours", "not made by grounded-seg label"),
        ("exists", "pass --resume to continue"),
        ("bad batch", "--batch-size"),
    ],
)
def test_bad_input_fails_before_any_model_loads(case, message, images, tmp_path, capsys,
                                                no_models):  # fmt: skip
    source, out, extra = str(images), tmp_path / "out", []
    ontology = tmp_path / "ontology.json"
    if case == "empty folder":
        source = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no images here")
    elif case == "no match":
        source = str(images / "*.jpeg")
    elif case == "missing":
        source = str(tmp_path / "nowhere")
    elif case in ("bad json", "not an object", "maps nothing", "empty class"):
        content = {"bad json": "{nope", "not an object": '["cat"]', "maps nothing": "{}",
                   "empty class": '{"cat": " "}'}[case]  # fmt: skip
        ontology.write_text(content)
        extra = ["--ontology", str(ontology)]
    elif case == "out inside input":
        out = images / "labelled"
    elif case == "unwritable":
        (tmp_path / "a-file").write_text("x")
        out = tmp_path / "a-file" / "ds"
    elif case == "not ours":
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
        extra = ["--overwrite"]
    elif case == "exists":
        out.mkdir()
        (out / "something").write_text("x")
    elif case == "bad batch":
        extra = ["--batch-size", "0"]
    prompt = [] if extra[:1] == ["--ontology"] else ["red circle"]
    code = main(["label", source, *prompt, "--out", str(out), *extra, *CLI_MODELS])
    err = capsys.readouterr().err
    assert code in (2, 3), err
    assert message in err
    if case == "not ours":
        assert (out / "precious.txt").read_text() == "keep me"
    assert not (images / "labelled").exists()


def test_overwrite_replaces_a_data_set_it_made(images, tmp_path):
    some = sorted(images.glob("*.png"))[:3]
    out = tmp_path / "ds"
    label_images(some, "red circle", out, format="masks", progress=False, **MODELS)
    assert (out / "masks.json").is_file()
    with pytest.raises(FileExistsError, match="--overwrite"):
        label_images(some, "red circle", out, progress=False, **MODELS)
    label_images(some[:2], "blue star", out, overwrite=True, progress=False, **MODELS)
    assert not (out / "masks.json").exists() and not (out / "masks").exists()
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 2
    assert sorted(p.name for p in (out / "images").iterdir()) == [p.name for p in some[:2]]


def test_output_error_is_an_output_error(images, tmp_path, no_models):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write the data set"):
        label_images(images, "red circle", tmp_path / "file" / "ds", progress=False, **MODELS)


def test_resume_refuses_when_an_image_changed_size(images, tmp_path):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted(images.glob("*.png"))[:5]:
        (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "ds"
    label_images(folder, "red circle", out, batch_size=2, progress=False, **MODELS)
    middle = sorted(folder.glob("*.png"))[2]
    Image.new("RGB", (64, 48)).save(middle)  # same name, another size: sorted first now
    with pytest.raises(ValueError, match="plan"):
        label_images(folder, "red circle", out, batch_size=2, resume=True, progress=False,
                     **MODELS)  # fmt: skip


def test_a_missing_model_fails_before_anything_is_written(images, tmp_path, capsys):
    out = tmp_path / "ds"
    code = main(["label", str(images), "red circle", "--out", str(out), "--detector",
                 str(tmp_path / "no-such-model"), "--segmenter", "shapes-sam"])  # fmt: skip
    assert code in (1, 2), capsys.readouterr().err
    assert not out.exists()


def test_a_second_run_into_the_same_folder_is_refused(images, tmp_path):
    from grounded_seg.labeling.run import exclusive

    out = tmp_path / "ds"
    some = sorted(images.glob("*.png"))[:2]
    with exclusive(out), pytest.raises(ValueError, match="another grounded-seg label run"):
        label_images(some, "red circle", out, progress=False, **MODELS)
    assert label_images(some, "red circle", out, progress=False, **MODELS).labelled == 2


AS_AT_A_TERMINAL = (  # Ctrl-C raises KeyboardInterrupt even when the tests run as a background
    # job (a non-interactive shell starts those with SIGINT ignored, inherited through exec)
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'grounded-seg'; runpy.run_module('grounded_seg.cli', run_name='__main__')"
)


def test_ctrl_c_keeps_the_finished_batches_and_says_how_to_go_on(images, tmp_path):
    out = tmp_path / "interrupted"
    command = _label_command(images, out)
    command[1:3] = ["-c", AS_AT_A_TERMINAL]  # instead of "-m grounded_seg.cli"
    process = subprocess.Popen(
        command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while len(done_batches(out)) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    kept = len(done_batches(out))
    assert 5 <= kept < len(SEEDS)
    resumed = subprocess.run(_label_command(images, out, "--resume"), env=_env(),
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"{kept} were done by an earlier run" in resumed.stdout

"""Files the CLI and the trainers write: atomic, never over the input, failures reported clearly.

Each case here was observed losing or corrupting a user's file before outputs went through
``grounded_seg.outputs``: a hard link to the input replaced, a file created meanwhile replaced
without ``--overwrite``, a dangling symlink written through, a killed run leaving half a PNG.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grounded_seg import api
from grounded_seg.cli import main
from grounded_seg.errors import OutputError
from grounded_seg.outputs import atomic_write, bytes_writer, check_output, write_all
from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene

SHAPES = ["--detector", "shapes-gdino", "--segmenter", "shapes-sam", "--device", "cpu"]
MISSING_MODEL = ["--detector", "/nonexistent/detector", "--segmenter", "shapes-sam"]


@pytest.fixture
def scene_png(tmp_path) -> Path:
    path = tmp_path / "scene.png"
    Image.fromarray(make_scene(HELD_OUT_SEEDS.start + 5).image).save(path)
    return path


def _old_png(path: Path) -> bytes:
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(path)
    return path.read_bytes()


def _no_temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name]


# ------------------------------------------------------------------------ the writer itself


def test_atomic_write_creates_and_refuses_to_replace_without_overwrite(tmp_path):
    target = tmp_path / "a.json"
    atomic_write(target, bytes_writer(b"first"))
    assert target.read_bytes() == b"first"
    with pytest.raises(OutputError, match="appeared while this run was working"):
        atomic_write(target, bytes_writer(b"second"))
    assert target.read_bytes() == b"first"
    atomic_write(target, bytes_writer(b"third"), overwrite=True)
    assert target.read_bytes() == b"third"
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # a normal file's mode, not mkstemp's
    assert _no_temporaries(tmp_path) == []


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError(errno.ENOSPC, "No space left")])
def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, failure):
    target = tmp_path / "out.png"
    old = _old_png(target)

    def half_then_fail(handle):
        handle.write(b"\x89PNG half")
        raise failure

    expected = KeyboardInterrupt if failure is KeyboardInterrupt else OutputError
    with pytest.raises(expected):
        atomic_write(target, half_then_fail, overwrite=True)
    assert target.read_bytes() == old
    assert _no_temporaries(tmp_path) == []


def test_several_outputs_are_all_or_nothing(tmp_path):
    def fails(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"b\.json: No space left"):
        write_all(
            [(tmp_path / "a.json", bytes_writer(b"a")), (tmp_path / "b.json", fails)],
            overwrite=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # a name taken meanwhile: the files this call already created are removed again
    (tmp_path / "c.json").write_bytes(b"someone else's")
    with pytest.raises(OutputError, match="appeared"):
        write_all(
            [(tmp_path / "a.json", bytes_writer(b"a")), (tmp_path / "c.json", bytes_writer(b"c"))]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]
    assert (tmp_path / "c.json").read_bytes() == b"someone else's"


def test_check_output_refuses_the_input_by_inode_and_odd_targets(tmp_path, scene_png):
    link = tmp_path / "hardlink.png"
    os.link(scene_png, link)
    with pytest.raises(ValueError, match="that is the input"):
        check_output(link, inputs=[scene_png], overwrite=True, flag="-o")
    with pytest.raises(ValueError, match="not a regular file"):
        check_output("/dev/full", overwrite=True, flag="--json")
    with pytest.raises(ValueError, match=r"folder .* does not exist"):
        check_output(tmp_path / "nope" / "x.png", flag="-o")
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        check_output(dangling, flag="-o")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (Linux)")
def test_a_folder_that_takes_no_files_is_found_before_the_work(tmp_path):
    with pytest.raises(OutputError, match="cannot create files in /proc"):
        check_output("/proc/out.png", flag="-o")  # even root cannot create files there


# ------------------------------------------------------------------------ through the CLI


def test_hard_link_to_the_input_is_not_replaced_even_with_overwrite(tmp_path, scene_png, capsys):
    link = tmp_path / "same-inode.png"
    os.link(scene_png, link)
    before = scene_png.read_bytes()
    rc = main(["segment", str(scene_png), "red circle", "-o", str(link), "--overwrite", *SHAPES])
    assert rc == 2 and "input" in capsys.readouterr().err
    assert scene_png.read_bytes() == before


def test_dangling_symlink_output_is_replaced_itself_never_written_through(
    tmp_path, scene_png, capsys
):
    target = tmp_path / "victim.png"
    link = tmp_path / "out.png"
    link.symlink_to(target)
    assert main(["segment", str(scene_png), "red circle", "-o", str(link), *SHAPES]) == 2
    assert "--overwrite" in capsys.readouterr().err
    rc = main(["segment", str(scene_png), "red circle", "-o", str(link), "--overwrite", *SHAPES])
    assert rc == 0
    assert not target.exists() and not link.is_symlink() and link.is_file()


def test_an_output_created_during_inference_is_not_replaced(
    tmp_path, scene_png, capsys, monkeypatch
):
    out = tmp_path / "out.json"
    real = api.segment

    def other_process_writes_meanwhile(*args, **kwargs):
        out.write_text("another process's result")
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "segment", other_process_writes_meanwhile)
    rc = main(["segment", str(scene_png), "red circle", "--json", str(out), *SHAPES])
    assert rc == 3
    assert "appeared while this run was working" in capsys.readouterr().err
    assert out.read_text() == "another process's result"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "out.psd"], "PIL cannot write PSD"),
        (["-o", "out.h5"], "PIL cannot write HDF5"),
        (["-o", "out.txt"], "expected an image file name"),
        (["--json", "/dev/full", "--overwrite"], "not a regular file"),
        (["-o", "missing-folder/out.png"], "does not exist"),
    ],
)
def test_unwritable_outputs_fail_before_any_model_loads(
    args, message, tmp_path, scene_png, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    rc = main(["segment", str(scene_png), "red circle", *args, *MISSING_MODEL])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err  # not exit 1: the missing model was never reached
    assert time.perf_counter() - started < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.png"]


KILLED_MID_WRITE = """
import signal, sys, time
from pathlib import Path
import PIL.Image

# Ctrl-C as at a terminal, even when the tests run as a background job (a non-interactive
# shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
# through exec: the child would sleep through the test's SIGINT)
signal.signal(signal.SIGINT, signal.default_int_handler)

flag = Path(sys.argv[1])
def stalls_mid_write(self, fp, format=None, **params):
    fp.write(b"\\x89PNG\\r\\n\\x1a\\n half an image")
    fp.flush()
    flag.write_text("writing")
    time.sleep(120)

PIL.Image.Image.save = stalls_mid_write
from grounded_seg.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_run_killed_mid_write_leaves_the_old_output_whole(tmp_path, scene_png, sig):
    out = tmp_path / "out.png"
    old = _old_png(out)
    flag = tmp_path / "flag"
    command = ["segment", str(scene_png), "red circle", "-o", str(out), "--overwrite", *SHAPES]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_WRITE, str(flag), *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        deadline = time.monotonic() + 120
        while not flag.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists(), process.communicate()[1].decode()[-2000:]
        process.send_signal(sig)
        process.wait(timeout=60)
    assert out.read_bytes() == old  # the old file, whole
    with Image.open(out) as img:
        img.load()
    if sig == signal.SIGINT:  # Ctrl-C: the temporary is cleaned up too
        assert _no_temporaries(tmp_path) == []

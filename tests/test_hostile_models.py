"""Model folders as an attacker would craft them: no code from them runs, no prompt, a clear error.

transformers imports a ``.py`` shipped in a model folder when a config names it in ``auto_map``
and the caller trusts remote code; with the argument unset it *asks* on stdin ("run the custom
code? [y/N]"), and a "y" runs it. Each folder here carries a payload that writes a marker file
when imported; the load runs in a subprocess whose stdin answers "y" to any question.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grounded_seg import InvalidWeightsError
from grounded_seg.segmenters.sam import SamSegmenter

PAYLOAD = """
from pathlib import Path
Path({marker!r}).write_text("payload ran")
from transformers import PretrainedConfig, PreTrainedModel

class EvilConfig(PretrainedConfig):
    model_type = "evil"

class EvilModel(PreTrainedModel):
    config_class = EvilConfig

class EvilProcessor:
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls()
"""


def _plant(folder: Path, marker: Path) -> None:
    (folder / "evil.py").write_text(PAYLOAD.format(marker=str(marker)))


def _edit_json(path: Path, **changes) -> None:
    content = json.loads(path.read_text()) if path.exists() else {}
    content.update(changes)
    path.write_text(json.dumps(content))


def _crafted_unknown_model_type(tmp_path: Path, marker: Path) -> Path:
    folder = tmp_path / "unknown-type"
    folder.mkdir()
    _plant(folder, marker)
    _edit_json(
        folder / "config.json",
        model_type="evil",
        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
    )
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def _crafted_processor(tmp_path: Path, marker: Path, tiny_sam_dir: Path) -> Path:
    folder = tmp_path / "evil-processor"
    shutil.copytree(tiny_sam_dir, folder)
    _plant(folder, marker)
    _edit_json(
        folder / "preprocessor_config.json",
        auto_map={"AutoImageProcessor": "evil.EvilProcessor"},
        image_processor_type="EvilProcessor",
    )
    return folder


LOAD = """
import sys
from grounded_seg.segmenters.sam import SamSegmenter
from grounded_seg.errors import InvalidWeightsError
try:
    SamSegmenter.from_pretrained(sys.argv[1], device="cpu")
except InvalidWeightsError as err:
    print("REFUSED:", err)
    sys.exit(3)
print("LOADED")
"""


@pytest.mark.parametrize("craft", ["unknown model type", "processor"])
def test_code_in_a_model_folder_never_runs_and_nothing_is_asked(craft, tmp_path, tiny_sam_dir):
    marker = tmp_path / "marker.txt"
    if craft == "processor":
        folder = _crafted_processor(tmp_path, marker, tiny_sam_dir)
    else:
        folder = _crafted_unknown_model_type(tmp_path, marker)
    run = subprocess.run(
        [sys.executable, "-c", LOAD, str(folder)],
        input="y\ny\ny\n",  # would accept any "run the custom code?" question
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert not marker.exists(), "the folder's code ran"
    assert run.returncode == 3, run.stdout + run.stderr
    assert "[y/N]" not in run.stdout + run.stderr and "wish to run" not in run.stdout
    assert "auto_map" in run.stdout and str(folder) in run.stdout
    assert "trust_remote_code=True" not in run.stdout + run.stderr


def test_refusal_names_the_file_and_suggests_no_remote_code(tmp_path, tiny_sam_dir):
    marker = tmp_path / "marker.txt"
    folder = _crafted_processor(tmp_path, marker, tiny_sam_dir)
    with pytest.raises(InvalidWeightsError, match=r"preprocessor_config\.json") as info:
        SamSegmenter.from_pretrained(folder, device="cpu")
    assert "trust_remote_code" not in str(info.value)
    assert not marker.exists()


def test_a_clean_folder_still_loads_and_says_what_it_read(tiny_sam_dir, caplog):
    with caplog.at_level(logging.INFO, logger="grounded_seg"):
        SamSegmenter.from_pretrained(tiny_sam_dir, device="cpu")
    assert f"loading {tiny_sam_dir}" in caplog.text

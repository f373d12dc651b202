"""The registry, the local weights search order, and devices/dtypes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import grounded_seg
from grounded_seg import list_models, segment
from grounded_seg.devices import resolve_device, resolve_dtype
from grounded_seg.registry import get_model_spec, resolve_model, weights_dirs


def test_registry_names_and_roles():
    names = [spec.name for spec in list_models()]
    detectors = ["grounding-dino-tiny", "grounding-dino-base"]
    clips = ["clip-vit-base-patch32", "clip-vit-large-patch14"]
    mm = ["mm-grounding-dino-tiny", "mm-grounding-dino-base", "mm-grounding-dino-large"]
    owls = ["owlv2-base-patch16-ensemble", "owlv2-large-patch14-ensemble"]
    bundled = ["shapes-gdino", "shapes-clip", "shapes-sam"]
    sams = ["sam-vit-base", "sam-vit-large", "sam-vit-huge"]
    sam2s = [f"sam2.1-hiera-{size}" for size in ("tiny", "small", "base-plus", "large")]
    hqs = ["sam-hq-vit-base", "sam-hq-vit-large", "sam-hq-vit-huge"]
    assert names == [*detectors, *clips, *mm, *owls, "sam3", *bundled, *sams, *sam2s, *hqs]
    assert [s.name for s in list_models("detector")] == [
        *detectors, *clips, *mm, *owls, "sam3", *bundled[:2]
    ]  # fmt: skip
    assert [s.name for s in list_models() if s.hub_id is None] == bundled
    assert {s.family for s in list_models()} == {
        "grounding_dino", "clip", "owlv2", "sam3", "sam", "sam2", "sam_hq"
    }  # fmt: skip
    assert {s.family for s in list_models("segmenter")} == {"sam", "sam2", "sam_hq"}
    assert get_model_spec("sam-vit-huge").hub_id == "facebook/sam-vit-huge"
    assert get_model_spec("grounding-dino-tiny").hub_id == "IDEA-Research/grounding-dino-tiny"
    with pytest.raises(ValueError, match=r"role"):
        list_models("proposer")


def test_weights_folder_is_searched_first(tiny_sam_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("GROUNDED_SEG_WEIGHTS")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("sam-vit-base", "segmenter").local_dir is None
    shutil.copytree(tiny_sam_dir, tmp_path / "weights" / "sam-vit-base")
    source = resolve_model("sam-vit-base", "segmenter")
    assert source.local_dir == tmp_path / "weights" / "sam-vit-base"
    assert source.hub_id == "facebook/sam-vit-base"


def test_environment_folder_comes_before_cwd(tiny_sam_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_sam_dir, tmp_path / "weights" / "sam-vit-base")
    shutil.copytree(tiny_sam_dir, tmp_path / "elsewhere" / "sam-vit-base")
    monkeypatch.setenv("GROUNDED_SEG_WEIGHTS", str(tmp_path / "elsewhere"))
    assert weights_dirs()[:2] == [tmp_path / "elsewhere", tmp_path / "weights"]
    assert (
        resolve_model("sam-vit-base", "segmenter").local_dir
        == tmp_path / "elsewhere" / "sam-vit-base"
    )


def test_registry_names_load_from_weights_folder_end_to_end(
    tiny_gdino_dir, tiny_sam_dir, tmp_path, monkeypatch, scene
):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_gdino_dir, tmp_path / "weights" / "grounding-dino-tiny")
    shutil.copytree(tiny_sam_dir, tmp_path / "weights" / "sam-vit-base")
    grounded_seg.clear_model_cache()
    det = segment(scene, "red square", box_threshold=0.0, device="cpu")  # the defaults' names
    grounded_seg.clear_model_cache()
    direct = segment(
        scene, "red square", detector=tiny_gdino_dir, segmenter=tiny_sam_dir, box_threshold=0.0,
        device="cpu",
    )  # fmt: skip
    grounded_seg.clear_model_cache()
    np.testing.assert_array_equal(det.xyxy, direct.xyxy)


def test_a_file_inside_a_model_folder_names_the_folder(tiny_sam_dir):
    source = resolve_model(tiny_sam_dir / "config.json", "segmenter")
    assert source.local_dir == tiny_sam_dir and source.spec is None


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device(None) in (torch.device("cpu"), torch.device("mps"))
        with pytest.raises(ValueError, match=r"cuda.*is_available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match=r"expected 'auto', 'cpu'"):
        resolve_device("tpu-ish")
    with pytest.raises(TypeError, match=r"got int"):
        resolve_device(0)


def test_resolve_dtype():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bf16", cuda) == torch.bfloat16
    assert resolve_dtype("float16", cuda) == torch.float16
    assert resolve_dtype(torch.float32, cpu) == torch.float32
    with pytest.raises(ValueError, match=r"opt-in fast path for CUDA"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(ValueError, match=r"expected one of"):
        resolve_dtype("int8", cuda)
    with pytest.raises(ValueError, match=r"float32, float16 or bfloat16"):
        resolve_dtype(torch.float64, cuda)


@pytest.mark.parametrize("route", ["sam", "gdino", "clip"])
def test_emulated_bfloat16_warning_is_logged_once_per_model(route, monkeypatch, caplog):
    """On a CPU without native bfloat16 the slow-path warning appears once per loaded model
    (from_pretrained checks the dtype, the constructor warns), not twice."""
    import grounded_seg.devices as devices
    from grounded_seg.proposers.clip import ClipProposer
    from grounded_seg.proposers.grounding_dino import GroundingDinoProposer
    from grounded_seg.segmenters.sam import SamSegmenter

    monkeypatch.setattr(devices, "cpu_has_native_bfloat16", lambda: False)
    sam = SamSegmenter.from_pretrained("shapes-sam", device="cpu") if route == "clip" else None
    with caplog.at_level("WARNING", logger="grounded_seg"):
        if route == "sam":
            SamSegmenter.from_pretrained("shapes-sam", device="cpu", dtype="bfloat16")
        elif route == "gdino":
            GroundingDinoProposer.from_pretrained("shapes-gdino", device="cpu", dtype="bfloat16")
        else:
            ClipProposer.from_pretrained("shapes-clip", sam, device="cpu", dtype="bfloat16")
    warnings = [r for r in caplog.records if "emulated and slower" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_bundled_model_missing_says_how_to_reproduce(tmp_path, monkeypatch):
    from grounded_seg import WeightsNotFoundError
    from grounded_seg.segmenters.sam import SamSegmenter

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("grounded_seg.registry.weights_dirs", lambda: [tmp_path / "weights"])
    monkeypatch.setattr("grounded_seg._loading.weights_dirs", lambda: [tmp_path / "weights"])
    with pytest.raises(WeightsNotFoundError, match=r"grounded-seg train shapes --model sam"):
        SamSegmenter.from_pretrained("shapes-sam", device="cpu")


def test_a_planted_weights_folder_is_named_in_the_log(tiny_sam_dir, tmp_path, monkeypatch, caplog):
    """./weights/<name> overrides the hub and the bundled models: the log says which file ran."""
    import logging

    from grounded_seg.segmenters.sam import SamSegmenter

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_sam_dir, tmp_path / "weights" / "sam-vit-base")
    with caplog.at_level(logging.INFO, logger="grounded_seg"):
        SamSegmenter.from_pretrained("sam-vit-base", device="cpu")
    assert (
        f"segmenter 'sam-vit-base': loading {tmp_path / 'weights' / 'sam-vit-base'}" in caplog.text
    )

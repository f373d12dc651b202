"""Every model family through the CLI and the library, end to end on tiny offline models: each
route's detections, masks at the original size, exact class ids; the CLI's JSON says which
models ran; ``grounded-seg eval`` scores a data set with each new family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_owlv2 import save_tiny_owlv2
from tiny_sam2 import save_tiny_sam2
from tiny_sam3 import save_tiny_sam3
from tiny_sam_hq import save_tiny_sam_hq

import grounded_seg
from grounded_seg.cli import main
from grounded_seg.export import rle_decode
from grounded_seg.segmenters.sam2 import Sam2Segmenter
from grounded_seg.segmenters.sam_hq import SamHQSegmenter
from grounded_seg.shapes import HELD_OUT_SEEDS

from tiny_models import save_tiny_mm_gdino

PROMPT = "cat . black dog"
CLASSES = ["cat", "black dog"]
HEIGHT, WIDTH = 90, 120


@pytest.fixture(scope="module")
def folders(tmp_path_factory, vocab_file, tiny_gdino_dir, tiny_sam_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {
        "gdino": tiny_gdino_dir,
        "sam": tiny_sam_dir,
        "mm": save_tiny_mm_gdino(root / "mm", vocab_file, shortest_edge=96),
        "owlv2": save_tiny_owlv2(root / "owlv2"),
        "sam3": save_tiny_sam3(root / "sam3"),
        "sam2": save_tiny_sam2(root / "sam2"),
        "hq": save_tiny_sam_hq(root / "hq"),
    }


@pytest.fixture
def image_png(tmp_path, scene) -> Path:
    path = tmp_path / "scene.png"
    Image.fromarray(scene).save(path)
    return path


ROUTES = [  # (proposer, detector, segmenter or None, segmenter class the pipeline runs)
    ("grounding_dino", "mm", "sam", "SamSegmenter"),
    ("grounding_dino", "gdino", "sam2", "Sam2Segmenter"),
    ("grounding_dino", "gdino", "hq", "SamHQSegmenter"),
    ("owlv2", "owlv2", "sam", "SamSegmenter"),
    ("owlv2", "owlv2", "sam2", "Sam2Segmenter"),
    ("sam3", "sam3", None, None),
    ("sam3", "sam3", "hq", "SamHQSegmenter"),
]


@pytest.mark.parametrize(("proposer", "detector", "segmenter", "segmenter_cls"), ROUTES)
def test_segment_cli_runs_every_route(
    tmp_path, folders, image_png, scene, capsys, proposer, detector, segmenter, segmenter_cls
):
    out_json = tmp_path / "out.json"
    argv = ["segment", str(image_png), PROMPT, "-o", str(tmp_path / "out.png")]
    argv += ["--json", str(out_json), "--box-threshold", "0", "--text-threshold", "0"]
    argv += ["--proposer", proposer, "--detector", str(folders[detector]), "--device", "cpu"]
    if segmenter is not None:
        argv += ["--segmenter", str(folders[segmenter])]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(out_json.read_text())
    assert report["proposer"] == proposer
    assert report["segmenter"] == (None if segmenter is None else str(folders[segmenter]))
    rows = report["detections"]
    assert len(rows) > 0  # threshold 0: the tiny models' candidates are kept
    for row in rows:
        assert row["class_name"] == CLASSES[row["class_id"]]
        mask = rle_decode(row["mask_rle"])
        assert mask.shape == (HEIGHT, WIDTH) and int(mask.sum()) == row["mask_area"]
    # the library gives the same answer, through the segmenter class the folder holds
    gs = grounded_seg.GroundedSAM(
        detector=folders[detector],
        segmenter=None if segmenter is None else folders[segmenter],
        proposer=proposer,
        device="cpu",
    )
    if segmenter_cls is None:
        assert gs.segmenter is None  # SAM 3's own masks
    else:
        assert type(gs.segmenter).__name__ == segmenter_cls
    gs.set_image(scene)
    expected = gs.predict(PROMPT, box_threshold=0.0, text_threshold=0.0)
    assert [row["class_id"] for row in rows] == expected.class_id.tolist()
    assert [row["mask_area"] for row in rows] == expected.mask.sum(axis=(1, 2)).tolist()


def test_the_segmenter_class_comes_from_the_folder_not_the_name(folders, tmp_path):
    """A SAM 2 folder under a SAM 1 registry name's spelling still runs as SAM 2."""
    renamed = tmp_path / "sam-vit-base"
    renamed.symlink_to(folders["sam2"], target_is_directory=True)
    assert isinstance(grounded_seg.segmenters.load_segmenter(renamed), Sam2Segmenter)
    assert isinstance(grounded_seg.segmenters.load_segmenter(folders["hq"]), SamHQSegmenter)


@pytest.mark.parametrize(
    ("proposer", "detector", "segmenter"),
    [("owlv2", "owlv2", "sam2"), ("sam3", "sam3", None), ("grounding_dino", "mm", "hq")],
)
def test_eval_scores_a_data_set_with_each_family(
    tmp_path, folders, capsys, proposer, detector, segmenter
):
    from grounded_seg.shapes import export_coco

    seeds = range(HELD_OUT_SEEDS.start + 50, HELD_OUT_SEEDS.start + 52)
    annotations = export_coco(seeds, tmp_path)
    argv = ["eval", str(annotations), "--proposer", proposer, "--detector", str(folders[detector])]
    argv += ["--box-threshold", "0", "--device", "cpu", "--json", str(tmp_path / "r.json")]
    if segmenter is not None:
        argv += ["--segmenter", str(folders[segmenter])]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    # random tiny models: the scores are low but real numbers over both images
    assert report["num_images"] == 2 and report["num_detections"] > 0
    for value in (report["box_ap"], report["mask_ap"]):
        assert 0.0 <= value <= 1.0


def test_models_lists_every_family_with_its_hub_id(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, hub in (
        ("sam2.1-hiera-large", "facebook/sam2.1-hiera-large"),
        ("sam-hq-vit-huge", "syscv-community/sam-hq-vit-huge"),
        ("owlv2-base-patch16-ensemble", "google/owlv2-base-patch16-ensemble"),
        ("mm-grounding-dino-tiny", "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det"),
        ("sam3", "facebook/sam3"),
    ):
        (line,) = [line for line in out.splitlines() if line.split()[0] == name]
        assert hub in line.split()
    assert np.all([len(line.split()) > 4 for line in out.splitlines()[1:]])


NEW_NAMES = {  # tiny folder -> the registry names it stands in for, and the class each loads
    "mm": (["mm-grounding-dino-tiny", "mm-grounding-dino-base", "mm-grounding-dino-large"],
           "MMGroundingDinoForObjectDetection"),
    "owlv2": (["owlv2-base-patch16-ensemble", "owlv2-large-patch14-ensemble"],
              "Owlv2ForObjectDetection"),
    "sam3": (["sam3"], "Sam3Model"),
    "sam2": ([f"sam2.1-hiera-{s}" for s in ("tiny", "small", "base-plus", "large")], "Sam2Model"),
    "hq": (["sam-hq-vit-base", "sam-hq-vit-large", "sam-hq-vit-huge"], "SamHQModel"),
}  # fmt: skip


def test_every_new_name_resolves_offline_from_its_weights_folder(folders, tmp_path, monkeypatch):
    from grounded_seg.proposers import proposer_class
    from grounded_seg.registry import get_model_spec, resolve_model
    from grounded_seg.segmenters import load_segmenter

    weights = tmp_path / "weights"
    weights.mkdir()
    for key, (names, _) in NEW_NAMES.items():
        for name in names:
            (weights / name).symlink_to(folders[key], target_is_directory=True)
    monkeypatch.setenv("GROUNDED_SEG_WEIGHTS", str(weights))
    for names, model_class in NEW_NAMES.values():
        for name in names:
            spec = get_model_spec(name)
            assert resolve_model(name, spec.role).local_dir == weights / name
            if spec.role == "segmenter":
                loaded = load_segmenter(name, device="cpu")
            else:
                loaded = proposer_class(spec.family).from_pretrained(name, device="cpu")
            assert type(loaded.model).__name__ == model_class, name
    # and by name through the pipeline, each route's default detector
    for proposer in ("owlv2", "sam3"):
        gs = grounded_seg.GroundedSAM(proposer=proposer, segmenter="sam2.1-hiera-tiny")
        assert type(gs.segmenter).__name__ == "Sam2Segmenter"

"""COCO evaluation (``grounded_seg.evaluation``) against answers known in advance.

Oracle stand-ins look each image up in the shapes world (by its pixels, which a PNG round trip
keeps exactly) and return its ground truth, exactly or spoiled in a known way.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grounded_seg import GroundedSAM
from grounded_seg.evaluation import STAT_NAMES, EvaluationReport, evaluate_coco, load_coco_dataset
from grounded_seg.proposers.base import Proposals
from grounded_seg.segmenters.sam import SamSegmenter
from grounded_seg.shapes import HELD_OUT_SEEDS, PHRASES, Scene, export_coco, make_scene, rle_encode

try:
    import pycocotools  # noqa: F401
except ImportError:  # in CI (conftest.STRICT) every test must run
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise
    pytest.skip("pip install pycocotools", allow_module_level=True)

SEEDS = range(20)


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class Oracle:
    """Finds a scene by its pixels. ``mode``: ``exact`` (the ground truth), ``wrong_class``
    (every object labelled with the next phrase), ``shifted`` (boxes moved right by 1/5 of their
    width and masks keeping 2/3 of their pixels: IoU 2/3 for both), ``none`` (nothing found)."""

    def __init__(self, seeds, mode: str = "exact"):
        self.scenes = {_key(s.image): s for s in (make_scene(seed) for seed in seeds)}
        self.mode = mode
        self.prompts: list[tuple[str, ...]] = []

    def encode_image(self, image: np.ndarray) -> Scene:
        return self.scenes[_key(image)]


class OracleProposer(Oracle):
    def propose(
        self, scene: Scene, prompt, box_threshold, text_threshold, max_detections=None
    ) -> Proposals:
        self.prompts.append(prompt.classes)
        if self.mode == "none" or not scene.objects:
            return Proposals.empty()
        boxes = scene.boxes.copy()
        if self.mode == "shifted":
            shift = (boxes[:, 2] - boxes[:, 0]) / 5
            boxes[:, 0] += shift
            boxes[:, 2] += shift
        ids = [prompt.classes.index(phrase) for phrase in scene.phrases]
        if self.mode == "wrong_class":
            ids = [(i + 1) % len(prompt.classes) for i in ids]
        n = len(ids)
        return Proposals(
            boxes,
            np.linspace(0.9, 0.6, n).astype(np.float32),
            np.array(ids, np.int64),
            [prompt.classes[i] for i in ids],
        )


class OracleSegmenter(Oracle):
    def segment(self, scene: Scene, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert len(boxes_xyxy) == len(scene.objects)  # the proposer's boxes, in scene order
        masks = scene.masks.copy()
        if self.mode == "shifted":
            for mask in masks:
                flat = mask.reshape(-1)
                on = np.flatnonzero(flat)
                flat[on[math.ceil(2 * len(on) / 3) :]] = False
        return masks, np.ones(len(masks), np.float32)


def _predictor(seeds, mode: str = "exact") -> GroundedSAM:
    return GroundedSAM(detector=OracleProposer(seeds, mode), segmenter=OracleSegmenter(seeds, mode))


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory) -> Path:
    return export_coco(SEEDS, tmp_path_factory.mktemp("shapes-coco"))


def _assert_headline(report: EvaluationReport, box: tuple, mask: tuple) -> None:
    got_box = (report.box_ap, report.box_ap50, report.box_ap75)
    got_mask = (report.mask_ap, report.mask_ap50, report.mask_ap75)
    np.testing.assert_allclose(got_box, box, atol=1e-6)
    np.testing.assert_allclose(got_mask, mask, atol=1e-6)


def test_ground_truth_scores_one(shapes_coco):
    predictor = _predictor(SEEDS)
    report = evaluate_coco(predictor, shapes_coco, progress=False)
    _assert_headline(report, (1, 1, 1), (1, 1, 1))
    objects = sum(len(make_scene(seed).objects) for seed in SEEDS)
    assert report.num_images == len(SEEDS) and report.num_detections == objects
    assert predictor.proposer.prompts == [PHRASES] * len(SEEDS)  # one predict per image
    assert [c.name for c in report.per_class] == list(PHRASES)
    assert [c.category_id for c in report.per_class] == list(range(1, 21))
    for row in report.per_class:
        assert row.num_gt == row.num_detections
        if row.num_gt:
            assert row.box_ap == pytest.approx(1.0) and row.mask_ap == pytest.approx(1.0)
        else:
            assert row.box_ap is None and row.mask_ap is None
    assert report.seconds > 0 and report.seconds >= report.predict_seconds


def test_wrong_class_scores_zero(shapes_coco):
    report = evaluate_coco(_predictor(SEEDS, "wrong_class"), shapes_coco, progress=False)
    _assert_headline(report, (0, 0, 0), (0, 0, 0))
    assert report.num_detections > 0
    assert all(row.box_ap in (0.0, None) and row.mask_ap in (0.0, None) for row in report.per_class)


def test_two_thirds_overlap_passes_ap50_not_ap75(shapes_coco):
    report = evaluate_coco(_predictor(SEEDS, "shifted"), shapes_coco, progress=False)
    # IoU 2/3 matches at IoU 0.50, 0.55, 0.60, 0.65: 4 of the 10 thresholds of AP@[.5:.95]
    _assert_headline(report, (0.4, 1, 0), (0.4, 1, 0))


def test_no_predictions_scores_zero(shapes_coco):
    report = evaluate_coco(_predictor(SEEDS, "none"), shapes_coco, progress=False)
    _assert_headline(report, (0, 0, 0), (0, 0, 0))
    assert report.num_detections == 0
    assert all(row.num_detections == 0 for row in report.per_class)
    assert report.box_stats["AR100"] == 0.0
    assert "0 detection(s)" in report.format_table()


def test_max_images_limits_images_and_classes(shapes_coco, caplog):
    caplog.set_level("INFO", logger="grounded_seg.evaluation")
    report = evaluate_coco(_predictor(SEEDS), shapes_coco, max_images=1)
    assert report.num_images == 1
    present = set(make_scene(SEEDS[0]).phrases)
    for row in report.per_class:
        if row.name in present:
            assert row.box_ap == pytest.approx(1.0) and row.num_gt >= 1
        else:
            assert row.box_ap is None and row.mask_ap is None and row.num_gt == 0
    assert "1/1 images" in caplog.text


def test_report_serialises_and_prints(shapes_coco, tmp_path):
    report = evaluate_coco(_predictor(SEEDS), shapes_coco, max_images=3, progress=False)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["box_ap"] == pytest.approx(1.0) and data["num_images"] == 3
    assert list(data["box_stats"]) == list(STAT_NAMES)
    assert len(data["per_class"]) == 20 and data["per_class"][0]["name"] == PHRASES[0]
    table = report.format_table()
    assert "box" in table and "mask" in table and "100.0" in table
    assert all(phrase in table for phrase in PHRASES)


def test_image_dir_argument(shapes_coco, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(shapes_coco.parent / "images", moved)
    annotations = tmp_path / "ann.json"
    shutil.copy(shapes_coco, annotations)
    report = evaluate_coco(_predictor(SEEDS), annotations, moved, max_images=2, progress=False)
    assert report.box_ap == pytest.approx(1.0) and report.image_dir == str(moved)


def test_bad_inputs(tmp_path):
    predictor = _predictor(range(2))
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        evaluate_coco(predictor, missing)
    not_coco = tmp_path / "not_coco.json"
    not_coco.write_text(json.dumps({"annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    with pytest.raises(ValueError, match=r"not_coco\.json.*'images'"):
        evaluate_coco(predictor, not_coco)
    not_json = tmp_path / "not_json.json"
    not_json.write_text("images: []")
    with pytest.raises(ValueError, match=r"not_json\.json"):
        evaluate_coco(predictor, not_json)
    annotations = export_coco(range(2), tmp_path / "data")
    (annotations.parent / "images" / "0000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"0000001\.png"):
        evaluate_coco(predictor, annotations)
    assert predictor.proposer.prompts == []  # every image is checked before any prediction
    with pytest.raises(ValueError, match="max_images"):
        evaluate_coco(predictor, annotations, max_images=0)


def test_without_pycocotools(monkeypatch, shapes_coco):
    for name in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval", "pycocotools.mask"):
        monkeypatch.setitem(sys.modules, name, None)
    hint = r'pip install pycocotools \(or, in the checkout, pip install -e "\.\[eval\]"\)'
    with pytest.raises(ImportError, match=hint):
        evaluate_coco(_predictor(range(1)), shapes_coco)


def test_tiny_models_end_to_end(tiny_gdino_dir, tiny_sam_dir, scene, tmp_path):
    # the tiny Grounding DINO (side 64) needs a non-square image: conftest's 90 x 120 scene
    (tmp_path / "images").mkdir()
    Image.fromarray(scene).save(tmp_path / "images" / "scene.png")
    boxes = {1: (15, 10, 45, 40), 2: (60, 50, 110, 80)}  # the red square, the blue rectangle
    annotations = []
    for category_id, (x1, y1, x2, y2) in boxes.items():
        mask = np.zeros(scene.shape[:2], bool)
        mask[y1:y2, x1:x2] = True
        annotations.append(
            {
                "id": category_id,
                "image_id": 7,
                "category_id": category_id,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": int(mask.sum()),
                "segmentation": rle_encode(mask),
                "iscrowd": 0,
            }
        )
    dataset = {
        "images": [{"id": 7, "file_name": "scene.png", "height": 90, "width": 120}],
        "annotations": annotations,
        "categories": [{"id": 2, "name": "blue rectangle"}, {"id": 1, "name": "red square"}],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(dataset))
    predictor = GroundedSAM(detector=tiny_gdino_dir, segmenter=tiny_sam_dir, device="cpu")
    report = evaluate_coco(predictor, tmp_path / "annotations.json", progress=False)
    assert report.classes == ["red square", "blue rectangle"]  # ordered by category id
    assert report.num_images == 1 and report.num_detections > 0
    assert sum(row.num_detections for row in report.per_class) == report.num_detections
    for value in (*report.box_stats.values(), *report.mask_stats.values()):
        assert value is None or 0.0 <= value <= 1.0


def test_bundled_shapes_sam_from_true_boxes(tmp_path):
    """Real masks on held-out scenes: the bundled shapes-sam prompted with the true boxes."""
    seeds = range(HELD_OUT_SEEDS.start + 6000, HELD_OUT_SEEDS.start + 6030)
    annotations = export_coco(seeds, tmp_path)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        segmenter = SamSegmenter.from_pretrained("shapes-sam", device="cpu")  # weights/shapes
        predictor = GroundedSAM(detector=OracleProposer(seeds), segmenter=segmenter)
        report = evaluate_coco(predictor, annotations, progress=False)
    finally:
        torch.set_num_threads(previous)
    assert (report.box_ap, report.box_ap50, report.box_ap75) == pytest.approx((1, 1, 1))
    assert report.mask_ap50 >= 0.9 and report.mask_ap >= 0.6, report.format_table()


def test_checked_dataset_and_boxes_only_ground_truth(shapes_coco, tmp_path):
    data = json.loads(shapes_coco.read_text())
    for ann in data["annotations"]:
        del ann["segmentation"]
    boxes_only = tmp_path / "boxes.json"
    boxes_only.write_text(json.dumps(data))
    dataset = load_coco_dataset(boxes_only, shapes_coco.parent / "images", max_images=4)
    assert dataset.classes == PHRASES and dataset.category_ids == tuple(range(1, 21))
    assert len(dataset.paths) == 4 and not dataset.has_masks
    report = evaluate_coco(_predictor(SEEDS), dataset, progress=False)
    assert report.num_images == 4 and report.box_ap == pytest.approx(1.0)
    assert set(report.mask_stats.values()) == {None}
    assert all(row.mask_ap is None for row in report.per_class)
    with pytest.raises(ValueError, match="image_dir and max_images"):
        evaluate_coco(_predictor(SEEDS), dataset, max_images=2)

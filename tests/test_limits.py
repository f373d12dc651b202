"""Bounded work and memory whatever the input: detections capped, NMS linear in memory."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import grounded_seg
from grounded_seg import GroundedSAM, segment
from grounded_seg.boxes import box_iou, class_aware_nms
from grounded_seg.proposers.base import Proposals
from grounded_seg.proposers.grounding_dino import GroundingDinoProposer, merge_passes


def _reference_nms(xyxy, scores, class_ids, threshold):
    """The textbook greedy algorithm on the full IoU matrix (fine for small inputs)."""
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(xyxy[order], xyxy[order])
    kept: list[int] = []
    for i in range(len(order)):
        same = [k for k in kept if class_ids[order[k]] == class_ids[order[i]]]
        if all(iou[k, i] <= threshold for k in same):
            kept.append(i)
    return order[kept]


def test_class_aware_nms_equals_the_textbook_algorithm():
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        n = int(torch.randint(0, 40, (1,), generator=generator))
        corner = torch.rand(n, 2, generator=generator) * 40
        xyxy = torch.cat([corner, corner + 1 + torch.rand(n, 2, generator=generator) * 25], 1)
        scores = torch.rand(n, generator=generator).round(decimals=1)  # ties too
        class_ids = torch.randint(0, 3, (n,), generator=generator)
        threshold = float(torch.rand(1, generator=generator))
        got = class_aware_nms(xyxy, scores, class_ids, threshold)
        torch.testing.assert_close(got, _reference_nms(xyxy, scores, class_ids, threshold))


NMS_MEMORY = """
import resource, sys, torch
from grounded_seg.boxes import class_aware_nms
n = int(sys.argv[1])
generator = torch.Generator().manual_seed(0)
corner = torch.rand(n, 2, generator=generator) * 2000
xyxy = torch.cat([corner, corner + 40], 1)
scores = torch.rand(n, generator=generator)
classes = torch.randint(0, n // 5, (n,), generator=generator)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kept = class_aware_nms(xyxy, scores, classes, 0.5)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(len(kept), grown // 1024)
"""


def test_nms_of_twenty_thousand_boxes_takes_no_quadratic_memory():
    """An LVIS-size class list at box_threshold 0 sends tens of thousands of boxes to the merge;
    an N x N IoU matrix for 20,000 boxes is 1.6 GB (plus the masks made from it)."""
    run = subprocess.run(
        [sys.executable, "-c", NMS_MEMORY, "20000"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    kept, grown_mib = (int(v) for v in run.stdout.split())
    assert 15000 < kept <= 20000
    assert grown_mib < 200, f"peak memory grew by {grown_mib} MiB"


def test_merge_caps_the_result_at_max_detections():
    parts = [
        Proposals(
            np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(5)], np.float32),
            np.linspace(0.9, 0.5, 5, dtype=np.float32) - 0.01 * p,
            np.full(5, p, np.int64),
            [f"c{p}"] * 5,
        )
        for p in range(3)
    ]
    merged = merge_passes(parts, 0.5)
    capped = merge_passes(parts, 0.5, max_detections=4)
    assert len(merged) == 15 and len(capped) == 4
    np.testing.assert_array_equal(capped.scores, merged.scores[:4])
    assert len(merge_passes(parts[:1], 0.5, max_detections=2)) == 2


class CountingSegmenter:
    def __init__(self):
        self.boxes = 0

    def encode_image(self, image):
        return image.shape[:2]

    def segment(self, state, boxes_xyxy):
        self.boxes += len(boxes_xyxy)
        return np.zeros((len(boxes_xyxy), *state), bool), np.ones(len(boxes_xyxy), np.float32)


@pytest.fixture(scope="module")
def tiny_proposer(tiny_gdino_dir):
    return GroundingDinoProposer.from_pretrained(tiny_gdino_dir, device="cpu")


def test_max_detections_keeps_the_best_and_bounds_sam(tiny_proposer, scene):
    segmenter = CountingSegmenter()
    gs = GroundedSAM(detector=tiny_proposer, segmenter=segmenter)
    gs.set_image(scene)
    every = gs.predict("red square. blue car.", box_threshold=0.0, max_detections=None)
    assert len(every) == 20 and segmenter.boxes == 20  # the tiny model's 20 queries
    best = gs.predict("red square. blue car.", box_threshold=0.0, max_detections=3)
    assert len(best) == 3 and segmenter.boxes == 23
    np.testing.assert_array_equal(best.xyxy, every.xyxy[:3])
    np.testing.assert_array_equal(best.confidence, every.confidence[:3])
    default = gs.predict("red square. blue car.", box_threshold=0.0)
    assert len(default) == 20  # the default cap (100) is above what this model finds


def test_each_pass_of_a_long_prompt_hands_at_most_max_detections(tiny_proposer, scene, monkeypatch):
    monkeypatch.setattr(tiny_proposer, "max_text_len", 8)  # one pass per class
    seen = []
    import grounded_seg.proposers.grounding_dino as gdino

    real_merge = gdino.merge_passes

    def spy(parts, threshold, max_detections=None):
        seen.extend(len(p) for p in parts)
        return real_merge(parts, threshold, max_detections)

    monkeypatch.setattr(gdino, "merge_passes", spy)
    prompt = grounded_seg.normalize_prompt(["a", "b", "c", "d", "e", "f"])  # 2 passes of 3
    found = tiny_proposer.propose(tiny_proposer.encode_image(scene), prompt, 0.0, 0.25, 4)
    assert seen == [4, 4] and len(found) == 4


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_bad_max_detections_is_refused_before_loading(value, error, scene):
    with pytest.raises(error, match="max_detections: expected an int >= 1 or None"):
        segment(scene, "cat", detector="/nonexistent", max_detections=value)


BIG_MASKS = """
import resource, numpy as np, torch
from grounded_seg import GroundedSAM
from grounded_seg.shapes import PHRASES, make_scene
torch.set_num_threads(1)
scene = make_scene(1_000_123)
big = np.ascontiguousarray(scene.image.repeat(24, 0).repeat(32, 1)[:3000, :4000])
gs = GroundedSAM(detector="shapes-gdino", segmenter="shapes-sam", device="cpu",
                 proposer_options={"nms_threshold": None})  # all 30 queries, duplicates kept
gs.set_image(big)
gs.predict("red circle", box_threshold=1.0)  # warm: models and image features, no mask
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
det = gs.predict(list(PHRASES), box_threshold=0.0, max_detections=30)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(len(det), det.mask.nbytes // 2**20, grown // 1024)
"""


def test_thirty_masks_of_a_twelve_megapixel_image_cost_little_beyond_themselves():
    """The masks themselves are 30 x 3000 x 4000 bools (343 MiB); their float32 resizing used to
    run 16 at a time and the result was copied twice more (peak +1,172 MiB)."""
    run = subprocess.run(
        [sys.executable, "-c", BIG_MASKS], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    count, masks_mib, grown_mib = (int(v) for v in run.stdout.split())
    assert count == 30 and masks_mib == 343
    assert grown_mib < 1.5 * masks_mib, f"peak grew by {grown_mib} MiB for {masks_mib} MiB of masks"

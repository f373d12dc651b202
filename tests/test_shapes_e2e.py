"""End to end on the shapes world with the bundled models: the answers must be right.

The CLIP route (SAM point-grid candidates scored by shapes-clip, masks from shapes-sam) runs
through the public API on fixed held-out scenes. Any bug in box scaling, SAM prompting, mask
resizing or class mapping shows up here as a wrong answer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounded_seg import GroundedSAM
from grounded_seg.boxes import box_iou
from grounded_seg.shapes import HELD_OUT_SEEDS, PHRASES, export_coco, make_scene

SEEDS = range(HELD_OUT_SEEDS.start + 7000, HELD_OUT_SEEDS.start + 7040)  # 40 fixed scenes


# every test of the route runs on the CPU and again on CUDA (gpu: skipped without one)
@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def clip_route(request):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield GroundedSAM(
        detector="shapes-clip", segmenter="shapes-sam", proposer="clip", device=request.param
    )
    torch.set_num_threads(previous)


def hits(det, scene, phrase: str) -> bool:
    """A detection of ``phrase`` overlaps a true ``phrase`` object with box IoU >= 0.5."""
    truth = [o.box for o in scene.objects if o.phrase == phrase]
    if not len(det) or not truth:
        return False
    iou = box_iou(torch.from_numpy(det.xyxy), torch.from_numpy(np.array(truth, np.float32)))
    return bool((iou >= 0.5).any())


# Issue 5's targets, measured on these 40 scenes (CPU): right object for 0.95 of single-phrase
# prompts (38 of 40), nothing for 1.00 of absent phrases, mask and box AP50 0.945 / 0.945
# (before: 0.75, 0.95, 0.669 / 0.665). What moved them: shapes-sam's automatic mode drops stray
# islands (min_mask_region_area 200), shapes-clip is trained on crops of shapes-sam's own
# candidates too, and the route averages each crop over its four rotations (crop_views 4).
# Settings were chosen on held-out seeds 1008000-1008199 only, then these scenes measured.


def test_single_phrase_prompts(clip_route):
    present_ok, absent_ok = [], []
    for seed in SEEDS:
        scene = make_scene(seed)
        clip_route.set_image(scene.image)
        phrase = scene.phrases[0]
        det = clip_route.predict(phrase)
        assert set(det.data["class_name"].tolist()) <= {phrase}
        present_ok.append(hits(det, scene, phrase))
        absent = next(p for p in PHRASES[seed % 20 :] + PHRASES if p not in scene.phrases)
        absent_ok.append(len(clip_route.predict(absent)) == 0)
    assert np.mean(present_ok) >= 0.9, np.mean(present_ok)
    assert np.mean(absent_ok) >= 0.9, np.mean(absent_ok)


def test_mask_ap50_over_all_phrases(clip_route, tmp_path):
    from grounded_seg.evaluation import evaluate_coco

    annotations = export_coco(SEEDS, tmp_path / "coco")
    report = evaluate_coco(clip_route, annotations, box_threshold=0.0, progress=False)
    assert report.mask_ap50 >= 0.70, report.format_table()
    assert report.box_ap50 >= 0.70, report.format_table()


def test_offline_demo(tmp_path, capsys):
    from PIL import Image

    from grounded_seg.cli import main

    out = tmp_path / "demo.png"
    assert main(["demo", "-o", str(out), "--device", "cpu", "--proposer", "clip"]) == 0
    printed = capsys.readouterr().out
    assert "red circle, blue square (ground truth)" in printed
    assert "by shapes-clip + shapes-sam" in printed
    found = [line.split()[1:3] for line in printed.splitlines() if line.strip().startswith("found")]
    assert sorted(" ".join(f) for f in found) == ["blue square", "red circle"]
    assert Image.open(out).size == (512, 512)
    assert main(["demo", "-o", str(out)]) == 2  # an existing file is not replaced

"""The measuring tools of ``benchmarks/vs_reference.py``: stage attribution and the output check.

The benchmark's claims rest on these two: FLOPs and time land in the stage whose modules did the
work, and "same outputs" really compares the pipelines' boxes and masks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _stages import StageMeter
from _vs_cases import N_BOXES, common_threshold
from _vs_runs import Run, compare


def test_stage_meter_counts_each_stage_exactly() -> None:
    first, second, unused = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8), torch.nn.Linear(4, 4)
    meter = StageMeter({"first": [first], "second": [second], "unused": [unused]})
    x = torch.randn(5, 16)
    with meter.attached(), meter.counting_flops():
        second(first(x))
        second(first(x))
    assert meter.flops == {
        "first": 2 * (2 * 5 * 16 * 32),
        "second": 2 * (2 * 5 * 32 * 8),
        "unused": 0,
    }
    assert meter.seconds["first"] > 0 and meter.seconds["second"] > 0
    assert meter.seconds["unused"] == 0
    # detached: the hooks are gone, nothing more is recorded
    before = dict(meter.seconds)
    first(x)
    assert meter.seconds == before
    assert not first._forward_hooks and not first._forward_pre_hooks


def test_stage_meter_without_counting_records_no_flops() -> None:
    layer = torch.nn.Linear(8, 8)
    meter = StageMeter({"layer": [layer]})
    with meter.attached():
        layer(torch.randn(2, 8))
    assert meter.flops == {"layer": 0} and meter.seconds["layer"] > 0


def _run(boxes: list[np.ndarray], masks: list[np.ndarray]) -> Run:
    return Run(
        seconds=1.0,
        stages={},
        flops=None,
        peak_memory=0,
        base_memory=0,
        boxes=[len(b) for b in boxes],
        outputs=list(zip(boxes, masks, strict=True)),
    )


def test_compare_matches_boxes_in_any_order_and_counts_mask_pixels() -> None:
    h, w = 20, 30
    boxes = np.array([[1, 2, 10, 12], [15, 5, 29, 19]], np.float32)
    masks = np.zeros((2, h, w), bool)
    masks[0, 2:12, 1:10] = True
    masks[1, 5:19, 15:29] = True
    ref_boxes, ref_masks = boxes[::-1].copy(), masks[::-1].copy()  # query order, not score order
    ref_boxes[0, 2] = 29.5  # 0.5 px off
    ref_boxes[0, 3] = 40.0  # beyond the image: clipped to its height, 20, i.e. 1 px off
    same = compare(_run([boxes], [masks]), _run([ref_boxes], [ref_masks]))
    assert same.same_counts and same.box_diff == 1.0 and same.pixels == 2 * h * w
    assert same.pixels_differing == 0 and same.min_iou == 1.0 and same.pixels == 2 * h * w

    ref_masks[1, 2, 1] = False  # one pixel of the first mask lost on the reference side
    one_off = compare(_run([boxes], [masks]), _run([ref_boxes], [ref_masks]))
    assert one_off.pixels_differing == 1
    assert one_off.min_iou == (90 - 1) / 90

    fewer = compare(_run([boxes], [masks]), _run([ref_boxes[:1]], [ref_masks[:1]]))
    assert not fewer.same_counts and "differ" in fewer.line()


def test_threshold_sends_the_same_number_of_boxes_through_both_pipelines() -> None:
    # the scores of image 0 and "black cat" in a CPU run: the reference's midway (0.57977426)
    # let grounded_seg's fourth query (0.5797745, float32 rounding 1.2e-5 higher) through
    reference = [0.5801034, 0.5798122, 0.5797859, 0.5797626]
    ours = [0.5801164, 0.5798211, 0.5797967, 0.5797745]
    assert N_BOXES == 3
    calibration = common_threshold(reference, ours)
    assert calibration.common_gap
    for side in (reference, ours):
        assert sum(score > calibration.threshold for score in side) == N_BOXES
    assert calibration.threshold == pytest.approx((0.5797745 + 0.5797859) / 2)
    assert calibration.margin == pytest.approx((0.5797859 - 0.5797745) / 2)
    assert calibration.score_diff == pytest.approx(0.5801164 - 0.5801034)  # the best scores

    # the gaps do not overlap (ours keeps its 4th above the reference's 3rd): the reference's
    # midway is kept and said to be so
    apart = common_threshold([0.9, 0.8, 0.7, 0.6], [0.95, 0.9, 0.85, 0.75])
    assert not apart.common_gap and apart.threshold == pytest.approx(0.65)
    assert apart.margin == pytest.approx(0.05)


def test_attention_flops_are_counted_on_the_cpu() -> None:
    """scaled_dot_product_attention on the CPU: its two matmuls, 4 * B * H * L * S * D."""

    class Attention(torch.nn.Module):
        def forward(self, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)

    attention = Attention()
    meter = StageMeter({"attention": [attention]})
    q = torch.randn(2, 4, 128, 32)
    for mode in (torch.inference_mode, torch.no_grad):
        with mode(), meter.attached(), meter.counting_flops():
            attention(q, torch.randn(128, 128))
        assert meter.flops["attention"] == 4 * 2 * 4 * 128 * 128 * 32, mode

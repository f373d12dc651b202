"""The same pipeline on CUDA: equal to the CPU answer in float32, close in half precision."""

from __future__ import annotations

import numpy as np
import pytest

from grounded_seg import GroundedSAM

pytestmark = pytest.mark.gpu


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


@pytest.fixture(scope="module")
def cpu_answer(tiny_gdino_dir, tiny_sam_dir):
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    gs = GroundedSAM(detector=tiny_gdino_dir, segmenter=tiny_sam_dir, device="cpu")
    gs.set_image(image)
    return image, gs.predict("red square. blue car.", box_threshold=0.0)


def test_cuda_float32_matches_cpu(tiny_gdino_dir, tiny_sam_dir, cpu_answer):
    image, expected = cpu_answer
    gs = GroundedSAM(detector=tiny_gdino_dir, segmenter=tiny_sam_dir, device="cuda")
    assert gs.proposer.device.type == "cuda" and gs.segmenter.device.type == "cuda"
    gs.set_image(image)
    det = gs.predict("red square. blue car.", box_threshold=0.0)
    assert len(det) == len(expected)
    np.testing.assert_allclose(det.xyxy, expected.xyxy, atol=1e-2)
    np.testing.assert_array_equal(det.class_id, expected.class_id)
    assert min(mask_iou(a, b) for a, b in zip(det.mask, expected.mask, strict=True)) >= 0.98


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_half_precision_runs_and_stays_close(tiny_gdino_dir, tiny_sam_dir, cpu_answer, dtype):
    image, expected = cpu_answer
    gs = GroundedSAM(detector=tiny_gdino_dir, segmenter=tiny_sam_dir, device="cuda", dtype=dtype)
    gs.set_image(image)
    det = gs.predict("red square. blue car.", box_threshold=0.0)
    assert det.mask.shape == expected.mask.shape and det.mask.dtype == bool
    assert np.all((det.confidence >= 0) & (det.confidence <= 1))
    # random tiny weights make scores nearly tie, so compare the best box only
    best = np.argmax(expected.confidence)
    assert np.abs(det.xyxy - expected.xyxy[best]).max(axis=1).min() < 5.0


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_cuda_compiled_sam_matches_eager_float32(dtype):
    """compile=True on CUDA (the fast path's other half): the trained shapes-sam from the true
    boxes gives the eager float32 masks back (mask IoU >= 0.98)."""
    from grounded_seg.segmenters.sam import SamSegmenter
    from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene

    reference = SamSegmenter.from_pretrained("shapes-sam", device="cuda")
    fast = SamSegmenter.from_pretrained("shapes-sam", device="cuda", dtype=dtype, compile=True)
    for seed in range(HELD_OUT_SEEDS.start, HELD_OUT_SEEDS.start + 5):
        scene = make_scene(seed)
        expected, _ = reference.segment(reference.encode_image(scene.image), scene.boxes)
        got, _ = fast.segment(fast.encode_image(scene.image), scene.boxes)
        assert min(mask_iou(a, b) for a, b in zip(got, expected, strict=True)) >= 0.98

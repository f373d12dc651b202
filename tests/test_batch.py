"""Batched inference: ``predict_batch`` and ``segment([...])`` give the answers of one-by-one
calls, with one Grounding DINO forward per text pass and one SAM encoder call per batch."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from grounded_seg import GroundedSAM, segment
from grounded_seg.shapes import HELD_OUT_SEEDS, PHRASES, make_scene

SEEDS = range(HELD_OUT_SEEDS.start + 3200, HELD_OUT_SEEDS.start + 3216)  # 16 fixed scenes


@pytest.fixture(scope="module")
def shapes_gs():
    return GroundedSAM(detector="shapes-gdino", segmenter="shapes-sam", device="cpu")


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _one_by_one(gs, images, prompt, **kwargs):
    found = []
    for image in images:
        gs.set_image(image)
        found.append(gs.predict(prompt, **kwargs))
    gs.reset_image()
    return found


def _count_calls(module: torch.nn.Module, name: str, monkeypatch) -> list[int]:
    """Batch sizes of each call of ``module.<name>``."""
    calls: list[int] = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        first = args[0] if args else next(iter(kwargs.values()))
        calls.append(int(first.shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_same_size_batch_equals_one_by_one_to_float_rounding(shapes_gs, monkeypatch):
    images = [make_scene(seed).image for seed in SEEDS]
    prompt = list(PHRASES)
    single = _one_by_one(shapes_gs, images, prompt)
    gdino_calls = _count_calls(shapes_gs.proposer.model, "forward", monkeypatch)
    sam_calls = _count_calls(shapes_gs.segmenter.model, "get_image_embeddings", monkeypatch)
    batched = shapes_gs.predict_batch(images[:8], prompt) + shapes_gs.predict_batch(
        images[8:], prompt
    )
    assert gdino_calls == [8, 8]  # 20 phrases fit one text pass: one forward per batch
    assert len(sam_calls) == 2 and sum(sam_calls) == sum(len(d) > 0 for d in single)
    assert sum(len(d) for d in single) >= 20  # the scenes are not empty (28 found)
    for a, b in zip(single, batched, strict=True):
        assert a.data["class_name"].tolist() == b.data["class_name"].tolist()
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)  # pixels
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-4)
        assert all(_mask_iou(x, y) >= 0.999 for x, y in zip(a.mask, b.mask, strict=True))
        assert b.metadata["best_score"] == pytest.approx(a.metadata["best_score"], abs=1e-4)


def test_mixed_sizes_go_through_one_padded_batch(shapes_gs, monkeypatch):
    """Different sizes: one padded forward, every result at its own image's size. shapes-gdino
    was trained on unpadded 128 x 128 scenes only, so padding moves its answers (measured in
    benchmarks/RESULTS.md); here the mechanics: sizes, masks, order, and padding that ends
    where each image ends."""
    sizes = [(128, 128), (150, 128), (128, 170), (96, 140)]  # (height, width)
    images = [
        cv2.resize(make_scene(seed).image, (w, h))
        for seed, (h, w) in zip(SEEDS, sizes, strict=False)
    ]
    states = [shapes_gs.proposer.encode_image(image) for image in images]
    batch = shapes_gs.proposer.stack(states)
    assert batch.sizes == sizes
    for i, state in enumerate(states):
        h, w = state.pixel_values.shape[-2:]
        assert torch.equal(batch.pixel_values[i, :, :h, :w], state.pixel_values[0])
        assert int(batch.pixel_mask[i].sum()) == h * w and int(batch.pixel_mask[i, :h, :w].min())
        assert float(batch.pixel_values[i].abs().sum()) == pytest.approx(
            float(state.pixel_values.abs().sum()), rel=1e-6
        )  # zeros everywhere else
    calls = _count_calls(shapes_gs.proposer.model, "forward", monkeypatch)
    found = shapes_gs.predict_batch(images, "red circle. blue square. green triangle.")
    assert calls == [4]
    for det, (h, w) in zip(found, sizes, strict=True):
        if len(det):
            assert det.mask.shape[1:] == (h, w)
            assert (det.xyxy[:, [0, 2]] <= w).all() and (det.xyxy[:, [1, 3]] <= h).all()


def test_padding_matches_transformers_batching(tiny_gdino_dir):
    """The padded batch is laid out as transformers' own image processor lays out one."""
    from transformers import AutoImageProcessor

    from grounded_seg.proposers.grounding_dino import GroundingDinoProposer

    proposer = GroundingDinoProposer.from_pretrained(tiny_gdino_dir, device="cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((60, 90), (80, 50))]
    ours = proposer.stack([proposer.encode_image(image) for image in images])
    theirs = AutoImageProcessor.from_pretrained(tiny_gdino_dir)(images=images, return_tensors="pt")
    assert ours.pixel_values.shape == theirs["pixel_values"].shape
    assert torch.equal(ours.pixel_mask.long(), theirs["pixel_mask"].long())


def test_segment_of_a_list_returns_one_result_per_image():
    images = [make_scene(seed).image for seed in SEEDS[:5]]
    prompt = "red circle. blue square. yellow star."
    options = {"detector": "shapes-gdino", "segmenter": "shapes-sam", "device": "cpu"}
    batched = segment(images, prompt, batch_size=2, **options)
    assert isinstance(batched, list) and len(batched) == 5
    for image, det in zip(images, batched, strict=True):
        alone = segment(image, prompt, **options)
        assert Counter(alone.data["class_name"].tolist()) == Counter(
            det.data["class_name"].tolist()
        )
        np.testing.assert_allclose(alone.xyxy, det.xyxy, atol=1e-3)
    assert segment([], prompt, **options) == []


def test_clip_route_batches_sam_and_matches_one_by_one(monkeypatch):
    gs = GroundedSAM(detector="shapes-clip", segmenter="shapes-sam", proposer="clip", device="cpu")
    images = [make_scene(seed).image for seed in SEEDS[:3]]
    prompt = ["red circle", "blue square", "yellow star"]
    single = _one_by_one(gs, images, prompt)
    calls = _count_calls(gs.segmenter.model, "get_image_embeddings", monkeypatch)
    batched = gs.predict_batch(images, prompt)
    assert calls == [3]  # every image's embedding in one encoder call; candidates per image
    for a, b in zip(single, batched, strict=True):
        assert a.data["class_name"].tolist() == b.data["class_name"].tolist()
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)


def test_batch_arguments_are_checked(shapes_gs, tmp_path):
    with pytest.raises(TypeError, match="expected a list of images, got str"):
        shapes_gs.predict_batch("a.png", "cat")
    with pytest.raises(TypeError, match="expected a list of images, got ndarray"):
        shapes_gs.predict_batch(make_scene(SEEDS[0]).image, "cat")
    assert shapes_gs.predict_batch([], "cat") == []
    with pytest.raises(FileNotFoundError):
        shapes_gs.predict_batch([make_scene(SEEDS[0]).image, tmp_path / "missing.png"], "cat")
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 0"):
        segment([make_scene(SEEDS[0]).image], "cat", batch_size=0, detector="shapes-gdino")


def test_predict_batch_leaves_the_current_image_alone(shapes_gs):
    first, other = make_scene(SEEDS[0]).image, make_scene(SEEDS[1]).image
    shapes_gs.set_image(first)
    before = shapes_gs.predict("red circle. blue square.")
    shapes_gs.predict_batch([other, other], "red circle. blue square.")
    after = shapes_gs.predict("red circle. blue square.")
    assert shapes_gs.image_size == first.shape[:2]
    np.testing.assert_array_equal(before.xyxy, after.xyxy)

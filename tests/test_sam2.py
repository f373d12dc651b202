"""Sam2Segmenter on a tiny offline SAM 2 (random weights, 128 x 128 input): what it loads, how it
preprocesses and scales boxes (the official formulas), masks at the original size, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_sam2 import SIDE, save_tiny_sam2
from torch.nn import functional

from grounded_seg import GroundedSAM
from grounded_seg.errors import InvalidWeightsError
from grounded_seg.official.sam2 import processor_config
from grounded_seg.proposers.base import Proposals
from grounded_seg.segmenters import load_segmenter
from grounded_seg.segmenters.sam2 import Sam2Preprocessor, Sam2Segmenter, scale_boxes

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def tiny_sam2_dir(tmp_path_factory) -> Path:
    return save_tiny_sam2(tmp_path_factory.mktemp("tiny-sam2"))


@pytest.fixture
def segmenter(tiny_sam2_dir) -> Sam2Segmenter:
    seg = load_segmenter(tiny_sam2_dir, device="cpu")
    assert isinstance(seg, Sam2Segmenter)  # picked from config.json's model_type, not the name
    return seg


@pytest.fixture
def image() -> np.ndarray:
    """90 x 120 (not square): smooth random colour."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    return np.kron(small, np.ones((10, 10, 1), np.uint8))


BOXES = np.array([[10, 5, 60, 80], [50, 20, 119, 89], [0, 0, 120, 90]], np.float32)


def test_preprocessing_stretches_to_a_square_without_keeping_the_aspect(segmenter):
    """Left half red, right half blue, 60 x 200: SAM 2 stretches it to 128 x 128 (SAM 1 would
    keep the aspect: 38 rows and padding). Far from the edge, each colour is exact."""
    image = np.zeros((60, 200, 3), np.uint8)
    image[:, :100] = (255, 0, 0)
    image[:, 100:] = (0, 0, 255)
    pixels = segmenter.encode_image(image).pixel_values
    assert pixels.shape == (1, 3, SIDE, SIDE)
    red = torch.tensor(((np.array([1.0, 0, 0]) - MEAN) / STD), dtype=torch.float32)
    blue = torch.tensor(((np.array([0, 0, 1.0]) - MEAN) / STD), dtype=torch.float32)
    torch.testing.assert_close(pixels[0, :, :, :60], red[:, None, None].expand(3, SIDE, 60))
    torch.testing.assert_close(pixels[0, :, :, 68:], blue[:, None, None].expand(3, SIDE, 60))
    # an image already S x S is not resampled: exactly (x / 255 - mean) / std per pixel
    square = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    got = segmenter.encode_image(square).pixel_values[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, (square / 255 - MEAN) / STD, atol=1e-5)


def test_boxes_scale_as_the_official_formula_and_reach_the_prompt_encoder(segmenter, image):
    """boxes / (W, H, W, H) * S: x by 128/120, y by 128/90 (the resize did not keep the aspect)."""
    expected = BOXES.astype(np.float64) / [120, 90, 120, 90] * SIDE
    np.testing.assert_allclose(scale_boxes(BOXES, (90, 120), SIDE).numpy(), expected, rtol=1e-6)
    seen = []
    hook = segmenter.model.prompt_encoder.register_forward_hook(
        lambda _m, _a, kwargs, _o: seen.append(kwargs["input_boxes"].clone()), with_kwargs=True
    )
    try:
        segmenter.segment(segmenter.encode_image(image), BOXES)
    finally:
        hook.remove()
    assert len(seen) == 1  # every box in one decoder call
    np.testing.assert_allclose(seen[0][0].numpy(), expected, rtol=1e-6)


def test_masks_are_the_upsampled_logits_at_the_original_size(segmenter, image):
    state = segmenter.encode_image(image)
    masks, scores = segmenter.segment(state, BOXES)
    assert masks.shape == (3, 90, 120) and masks.dtype == bool
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    # the same decoder call by hand, then the official post-processing: bilinear to (H, W), > 0
    with torch.inference_mode():
        out = segmenter.model(
            image_embeddings=segmenter.features(state),
            input_boxes=scale_boxes(BOXES, (90, 120), SIDE)[None],
            multimask_output=False,
        )
    low_res = out.pred_masks[0, :, 0]
    assert low_res.shape == (3, SIDE // 4, SIDE // 4)
    expected = functional.interpolate(
        low_res[:, None], (90, 120), mode="bilinear", align_corners=False
    )
    np.testing.assert_array_equal(masks, (expected[:, 0] > 0).numpy())
    np.testing.assert_allclose(scores, out.iou_scores[0, :, 0].numpy(), atol=1e-6)
    assert 0 < masks.mean() < 1  # a real answer, neither empty nor full


def test_chunks_of_boxes_give_the_same_answer(tiny_sam2_dir, segmenter, image):
    chunked = Sam2Segmenter.from_pretrained(tiny_sam2_dir, device="cpu")
    chunked.boxes_per_call = 2
    calls = []
    hook = chunked.model.mask_decoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        masks, scores = chunked.segment(chunked.encode_image(image), BOXES)
    finally:
        hook.remove()
    assert len(calls) == 2  # 2 + 1 boxes
    whole, whole_scores = segmenter.segment(segmenter.encode_image(image), BOXES)
    np.testing.assert_array_equal(masks, whole)
    np.testing.assert_allclose(scores, whole_scores, atol=1e-6)


def test_boxes_given_as_a_reversed_view_are_read_as_given(segmenter, image):
    """A view with negative strides (``boxes[::-1]``): the masks come in the view's order."""
    state = segmenter.encode_image(image)
    masks, scores = segmenter.segment(state, BOXES)
    reversed_masks, reversed_scores = segmenter.segment(state, BOXES[::-1])
    np.testing.assert_array_equal(reversed_masks, masks[::-1])
    np.testing.assert_allclose(reversed_scores, scores[::-1], atol=1e-6)


def test_encoder_runs_once_per_image(segmenter, image):
    state = segmenter.encode_image(image)
    assert segmenter.encoder_calls == 0  # encode_image is cheap
    first, _ = segmenter.segment(state, BOXES[:1])
    again, _ = segmenter.segment(state, BOXES)
    segmenter.image_embeddings(state)
    assert segmenter.encoder_calls == 1
    np.testing.assert_array_equal(first[0], again[0])
    assert segmenter.image_embeddings(state).shape == (1, 32, 8, 8)


def test_embed_batch_equals_single_calls(segmenter, image):
    other = np.ascontiguousarray(image[::-1, ::-1])
    batch = [segmenter.encode_image(image), segmenter.encode_image(other)]
    segmenter.embed_batch(batch)
    assert segmenter.encoder_calls == 2
    segmenter.embed_batch(batch)  # nothing left to embed
    assert segmenter.encoder_calls == 2
    for img, state in zip((image, other), batch, strict=True):
        single = segmenter.encode_image(img)
        for ours, ref in zip(state.features, segmenter.features(single), strict=True):
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_empty_boxes_give_empty_masks_without_encoding(segmenter, image):
    masks, scores = segmenter.segment(segmenter.encode_image(image), np.zeros((0, 4)))
    assert masks.shape == (0, 90, 120) and scores.shape == (0,)
    assert segmenter.encoder_calls == 0


@pytest.mark.parametrize(
    ("boxes", "error", "match"),
    [
        (np.array([1.0, 2, 3, 4]), ValueError, r"expected shape \(N, 4\)"),
        (np.zeros((2, 5)), ValueError, r"expected shape \(N, 4\)"),
        (np.array([[0, 0, np.nan, 5]]), ValueError, "finite"),
        (np.array([[10, 0, 5, 5]]), ValueError, "x1 <= x2"),
        ([["a", "b", "c", "d"]], TypeError, r"\(N, 4\) array of numbers"),
    ],
)
def test_bad_boxes_are_refused(segmenter, image, boxes, error, match):
    with pytest.raises(error, match=match):
        segmenter.segment(segmenter.encode_image(image), boxes)


def test_bad_image_is_refused(segmenter):
    with pytest.raises(TypeError, match="uint8"):
        segmenter.encode_image(np.zeros((10, 10, 3), np.float32))


class FixedBoxes:
    """A stand-in proposer: the same known boxes for every prompt."""

    def encode_image(self, image):
        return None

    def propose(self, state, prompt, box_threshold, text_threshold, max_detections=None):
        n = len(BOXES)
        return Proposals(
            BOXES.copy(), np.full(n, 0.9, np.float32), np.zeros(n, np.int64), ["thing"] * n
        )


def test_grounded_sam_loads_sam2_from_a_folder_and_embeds_once(tiny_sam2_dir, image):
    gs = GroundedSAM(detector=FixedBoxes(), segmenter=str(tiny_sam2_dir), device="cpu")
    assert isinstance(gs.segmenter, Sam2Segmenter)
    gs.set_image(image)
    first = gs.predict("thing")
    second = gs.predict("other thing")
    assert gs.segmenter.encoder_calls == 1  # two prompts, one image embedding
    assert first.mask.shape == (3, 90, 120)
    np.testing.assert_array_equal(first.mask, second.mask)
    direct, scores = gs.segmenter.segment(gs.segmenter.encode_image(image), BOXES)
    np.testing.assert_array_equal(first.mask, direct)
    np.testing.assert_allclose(first.data["mask_score"], scores, atol=1e-6)


def test_processor_config_loads_as_the_official_transform(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor_config()))
    pre = Sam2Preprocessor.from_pretrained(tmp_path, local_files_only=True)
    assert pre == Sam2Preprocessor(1024, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1 / 255)


def test_a_preprocessor_of_another_size_or_kind_is_refused(tiny_sam2_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_sam2_dir, folder)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["size"] = {"height": 256, "width": 256}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidWeightsError, match="expected the model's input side 128, got 256"):
        Sam2Segmenter.from_pretrained(folder, device="cpu")
    config["image_processor_type"] = "SamImageProcessor"
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidWeightsError, match="expected a Sam2ImageProcessor config"):
        Sam2Segmenter.from_pretrained(folder, device="cpu")

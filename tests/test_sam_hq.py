"""SamHQSegmenter on a tiny SAM-HQ built offline: loading, the per-image cache, the decoder's
answers against transformers' own SAM decoder, sizes and scaling, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_sam_hq import save_tiny_sam_hq

from grounded_seg import GroundedSAM
from grounded_seg.errors import InvalidWeightsError
from grounded_seg.proposers.base import Proposals
from grounded_seg.segmenters import load_segmenter
from grounded_seg.segmenters.sam import SamSegmenter, scale_boxes
from grounded_seg.segmenters.sam_auto import generate_candidates
from grounded_seg.segmenters.sam_hq import SamHQImageState, SamHQSegmenter, decode_boxes

BOXES = np.array([[50, 30, 450, 270], [0, 0, 120, 300], [300, 100, 499, 299]], np.float32)


@pytest.fixture(scope="module")
def hq_dir(tmp_path_factory) -> Path:
    return save_tiny_sam_hq(tmp_path_factory.mktemp("tiny-sam-hq"))


@pytest.fixture(scope="module")
def segmenter(hq_dir) -> SamHQSegmenter:
    return load_segmenter(hq_dir, device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """300 x 500, not square: the resized input (154 x 256) is zero-padded at the bottom, which
    the masks must leave out when they are resized back."""
    rng = np.random.default_rng(1)
    return (rng.random((300, 500, 3)) * 255).astype(np.uint8)


def count_encoder_runs(model: torch.nn.Module) -> tuple[list[int], object]:
    runs = [0]
    hook = model.vision_encoder.register_forward_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    return runs, hook


def test_load_segmenter_picks_sam_hq_and_the_official_default(segmenter):
    assert type(segmenter) is SamHQSegmenter
    assert segmenter.hq_token_only is False  # the official SamPredictor's default
    assert isinstance(segmenter, SamSegmenter)  # SAM's surface: GroundedSAM treats it as SAM


def test_masks_at_the_original_size_from_boxes_scaled_as_sam(segmenter, image):
    state = segmenter.encode_image(image)
    assert state.original_size == (300, 500)
    assert state.reshaped_size == (154, 256)  # long side 500 -> 256, 300 * 256 / 500 = 153.6
    seen = []
    hook = segmenter.model.prompt_encoder.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(kwargs["input_boxes"].clone()), with_kwargs=True
    )
    try:
        masks, scores = segmenter.segment(state, BOXES)
    finally:
        hook.remove()
    assert masks.shape == (3, 300, 500) and masks.dtype == bool
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    # x scaled by 256 / 500, y by 154 / 300, as segment-anything's apply_boxes
    expected = np.array(
        [[25.6, 15.4, 230.4, 138.6], [0, 0, 61.44, 154.0], [153.6, 51.333, 255.488, 153.487]],
        np.float32,
    )
    np.testing.assert_allclose(seen[0][0].numpy(), expected, atol=1e-3)
    np.testing.assert_array_equal(
        seen[0][0].numpy(), scale_boxes(BOXES, state.original_size, state.reshaped_size)
    )
    # the masks are the decoder's logits > 0, resized to the original (known answer)
    with torch.inference_mode():
        logits, iou = decode_boxes(segmenter.model, state.embeddings, state.vit_features, seen[0])
    np.testing.assert_array_equal(masks, segmenter.upscale_masks(logits, state))
    np.testing.assert_allclose(scores, iou.clamp(0, 1).numpy(), atol=1e-6)
    assert 0 < masks.mean() < 1


def test_the_encoder_runs_once_and_its_early_feature_is_cached(segmenter, image):
    runs, hook = count_encoder_runs(segmenter.model)
    try:
        before = segmenter.encoder_calls
        state = segmenter.encode_image(image)
        first = segmenter.segment(state, BOXES[:1])
        second = segmenter.segment(state, BOXES)
        segmenter.segment(state, BOXES[1:])
        assert runs[0] == 1 and segmenter.encoder_calls - before == 1
        np.testing.assert_array_equal(first[0][0], second[0][0])
        # the cached feature is the output of the first global-attention block (layer 1)
        with torch.inference_mode():
            out = segmenter.model.vision_encoder(state.pixel_values)
        assert len(out.intermediate_embeddings) == 2
        torch.testing.assert_close(state.vit_features, out.intermediate_embeddings[0])
        assert not torch.allclose(state.vit_features, out.intermediate_embeddings[1])
        # ... and it is what segment reads: changing the cache changes the masks, no re-encode
        state.vit_features = torch.zeros_like(state.vit_features)
        changed, _ = segmenter.segment(state, BOXES)
        assert (changed != second[0]).any()
        assert runs[0] == 2  # the one extra run is the check above, not segment
    finally:
        hook.remove()


def test_embed_batch_equals_single_calls(segmenter, image):
    other = np.ascontiguousarray(image[::-1, ::-1])
    single = [segmenter.encode_image(img) for img in (image, other)]
    for state in single:
        segmenter.image_embeddings(state)
    batched = [segmenter.encode_image(img) for img in (image, other)]
    before = segmenter.encoder_calls
    segmenter.embed_batch(batched)
    assert segmenter.encoder_calls - before == 2
    segmenter.embed_batch(batched)  # nothing left to embed
    assert segmenter.encoder_calls - before == 2
    for one, many in zip(single, batched, strict=True):
        torch.testing.assert_close(many.embeddings, one.embeddings, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(many.vit_features, one.vit_features, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(
            segmenter.segment(many, BOXES)[0], segmenter.segment(one, BOXES)[0]
        )


def test_no_boxes_give_empty_masks_without_running_the_encoder(segmenter, image):
    state = segmenter.encode_image(image)
    before = segmenter.encoder_calls
    masks, scores = segmenter.segment(state, np.zeros((0, 4), np.float32))
    assert masks.shape == (0, 300, 500) and masks.dtype == bool
    assert scores.shape == (0,)
    assert segmenter.encoder_calls == before and state.embeddings is None


def sam_with_hq_token_as_fifth_mask(hq_model: torch.nn.Module) -> torch.nn.Module:
    """transformers' SamModel (whose mask decoder uses the transformer's image tokens, as
    segment-anything does) carrying SAM-HQ's weights, the HQ token as a fifth mask token."""
    from transformers import SamConfig, SamModel

    config = hq_model.config.to_dict()
    decoder = {**config["mask_decoder_config"], "num_multimask_outputs": 4}
    decoder.pop("vit_dim")
    sam = SamModel(
        SamConfig(
            vision_config=config["vision_config"],
            prompt_encoder_config=config["prompt_encoder_config"],
            mask_decoder_config=decoder,
        )
    ).eval()
    hq = hq_model.state_dict()
    weights = {key: hq[key] for key in sam.state_dict() if key in hq}
    weights["mask_decoder.mask_tokens.weight"] = torch.cat(
        [hq["mask_decoder.mask_tokens.weight"], hq["mask_decoder.hq_token.weight"]]
    )
    for part in ("proj_in", "layers.0", "proj_out"):
        for param in ("weight", "bias"):
            weights[f"mask_decoder.output_hypernetworks_mlps.4.{part}.{param}"] = hq[
                f"mask_decoder.hq_mask_mlp.{part}.{param}"
            ]
    for param in ("weight", "bias"):  # the IoU head has no row for the HQ token: add a zero one
        row = hq[f"mask_decoder.iou_prediction_head.proj_out.{param}"]
        weights[f"mask_decoder.iou_prediction_head.proj_out.{param}"] = torch.cat(
            [row, torch.zeros_like(row[:1])]
        )
    sam.load_state_dict(weights, strict=True)
    return sam


def test_sam_half_of_the_decoder_equals_transformers_sam_decoder(segmenter, image):
    """SAM-HQ's mask = SAM's single mask + the HQ token's. SAM's half is SAM's decoder run with
    one more output token: transformers' SamModel with the HQ token as a fifth mask token gives
    it (and the IoU), independently of the code under test."""
    state = segmenter.encode_image(image)
    embeddings = segmenter.image_embeddings(state)
    boxes = torch.from_numpy(scale_boxes(BOXES, state.original_size, state.reshaped_size))[None]
    sam = sam_with_hq_token_as_fifth_mask(segmenter.model)
    with torch.inference_mode():
        both, iou = decode_boxes(segmenter.model, embeddings, state.vit_features, boxes)
        hq_only, iou_hq = decode_boxes(segmenter.model, embeddings, state.vit_features, boxes, True)
        reference = sam(image_embeddings=embeddings, input_boxes=boxes, multimask_output=False)
        stock = segmenter.model(
            image_embeddings=embeddings,
            intermediate_embeddings=[state.vit_features],
            input_boxes=boxes,
            multimask_output=False,
        )
    torch.testing.assert_close(both - hq_only, reference.pred_masks[0, :, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(iou, reference.iou_scores[0, :, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(iou_hq, iou)  # one IoU: SAM's, whichever mask is returned
    # transformers' SamHQModel.forward upscales the image tokens from before its transformer
    # (see sam_hq's module doc); with these weights that is visible in the logits
    stock_diff = float((stock.pred_masks[0, :, 0] - both).abs().max())
    print(f"SamHQModel.forward vs the official data flow: max abs diff {stock_diff:.3g}")


def test_hq_token_only_returns_the_hq_mask(hq_dir, segmenter, image):
    only = SamHQSegmenter.from_pretrained(hq_dir, device="cpu", hq_token_only=True)
    state = only.encode_image(image)
    masks, _ = only.segment(state, BOXES)
    boxes = torch.from_numpy(scale_boxes(BOXES, state.original_size, state.reshaped_size))[None]
    with torch.inference_mode():
        logits, _ = decode_boxes(only.model, state.embeddings, state.vit_features, boxes, True)
    np.testing.assert_array_equal(masks, only.upscale_masks(logits, state))
    default, _ = segmenter.segment(segmenter.encode_image(image), BOXES)
    assert (default != masks).any()


def test_a_sam_folder_is_refused_naming_its_model_type(tiny_sam_dir):
    refused = "expected a 'sam_hq' model, got model_type 'sam'"
    with pytest.raises(InvalidWeightsError, match=refused):
        SamHQSegmenter.from_pretrained(tiny_sam_dir, device="cpu")


def test_the_automatic_mode_is_refused_clearly(segmenter, image, tiny_clip_dir):
    state = segmenter.encode_image(image)
    with pytest.raises(TypeError, match="SamHQSegmenter has no automatic mask mode"):
        generate_candidates(segmenter, state)
    with pytest.raises(TypeError, match="SamHQSegmenter has no automatic mask mode"):
        GroundedSAM(detector=tiny_clip_dir, segmenter=segmenter, proposer="clip", device="cpu")


def test_bad_inputs(segmenter, tiny_sam_dir, image):
    sam_state = SamSegmenter.from_pretrained(tiny_sam_dir, device="cpu").encode_image(image)
    with pytest.raises(TypeError, match=r"expected a SamHQImageState .* got SamImageState"):
        segmenter.segment(sam_state, BOXES)
    state = segmenter.encode_image(image)
    assert isinstance(state, SamHQImageState)
    with pytest.raises(ValueError, match=r"expected shape \(N, 4\) xyxy pixels, got \(2, 3\)"):
        segmenter.segment(state, np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="expected a transformers SamHQModel, got Linear"):
        SamHQSegmenter(torch.nn.Linear(2, 2), segmenter.image_processor)
    with pytest.raises(TypeError, match="hq_token_only: expected True or False, got 1"):
        SamHQSegmenter(segmenter.model, segmenter.image_processor, hq_token_only=1)


class FixedBoxes:
    """A stand-in proposer: the same pixel boxes for any prompt, best first."""

    def encode_image(self, image):
        return None

    def propose(self, state, prompt, box_threshold, text_threshold, max_detections=None):
        scores = np.array([0.9, 0.8, 0.7], np.float32)
        return Proposals(BOXES.copy(), scores, np.zeros(3, np.int64), ["thing"] * 3)


def test_grounded_sam_runs_sam_hq_from_a_folder(hq_dir, segmenter, image):
    gs = GroundedSAM(detector=FixedBoxes(), segmenter=str(hq_dir), device="cpu")
    assert type(gs.segmenter) is SamHQSegmenter
    gs.set_image(image)
    found = gs.predict("thing")
    np.testing.assert_allclose(found.xyxy, BOXES)
    expected, scores = segmenter.segment(segmenter.encode_image(image), BOXES)
    np.testing.assert_array_equal(found.mask, expected)
    np.testing.assert_allclose(found.data["mask_score"], scores, atol=1e-6)

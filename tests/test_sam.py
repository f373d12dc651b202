"""SAM segmenter: box prompts scaled like SAM's processor, masks back at the original size."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grounded_seg.segmenters.sam import SamSegmenter, scale_boxes


@pytest.mark.parametrize(("height", "width"), [(300, 500), (500, 300), (1024, 1024), (77, 1301)])
def test_scale_boxes_matches_sam_processor(height, width):
    from transformers import SamImageProcessorPil, SamProcessor

    processor = SamProcessor(image_processor=SamImageProcessorPil())
    boxes = [[10.0, 20.0, width - 5.0, height - 7.0], [0.0, 0.0, width / 2, height / 3]]
    image = np.zeros((height, width, 3), np.uint8)
    expected = processor(images=image, input_boxes=[boxes], return_tensors="pt")
    reshaped = tuple(int(v) for v in expected["reshaped_input_sizes"][0])
    ours = scale_boxes(np.array(boxes), (height, width), reshaped)
    np.testing.assert_allclose(ours, expected["input_boxes"][0].numpy(), rtol=1e-6, atol=1e-4)


class BoxPainter(torch.nn.Module):
    """A stand-in SamModel: the low-res mask logit is +10 inside the prompted box, -10 outside.

    It works in SAM's frame: boxes arrive in pixels of the 1024-padded input; low-res masks are
    256 x 256 (1024 / 4), as in the real model. Counts encoder and decoder calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.encoder_calls = 0
        self.decoder_calls = 0
        self.boxes_seen: list[torch.Tensor] = []

    def get_image_embeddings(self, pixel_values):
        self.encoder_calls += 1
        return torch.zeros(1, 4, 64, 64)

    def forward(self, image_embeddings, input_boxes, multimask_output):
        assert multimask_output is False
        self.decoder_calls += 1
        self.boxes_seen.append(input_boxes.clone())
        n = input_boxes.shape[1]
        ys = (torch.arange(256) + 0.5) * 4  # low-res pixel centres in the 1024 frame
        xs = (torch.arange(256) + 0.5) * 4
        masks = torch.full((1, n, 1, 256, 256), -10.0)
        for i, (x1, y1, x2, y2) in enumerate(input_boxes[0].tolist()):
            inside = ((ys >= y1) & (ys < y2))[:, None] & ((xs >= x1) & (xs < x2))[None, :]
            masks[0, i, 0][inside] = 10.0
        iou = torch.linspace(0.5, 1.2, n).reshape(1, n, 1)  # 1.2 must come back clipped to 1
        return SimpleNamespace(pred_masks=masks, iou_scores=iou)


@pytest.fixture
def painter_segmenter():
    from transformers import SamImageProcessorPil

    return SamSegmenter(BoxPainter(), SamImageProcessorPil())


def box_mask(height, width, box):
    x1, y1, x2, y2 = (max(0, v) for v in box)
    mask = np.zeros((height, width), bool)
    mask[int(y1) : int(y2), int(x1) : int(x2)] = True
    return mask


@pytest.mark.parametrize(("height", "width"), [(300, 500), (480, 360), (123, 457)])
def test_masks_come_back_where_the_boxes_were(painter_segmenter, height, width):
    boxes = np.array(
        [
            [width * 0.2, height * 0.15, width * 0.6, height * 0.65],
            [0, 0, width / 4, height / 2],
            [width - 60, height - 40, width, height],
        ],
        np.float32,
    )
    image = np.zeros((height, width, 3), np.uint8)
    state = painter_segmenter.encode_image(image)
    masks, scores = painter_segmenter.segment(state, boxes)
    assert masks.shape == (3, height, width) and masks.dtype == bool
    for mask, box in zip(masks, boxes, strict=True):
        ys, xs = np.nonzero(mask)
        extent = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_allclose(extent, box, atol=2)  # every edge within 2 pixels
        x1, y1, x2, y2 = (int(v) for v in box)
        # away from the edges (resampling blurs about one low-res pixel) the answer is exact
        margin = 6
        assert mask[y1 + margin : y2 - margin, x1 + margin : x2 - margin].all()
        outside = ~box_mask(height, width, (x1 - margin, y1 - margin, x2 + margin, y2 + margin))
        assert not mask[outside].any()
    np.testing.assert_allclose(scores, [0.5, 0.85, 1.0], rtol=1e-6)


def test_one_encoder_call_per_image_and_one_decoder_call_per_prompt(painter_segmenter):
    model = painter_segmenter.model
    state = painter_segmenter.encode_image(np.zeros((100, 200, 3), np.uint8))
    boxes = np.array([[0, 0, 50, 50], [10, 10, 90, 90], [100, 0, 200, 100]], np.float32)
    painter_segmenter.segment(state, boxes)
    painter_segmenter.segment(state, boxes[:1])
    assert model.encoder_calls == 1
    assert model.decoder_calls == 2
    assert [b.shape for b in model.boxes_seen] == [(1, 3, 4), (1, 1, 4)]


def test_no_boxes_runs_nothing(painter_segmenter):
    state = painter_segmenter.encode_image(np.zeros((40, 30, 3), np.uint8))
    masks, scores = painter_segmenter.segment(state, np.zeros((0, 4), np.float32))
    assert masks.shape == (0, 40, 30) and scores.shape == (0,)
    assert painter_segmenter.model.encoder_calls == 0 and painter_segmenter.model.decoder_calls == 0


def test_tiny_real_sam_contract(tiny_sam_dir, scene):
    segmenter = SamSegmenter.from_pretrained(tiny_sam_dir, device="cpu")
    state = segmenter.encode_image(scene)
    masks, scores = segmenter.segment(state, np.array([[15, 10, 45, 40], [60, 50, 110, 80]]))
    assert masks.shape == (2, 90, 120) and masks.dtype == bool
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    again, _ = segmenter.segment(state, np.array([[15, 10, 45, 40], [60, 50, 110, 80]]))
    np.testing.assert_array_equal(masks, again)
    assert segmenter.encoder_calls == 1


def test_many_boxes_go_through_the_decoder_in_chunks_with_the_same_answers():
    from transformers import SamImageProcessorPil

    boxes = np.array([[i * 15, i * 10, i * 15 + 40, i * 10 + 30] for i in range(5)], np.float32)
    image = np.zeros((120, 160, 3), np.uint8)
    results = {}
    for per_call in (2, 64):
        segmenter = SamSegmenter(BoxPainter(), SamImageProcessorPil(), boxes_per_call=per_call)
        results[per_call] = segmenter.segment(segmenter.encode_image(image), boxes)
        seen = [tuple(b.shape) for b in segmenter.model.boxes_seen]
        assert seen == ([(1, 2, 4), (1, 2, 4), (1, 1, 4)] if per_call == 2 else [(1, 5, 4)])
        assert segmenter.model.encoder_calls == 1  # one embedding for every chunk
    np.testing.assert_array_equal(results[2][0], results[64][0])
    assert results[2][0].shape == (5, 120, 160) and results[2][0].any(axis=(1, 2)).all()
    # the stand-in's IoU ramps over the boxes of each call: chunks restart it, so compare per call
    np.testing.assert_allclose(results[2][1], [0.5, 1.0, 0.5, 1.0, 0.5], rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8"])
def test_boxes_per_call_is_checked(bad):
    from transformers import SamImageProcessorPil

    with pytest.raises(ValueError, match="boxes_per_call: expected an int >= 1"):
        SamSegmenter(BoxPainter(), SamImageProcessorPil(), boxes_per_call=bad)


def test_chunked_decoder_matches_one_call_on_a_real_sam(tiny_sam_dir, scene):
    segmenter = SamSegmenter.from_pretrained(tiny_sam_dir, device="cpu")
    state = segmenter.encode_image(scene)
    boxes = np.array([[10, 5, 50, 45], [55, 45, 115, 85], [0, 0, 120, 90]], np.float32)
    whole_masks, whole_scores = segmenter.segment(state, boxes)
    segmenter.boxes_per_call = 1
    masks, scores = segmenter.segment(state, boxes)
    np.testing.assert_array_equal(masks, whole_masks)
    np.testing.assert_allclose(scores, whole_scores, atol=1e-6)


def test_contiguous_rel_pos_bias_is_the_decomposed_formula_and_changes_nothing():
    """The contiguous bias builder (installed by SamSegmenter) returns exactly
    q . R_h[qh - kh] + q . R_w[qw - kw] in a contiguous tensor, and the image embedding stays
    bit-identical to transformers' own builder."""
    from transformers import SamModel

    from grounded_seg.segmenters.rel_pos import contiguous_rel_pos

    from tiny_models import tiny_sam_config

    torch.manual_seed(0)
    model = SamModel(tiny_sam_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos" in name:  # zeros at init: make the bias matter
                param.normal_()
    pixels = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        before = model.get_image_embeddings(pixels)
    assert contiguous_rel_pos(model) == 2  # one attention per layer of the tiny encoder
    assert contiguous_rel_pos(model) == 2  # idempotent
    with torch.inference_mode():
        after = model.get_image_embeddings(pixels)
    assert torch.equal(before, after)
    scratch = model.vision_encoder._grounded_seg_rel_pos_scratch
    assert scratch.tensors == {}  # the reused bias memory is released when the encoder returns

    attention = model.vision_encoder.layers[1].attn  # global attention over the 16 x 16 grid
    size, dim = 16, attention.rel_pos_h.shape[1]
    query = torch.randn(2, size * size, dim)
    with torch.no_grad():
        bias = attention.get_decomposed_rel_pos(
            query, attention.rel_pos_h, attention.rel_pos_w, (size, size), (size, size)
        )
        assert bias.shape == (2, size, size, size, size) and bias.is_contiguous()
        grid = query.reshape(2, size, size, dim)
        for b, qh, qw, kh, kw in [(0, 0, 0, 0, 0), (1, 3, 7, 15, 2), (0, 15, 15, 0, 0)]:
            expected = (
                grid[b, qh, qw] @ attention.rel_pos_h[qh - kh + size - 1]
                + grid[b, qh, qw] @ attention.rel_pos_w[qw - kw + size - 1]
            )
            torch.testing.assert_close(bias[b, qh, qw, kh, kw], expected, rtol=1e-5, atol=1e-5)


def test_contiguous_rel_pos_keeps_gradients_for_fine_tuning():
    """With gradients on, the bias is built out of place: the same gradients reach the
    relative-position tables (and the input) as with transformers' own builder."""
    from transformers import SamModel

    from grounded_seg.segmenters.rel_pos import contiguous_rel_pos

    from tiny_models import tiny_sam_config

    torch.manual_seed(0)
    model = SamModel(tiny_sam_config()).train()
    attention = model.vision_encoder.layers[1].attn  # global attention over the 16 x 16 grid
    with torch.no_grad():  # SamModel's init leaves these weights ~1e-10: make them matter
        for param in attention.parameters():
            param.normal_(std=0.3)
    hidden = torch.randn(1, 16, 16, 32)
    weights = torch.randn(1, 16, 16, 32)
    grads = []
    for install in (False, True):
        if install:
            assert contiguous_rel_pos(model) == 2
        attention.zero_grad()
        x = hidden.clone().requires_grad_(True)
        (attention(x)[0] * weights).sum().backward()
        grads.append((attention.rel_pos_h.grad.clone(), attention.rel_pos_w.grad.clone(), x.grad))
    assert all(float(g.abs().max()) > 1e-3 for g in grads[0])
    for ours, theirs in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_model_with_contiguous_rel_pos_can_be_copied_and_pickled(how):
    """A SamModel that SamSegmenter prepared (bias builder, scratch, forward hook) survives
    copy.deepcopy and pickle: the copy gives the same embeddings, uses the builder bound to its
    own modules, and has its own empty scratch."""
    import copy
    import pickle

    from transformers import SamModel

    from grounded_seg.segmenters.rel_pos import contiguous_rel_pos

    from tiny_models import tiny_sam_config

    torch.manual_seed(0)
    model = SamModel(tiny_sam_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos" in name:
                param.normal_()
    assert contiguous_rel_pos(model) == 2
    copied = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    pixels = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        expected = model.get_image_embeddings(pixels)
        got = copied.get_image_embeddings(pixels)
    assert torch.equal(got, expected)
    attention = copied.vision_encoder.layers[1].attn
    assert attention.get_decomposed_rel_pos.module is attention
    scratch = copied.vision_encoder._grounded_seg_rel_pos_scratch
    assert scratch is not model.vision_encoder._grounded_seg_rel_pos_scratch
    assert attention._grounded_seg_rel_pos_scratch is scratch and scratch.tensors == {}
    assert contiguous_rel_pos(copied) == 2  # still recognised as installed: nothing stacked


def test_compiled_image_encoder_gives_the_eager_answers():
    """compile=True (opt-in): torch.compile on the image encoder, same embeddings and masks as
    the eager model on a trained SAM, state-dict names unchanged."""
    from torch._dynamo.utils import counters

    from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene

    counters.clear()
    eager = SamSegmenter.from_pretrained("shapes-sam", device="cpu")
    compiled = SamSegmenter.from_pretrained("shapes-sam", device="cpu", compile=True)
    assert compiled.compiled and not eager.compiled
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())
    scene = make_scene(HELD_OUT_SEEDS.start + 7)
    pairs = [(seg, seg.encode_image(scene.image)) for seg in (eager, compiled)]
    embeddings = [seg.image_embeddings(st) for seg, st in pairs]
    assert counters["stats"]["unique_graphs"] >= 1  # the encoder really went through dynamo
    scale = float(embeddings[0].abs().max())
    assert float((embeddings[0] - embeddings[1]).abs().max()) <= 1e-4 * scale
    (masks_e, _), (masks_c, _) = (seg.segment(st, scene.boxes) for seg, st in pairs)
    assert masks_e.any() and masks_e.shape == masks_c.shape
    differ = int((masks_e != masks_c).sum())
    assert differ <= 0.001 * masks_e.size, differ  # a logit on the 0 border may flip


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_compile_is_checked(bad):
    with pytest.raises(TypeError, match="compile"):
        SamSegmenter(torch.nn.Linear(1, 1), None, compile=bad)


def test_compile_is_refused_for_a_ready_made_segmenter(painter_segmenter):
    from grounded_seg import GroundedSAM

    with pytest.raises(ValueError, match="compile applies when the segmenter is loaded"):
        GroundedSAM(detector="shapes-gdino", segmenter=painter_segmenter, compile=True)

"""The OWLv2 route: a tiny offline OWLv2 with known heads and controlled outputs, known answers."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv
import torch
from tiny_owlv2 import NUM_BOXES, grid_boxes, save_tiny_owlv2

import grounded_seg
from grounded_seg.errors import InvalidWeightsError
from grounded_seg.prompts import normalize_prompt
from grounded_seg.proposers.base import Proposals
from grounded_seg.proposers.owlv2 import Owlv2Proposer, padded_square_to_pixels


@pytest.fixture(scope="module")
def tiny_owlv2_dir(tmp_path_factory):
    return save_tiny_owlv2(tmp_path_factory.mktemp("tiny-owlv2"))


@pytest.fixture(scope="module")
def proposer(tiny_owlv2_dir) -> Owlv2Proposer:
    return Owlv2Proposer.from_pretrained(tiny_owlv2_dir, device="cpu")


def image(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(height * 1000 + width)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def constant_boxes(box: tuple[float, float, float, float]):
    """A stand-in ``box_predictor``: every patch predicts ``box`` (normalised cx, cy, w, h)."""

    def box_predictor(image_feats, feature_map, interpolate_pos_encoding=False):
        return torch.tensor(box).expand(image_feats.shape[0], image_feats.shape[1], 4).clone()

    return box_predictor


def boxes_from(rows: list[tuple[float, float, float, float]], side: float):
    """A stand-in ``box_predictor`` giving patch ``i`` the xyxy pixel box ``rows[i]`` of a
    ``side``-pixel square (patches past the list: a tiny box in the corner)."""
    xyxy = torch.tensor(rows + [(0.0, 0.0, 1.0, 1.0)] * (NUM_BOXES - len(rows))) / side
    cxcywh = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), dim=-1)

    def box_predictor(image_feats, feature_map, interpolate_pos_encoding=False):
        return cxcywh[None].clone()

    return box_predictor


def fixed_logits(logits: list[list[float]], fill: float = -20.0):
    """A stand-in ``class_predictor``: box ``i`` gets ``logits[i]`` (one value per class), the
    boxes past the list ``fill`` for every class."""

    def class_predictor(image_feats, query_embeds=None, query_mask=None):
        n_classes = query_embeds.shape[1]
        out = torch.full((1, image_feats.shape[1], n_classes), fill)
        out[0, : len(logits)] = torch.tensor(logits)
        return out, torch.zeros(1, image_feats.shape[1], n_classes)

    return class_predictor


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


# --- the padded square --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (100, 200, [80.0, 40.0, 120.0, 60.0]),  # landscape: the square's side is the width
        (200, 100, [80.0, 40.0, 100.0, 60.0]),  # portrait: side = height; x2 clipped to 100
    ],
)
def test_padded_square_to_pixels(height, width, expected):
    box = torch.tensor([[0.5, 0.25, 0.2, 0.1]])
    np.testing.assert_allclose(padded_square_to_pixels(box, height, width)[0], expected)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (60, 120, [30.0, 12.0, 90.0, 48.0]),  # side 120: x 0.25..0.75, y 0.1..0.4 of it
        (120, 60, [30.0, 12.0, 60.0, 48.0]),  # side 120 again; x2 = 90 clipped to the width
    ],
)
def test_controlled_box_maps_to_original_pixels(proposer, monkeypatch, height, width, expected):
    """A known normalised box from the box head lands where the padded square puts it, for a
    landscape and a portrait image (a per-axis scaling would give y 6..24 for the first)."""
    monkeypatch.setattr(proposer.model, "box_predictor", constant_boxes((0.5, 0.25, 0.5, 0.3)))
    monkeypatch.setattr(proposer.model, "class_predictor", fixed_logits([[3.0]]))
    state = proposer.encode_image(image(height, width))
    found = proposer.propose(state, normalize_prompt("cat"), 0.5, 0.0)
    assert len(found) == 1  # the other 15 identical boxes score sigmoid(-20)
    np.testing.assert_allclose(found.xyxy[0], expected, atol=1e-4)
    assert found.xyxy.dtype == np.float32


@pytest.mark.parametrize(("height", "width"), [(40, 80), (80, 40)])
def test_tiny_model_grid_boxes_through_the_processor(proposer, height, width):
    """The real processor and model (box head zeroed: each patch predicts its grid cell) give
    the grid of the padded square, clipped; patches over the padding propose nothing."""
    state = proposer.encode_image(image(height, width))
    assert tuple(state.pixel_values.shape) == (1, 3, 32, 32)
    expected = grid_boxes(max(height, width))
    expected[:, 0::2] = expected[:, 0::2].clamp(0, width)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, height)
    features = proposer.image_features(state)
    np.testing.assert_allclose(features.boxes, expected, atol=0.02)
    # a 4 x 4 grid over an 80-pixel square: only the first two rows (or columns) cover the image
    on_image = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
    assert int(on_image.sum()) == 8
    np.testing.assert_array_equal(features.valid, on_image)
    np.testing.assert_allclose(features.objectness, 0.5)  # the objectness head is zeroed too
    found = proposer.propose(state, normalize_prompt("red. blue."), 0.0, 0.0)
    assert len(found) == 8 and found.xyxy.max(0)[2] <= width and found.xyxy.max(0)[3] <= height
    got = sorted(map(tuple, np.round(found.xyxy).tolist()))
    assert got == sorted(map(tuple, np.round(expected[on_image].numpy()).tolist()))


def test_boxes_and_logits_match_the_stock_forward_and_post_processing(proposer, tiny_owlv2_dir):
    """The split (image part once, text part per prompt) gives the stock forward's logits, and
    the boxes are transformers' own post-processing (which scales by max(H, W) too), clipped."""
    from transformers import Owlv2Processor

    rgb = image(30, 70)
    classes = ("red", "blue circle", "shape")
    state = proposer.encode_image(rgb)
    ours = proposer.class_logits(state, normalize_prompt(list(classes)))
    processor = Owlv2Processor.from_pretrained(tiny_owlv2_dir)
    inputs = processor(text=[list(classes)], images=rgb, return_tensors="pt")
    with torch.inference_mode():
        stock = proposer.model(**inputs)
    torch.testing.assert_close(ours, stock.logits[0], rtol=1e-4, atol=1e-5)
    post = processor.image_processor.post_process_object_detection(
        stock, threshold=0.0, target_sizes=[(30, 70)]
    )[0]
    assert len(post["boxes"]) == NUM_BOXES  # sigmoid > 0 for every box: all of them, in order
    boxes = post["boxes"].clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, 70)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, 30)
    torch.testing.assert_close(proposer.image_features(state).boxes, boxes, rtol=0, atol=1e-4)


# --- classes, thresholds, NMS, caps ---------------------------------------------------------


def test_class_ids_are_the_argmax_class_of_the_prompt(proposer, monkeypatch):
    side = 100.0
    rows = [(0, 0, 20, 20), (30, 0, 50, 20), (60, 0, 80, 20), (0, 30, 20, 50)]  # disjoint
    logits = [[2.0, -1.0, 0.5], [-3.0, 1.0, 0.0], [0.0, 0.1, 1.5], [-2.0, 0.2, 0.3]]
    monkeypatch.setattr(proposer.model, "box_predictor", boxes_from(rows, side))
    monkeypatch.setattr(proposer.model, "class_predictor", fixed_logits(logits))
    state = proposer.encode_image(image(100, 100))
    prompt = normalize_prompt(["cat", "potted plant", "dog"])
    found = proposer.propose(state, prompt, 0.5, 0.0)
    # best logits 2.0 (cat), 1.5 (dog), 1.0 (potted plant), 0.3 (dog): sorted by score
    assert found.class_ids.tolist() == [0, 2, 1, 2]
    assert found.phrases == ["cat", "dog", "potted plant", "dog"]
    np.testing.assert_allclose(found.scores, torch.tensor([2.0, 1.5, 1.0, 0.3]).sigmoid())
    np.testing.assert_allclose(found.xyxy, [rows[0], rows[2], rows[1], rows[3]], atol=1e-3)
    assert found.best_score == pytest.approx(float(torch.tensor(2.0).sigmoid()))


def test_box_threshold_drops_just_below_and_keeps_just_above(proposer, monkeypatch):
    rows = [(0, 0, 20, 20), (30, 0, 50, 20), (60, 0, 80, 20)]
    logits = [[logit(0.301)], [logit(0.299)], [logit(0.3)]]
    monkeypatch.setattr(proposer.model, "box_predictor", boxes_from(rows, 100.0))
    monkeypatch.setattr(proposer.model, "class_predictor", fixed_logits(logits))
    state = proposer.encode_image(image(100, 100))
    found = proposer.propose(state, normalize_prompt("cat"), 0.3, 0.0)
    assert len(found) == 1 and found.scores[0] == pytest.approx(0.301, abs=1e-6)
    np.testing.assert_allclose(found.xyxy[0], rows[0], atol=1e-3)
    # text_threshold has no meaning for OWLv2: any value gives the same answer
    again = proposer.propose(state, normalize_prompt("cat"), 0.3, 1.0)
    np.testing.assert_array_equal(again.xyxy, found.xyxy)


def test_nothing_above_threshold_is_empty_with_best_score(proposer, monkeypatch):
    monkeypatch.setattr(proposer.model, "box_predictor", boxes_from([(0, 0, 20, 20)], 100.0))
    monkeypatch.setattr(proposer.model, "class_predictor", fixed_logits([[logit(0.42), -5.0]]))
    state = proposer.encode_image(image(100, 100))
    found = proposer.propose(state, normalize_prompt("cat. dog."), 0.5, 0.0)
    assert isinstance(found, Proposals) and len(found) == 0
    assert found.xyxy.shape == (0, 4) and found.phrases == []
    assert found.best_score == pytest.approx(0.42, abs=1e-6)


def test_box_wholly_in_the_padding_is_never_proposed(proposer, monkeypatch):
    """On a 40 x 100 image (a 100-pixel square), a box at y 60..80 lies in the padding."""
    rows = [(10, 60, 30, 80), (50, 10, 70, 30)]
    monkeypatch.setattr(proposer.model, "box_predictor", boxes_from(rows, 100.0))
    monkeypatch.setattr(proposer.model, "class_predictor", fixed_logits([[5.0], [1.0]]))
    state = proposer.encode_image(image(40, 100))
    found = proposer.propose(state, normalize_prompt("cat"), 0.5, 0.0)
    np.testing.assert_allclose(found.xyxy, [rows[1]], atol=1e-3)
    assert found.best_score == pytest.approx(float(torch.tensor(1.0).sigmoid()))


# IoU((0, 0, 40, 40), (0, 10, 40, 50)) = 1200 / 2000 = 0.6; with (0, 20, 40, 60): 800 / 2400 = 1/3
NMS_ROWS = [(0, 0, 40, 40), (0, 10, 40, 50), (0, 20, 40, 60)]


@pytest.mark.parametrize(
    ("nms_threshold", "logits", "kept"),
    [
        (0.5, [[3.0], [2.0], [1.0]], [0, 2]),  # IoU 0.6 suppressed, 1/3 kept
        (0.7, [[3.0], [2.0], [1.0]], [0, 1, 2]),  # nothing overlaps by more than 0.7
        (0.3, [[3.0], [2.0], [1.0]], [0]),  # 1/3 > 0.3 suppressed too
        (None, [[3.0], [2.0], [1.0]], [0, 1, 2]),  # no NMS
        # class-aware: the 0.6-overlapping box of the other class stays
        (0.5, [[3.0, 0.0], [0.0, 2.0], [1.0, 0.0]], [0, 1, 2]),
    ],
)
def test_class_aware_nms(tiny_owlv2_dir, monkeypatch, nms_threshold, logits, kept):
    proposer = Owlv2Proposer.from_pretrained(tiny_owlv2_dir, nms_threshold=nms_threshold)
    monkeypatch.setattr(proposer.model, "box_predictor", boxes_from(NMS_ROWS, 100.0))
    monkeypatch.setattr(proposer.model, "class_predictor", fixed_logits(logits))
    prompt = normalize_prompt(["cat", "dog"][: len(logits[0])])
    found = proposer.propose(proposer.encode_image(image(100, 100)), prompt, 0.5, 0.0)
    np.testing.assert_allclose(found.xyxy, [NMS_ROWS[i] for i in kept], atol=1e-3)


def test_max_detections_keeps_the_best(proposer, monkeypatch):
    rows = [(0, 0, 10, 10), (20, 0, 30, 10), (40, 0, 50, 10), (60, 0, 70, 10)]
    monkeypatch.setattr(proposer.model, "box_predictor", boxes_from(rows, 100.0))
    monkeypatch.setattr(
        proposer.model, "class_predictor", fixed_logits([[1.0], [4.0], [2.0], [3.0]])
    )
    state = proposer.encode_image(image(100, 100))
    found = proposer.propose(state, normalize_prompt("cat"), 0.5, 0.0, max_detections=2)
    np.testing.assert_allclose(found.xyxy, [rows[1], rows[3]], atol=1e-3)
    assert len(proposer.propose(state, normalize_prompt("cat"), 0.5, 0.0)) == 4


# --- per-image work done once -----------------------------------------------------------------


def test_image_encoder_runs_once_per_image_and_text_once_per_prompt(proposer, monkeypatch):
    calls = {"image": 0, "text": []}
    image_embedder = proposer.model.image_embedder
    get_text_features = proposer.model.owlv2.get_text_features

    def counting_image_embedder(*args, **kwargs):
        calls["image"] += 1
        return image_embedder(*args, **kwargs)

    def counting_text(input_ids, attention_mask=None):
        calls["text"].append(len(input_ids))
        return get_text_features(input_ids=input_ids, attention_mask=attention_mask)

    monkeypatch.setattr(proposer.model, "image_embedder", counting_image_embedder)
    monkeypatch.setattr(proposer.model.owlv2, "get_text_features", counting_text)
    state = proposer.encode_image(image(48, 64))
    assert calls["image"] == 0  # lazily: nothing runs before the first prompt
    first = proposer.propose(state, normalize_prompt("red. blue. circle."), 0.0, 0.0)
    proposer.propose(state, normalize_prompt("shape"), 0.0, 0.0)
    again = proposer.propose(state, normalize_prompt("red. blue. circle."), 0.0, 0.0)
    assert calls["image"] == 1
    assert calls["text"] == [3, 1, 3]  # one text pass per prompt, all its classes at once
    np.testing.assert_array_equal(first.xyxy, again.xyxy)
    np.testing.assert_array_equal(first.scores, again.scores)
    proposer.propose(proposer.encode_image(image(48, 64)), normalize_prompt("red"), 0.0, 0.0)
    assert calls["image"] == 2  # a new image is encoded anew


def test_threads_sharing_one_image_state_encode_it_once(proposer, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    calls = []
    image_embedder = proposer.model.image_embedder

    def counting_image_embedder(*args, **kwargs):
        calls.append(1)
        return image_embedder(*args, **kwargs)

    monkeypatch.setattr(proposer.model, "image_embedder", counting_image_embedder)
    state = proposer.encode_image(image(48, 64))
    prompts = [normalize_prompt(p) for p in ("red", "blue. circle.", "shape", "red. blue.")]
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda p: proposer.propose(state, p, 0.0, 0.0), prompts * 2))
    assert len(calls) == 1
    for one, other in zip(found[:4], found[4:], strict=True):
        np.testing.assert_array_equal(one.xyxy, other.xyxy)
        np.testing.assert_array_equal(one.class_ids, other.class_ids)


# --- bad inputs ---------------------------------------------------------------------------------


def test_bad_inputs_say_what_was_expected(proposer):
    with pytest.raises(TypeError, match="uint8"):
        proposer.encode_image(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="H, W"):
        proposer.encode_image(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(TypeError, match="Owlv2ImageState"):
        proposer.propose({"not": "a state"}, normalize_prompt("cat"), 0.1, 0.0)
    state = proposer.encode_image(image(20, 20))
    with pytest.raises(TypeError, match="Prompt"):
        proposer.propose(state, "cat", 0.1, 0.0)
    long_class = " ".join(["red"] * 20)  # 22 tokens with start and end: over the 16 window
    with pytest.raises(ValueError, match="at most 16"):
        proposer.propose(state, normalize_prompt([long_class]), 0.1, 0.0)
    with pytest.raises(ValueError, match="nms_threshold"):
        Owlv2Proposer(proposer.model, proposer.tokenizer, proposer.image_processor, 1.5)
    with pytest.raises(ValueError, match="template"):
        Owlv2Proposer(proposer.model, proposer.tokenizer, proposer.image_processor, template="x")


def test_folder_of_another_model_is_refused(tiny_clip_dir):
    with pytest.raises(InvalidWeightsError, match=r"'owlv2'.*model_type 'clip'"):
        Owlv2Proposer.from_pretrained(tiny_clip_dir)


# --- end to end ---------------------------------------------------------------------------------


def expected_grid(height: int, width: int) -> list[tuple[float, ...]]:
    boxes = grid_boxes(max(height, width))
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    return sorted(map(tuple, np.round(boxes.numpy()).tolist()))


def test_grounded_sam_with_the_owlv2_route(tiny_owlv2_dir, tiny_sam_dir):
    gs = grounded_seg.GroundedSAM(
        detector=tiny_owlv2_dir, segmenter=tiny_sam_dir, device="cpu", proposer="owlv2"
    )
    assert isinstance(gs.proposer, Owlv2Proposer)
    gs.set_image(image(40, 80))
    det = gs.predict(["red", "blue"], box_threshold=0.0)
    assert isinstance(det, sv.Detections) and len(det) == 8
    assert det.mask.shape == (8, 40, 80) and det.mask.dtype == bool
    assert sorted(map(tuple, np.round(det.xyxy).tolist())) == expected_grid(40, 80)
    assert set(det.data["class_name"].tolist()) <= {"red", "blue"}
    np.testing.assert_array_equal(np.array(["red", "blue"])[det.class_id], det.data["class_name"])
    assert np.all(np.diff(det.confidence) <= 0)
    none = gs.predict("red", box_threshold=1.0)
    assert len(none) == 0 and none.mask.shape == (0, 40, 80)


def test_segment_with_the_owlv2_route(tiny_owlv2_dir, tiny_sam_dir):
    grounded_seg.clear_model_cache()
    try:
        det = grounded_seg.segment(
            image(80, 40),
            "red. blue.",
            proposer="owlv2",
            detector=tiny_owlv2_dir,
            segmenter=tiny_sam_dir,
            device="cpu",
            box_threshold=0.0,
            max_detections=3,
        )
    finally:
        grounded_seg.clear_model_cache()
    assert isinstance(det, sv.Detections) and len(det) == 3
    assert det.mask.shape == (3, 80, 40)
    assert set(map(tuple, np.round(det.xyxy).tolist())) <= set(expected_grid(80, 40))

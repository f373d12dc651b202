"""The CLIP route: SAM point-grid candidates scored by CLIP, with known right answers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grounded_seg import GroundedSAM
from grounded_seg.prompts import normalize_prompt
from grounded_seg.proposers.clip import ClipProposer, crop_regions
from grounded_seg.segmenters.sam import SamSegmenter
from grounded_seg.segmenters.sam_auto import (
    AutoMaskConfig,
    generate_candidates,
    mask_boxes,
    point_grid,
    stability_score,
)

HEIGHT, WIDTH = 120, 160
RED_BOX = (20, 20, 60, 60)  # x1, y1, x2, y2 in original pixels
BLUE_BOX = (90, 60, 140, 110)


def make_scene() -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    x1, y1, x2, y2 = RED_BOX
    image[y1:y2, x1:x2] = (230, 20, 20)
    x1, y1, x2, y2 = BLUE_BOX
    image[y1:y2, x1:x2] = (20, 20, 230)
    return image


class ObjectSam(torch.nn.Module):
    """A stand-in SamModel that knows where the objects are.

    A point prompt inside an object yields that object's rectangle (3 equal masks, predicted IoU
    0.95); a point on the background yields an empty mask. It works in SAM's frame: points in
    pixels of the 1024-padded input, 256 x 256 low-res logits.
    """

    def __init__(self, boxes, scale: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.boxes = [tuple(v * scale for v in box) for box in boxes]  # in the 1024 frame
        self.encoder_calls = 0
        self.decoder_calls = 0

    def get_image_embeddings(self, pixel_values):
        self.encoder_calls += 1
        return torch.zeros(1, 4, 64, 64)

    def forward(self, image_embeddings, input_points=None, input_labels=None, input_boxes=None,
                multimask_output=True):  # fmt: skip
        self.decoder_calls += 1
        centres = (torch.arange(256) + 0.5) * 4
        points = input_points[0, :, 0]
        masks = torch.full((1, len(points), 3, 256, 256), -10.0)
        for i, (px, py) in enumerate(points.tolist()):
            for x1, y1, x2, y2 in self.boxes:
                if x1 <= px < x2 and y1 <= py < y2:
                    rows = (centres >= y1) & (centres < y2)
                    cols = (centres >= x1) & (centres < x2)
                    masks[0, i, :, rows[:, None] & cols[None, :]] = 10.0
        return SimpleNamespace(pred_masks=masks, iou_scores=torch.full((1, len(points), 3), 0.95))


COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


class ColourScorer:
    """A stand-in CLIP: a crop embeds as its mean colour minus grey; a text as its colour word.

    So the crop that holds the red square matches "a photo of a red square." and background
    crops match the background texts (embedded as a small grey-ish vector).
    """

    def __init__(self, logit_scale: float = 100.0) -> None:
        self.logit_scale = logit_scale
        self.image_batches: list[int] = []
        self.text_calls = 0

    def embed_images(self, images, batch_size: int = 64):
        self.image_batches.append(len(images))
        means = torch.tensor(np.array([crop.reshape(-1, 3).mean(0) for crop in images]))
        return torch.nn.functional.normalize(means.float() - 100.0, dim=-1)

    def embed_texts(self, texts):
        self.text_calls += 1
        rows = []
        for text in texts:
            colour = next((c for c in COLOURS if c in text), None)
            rows.append(COLOURS[colour] if colour else (0.4, 0.3, 0.3))
        return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


@pytest.fixture
def route():
    from transformers import SamImageProcessorPil

    sam = ObjectSam([RED_BOX, BLUE_BOX], scale=1024 / WIDTH)
    segmenter = SamSegmenter(sam, SamImageProcessorPil())
    scorer = ColourScorer()
    proposer = ClipProposer(scorer, segmenter, AutoMaskConfig(points_per_side=16))
    return SimpleNamespace(sam=sam, segmenter=segmenter, scorer=scorer, proposer=proposer)


def test_candidates_are_the_objects(route):
    state = route.segmenter.encode_image(make_scene())
    found = generate_candidates(route.segmenter, state, AutoMaskConfig(points_per_side=16))
    assert len(found) == 2  # many grid points hit each object: NMS keeps one region each
    order = np.argsort(found.xyxy[:, 0])
    np.testing.assert_allclose(found.xyxy[order], [RED_BOX, BLUE_BOX], atol=1.5)
    assert found.masks.shape == (2, HEIGHT, WIDTH)
    x1, y1, x2, y2 = RED_BOX
    assert found.masks[order[0], y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].all()
    np.testing.assert_allclose(found.scores, 0.95, rtol=1e-6)
    # 256 points in batches of 64
    assert route.sam.decoder_calls == 4 and route.sam.encoder_calls == 1


def test_single_class_prompt_returns_that_object(route):
    gs = GroundedSAM(detector=route.proposer, segmenter=route.segmenter)
    gs.set_image(make_scene())
    det = gs.predict("red square")
    assert len(det) == 1
    np.testing.assert_allclose(det.xyxy[0], RED_BOX, atol=1.5)
    assert det.data["class_name"].tolist() == ["red square"] and det.class_id.tolist() == [0]
    x1, y1, x2, y2 = RED_BOX
    assert det.mask[0, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].all()
    assert det.mask[0].sum() == pytest.approx((x2 - x1) * (y2 - y1), rel=0.1)
    assert 0.35 < det.confidence[0] <= 1.0
    np.testing.assert_allclose(det.data["mask_score"], [0.95], rtol=1e-6)


def test_class_list_labels_each_object(route):
    gs = GroundedSAM(detector=route.proposer, segmenter=route.segmenter)
    gs.set_image(make_scene())
    det = gs.predict(["blue square", "red square"])
    by_name = dict(zip(det.data["class_name"].tolist(), det.xyxy, strict=True))
    assert sorted(by_name) == ["blue square", "red square"]
    np.testing.assert_allclose(by_name["red square"], RED_BOX, atol=1.5)
    np.testing.assert_allclose(by_name["blue square"], BLUE_BOX, atol=1.5)
    names = np.array(["blue square", "red square"])
    np.testing.assert_array_equal(det.data["class_name"], names[det.class_id])


def test_absent_class_and_all_background_give_empty_results(route):
    gs = GroundedSAM(detector=route.proposer, segmenter=route.segmenter)
    gs.set_image(make_scene())
    det = gs.predict("green square")  # every crop matches a background text best
    assert len(det) == 0 and det.mask.shape == (0, HEIGHT, WIDTH)
    gs.set_image(np.full((HEIGHT, WIDTH, 3), 128, np.uint8))
    route.sam.boxes = []  # SAM finds no region at all
    det = gs.predict("red square")
    assert len(det) == 0 and det.xyxy.shape == (0, 4)


def test_per_image_work_is_done_once(route):
    gs = GroundedSAM(detector=route.proposer, segmenter=route.segmenter)
    gs.set_image(make_scene())
    for prompt in ("red square", "blue square", ["red square", "blue square"], "red square"):
        gs.predict(prompt)
    assert route.sam.encoder_calls == 1
    assert route.sam.decoder_calls == 4  # the grid once; no second SAM call for the boxes
    assert route.scorer.image_batches == [2]  # both crops in one batched forward, once
    assert route.scorer.text_calls == 3  # the repeated prompt's texts come from the cache


def test_temperature_sharpens_the_softmax(route):
    state = route.proposer.encode_image(make_scene())
    prompt = normalize_prompt(["red square", "blue square"])
    route.scorer.logit_scale = 100.0
    sharp = route.proposer.class_probabilities(state, prompt)
    route.scorer.logit_scale = 1.0
    soft = route.proposer.class_probabilities(state, prompt)
    assert sharp.max(dim=-1).values.min() > soft.max(dim=-1).values.max()
    # the seed's formula, by hand: softmax(exp(t) * cos(crop, text)) over classes + backgrounds
    crops = route.proposer.crop_embeddings(state)
    texts = route.scorer.embed_texts(
        ["a photo of a red square.", "a photo of a blue square.", *route.proposer.background_texts]
    )
    torch.testing.assert_close(soft, torch.softmax(1.0 * crops @ texts.T, dim=-1))
    assert torch.allclose(sharp.sum(-1), torch.ones(len(sharp)))


def test_box_threshold_applies_to_the_class_probability(route):
    route.scorer.logit_scale = 2.0  # soft: the best probability is modest
    gs = GroundedSAM(detector=route.proposer, segmenter=route.segmenter)
    gs.set_image(make_scene())
    probability = float(gs.predict("red square", box_threshold=0.0).confidence[0])
    assert len(gs.predict("red square", box_threshold=probability - 1e-4)) == 1
    assert len(gs.predict("red square", box_threshold=probability + 1e-4)) == 0


def test_crop_regions_margin_clipping_and_blanking():
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    (crop,) = crop_regions(image, np.array([[10, 5, 20, 15]]), margin=0.1)
    np.testing.assert_array_equal(crop, image[4:16, 9:21])
    (edge,) = crop_regions(image, np.array([[0, 0, 30, 20]]), margin=0.5)
    np.testing.assert_array_equal(edge, image)
    mask = np.zeros((1, 20, 30), bool)
    mask[0, 6:10, 12:14] = True
    (blank,) = crop_regions(image, np.array([[10, 5, 20, 15]]), margin=0.0, masks=mask)
    np.testing.assert_array_equal(blank[1:5, 2:4], image[6:10, 12:14])
    assert (blank[0] == 127).all() and (blank[:, 0] == 127).all()


def test_grid_stability_and_mask_boxes_helpers():
    np.testing.assert_allclose(point_grid(2, 100, 200), [[50, 25], [150, 25], [50, 75], [150, 75]])
    logits = torch.tensor([[[3.0, 0.5, -0.5, -3.0]]])
    # > +1: one pixel; > -1: three pixels
    torch.testing.assert_close(stability_score(logits, 1.0), torch.tensor([1 / 3]))
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    torch.testing.assert_close(mask_boxes(masks), torch.tensor([[2.0, 1, 5, 3], [0, 0, 0, 0]]))


def test_auto_config_validation():
    with pytest.raises(ValueError, match="points_per_side: expected an int >= 1, got 0"):
        AutoMaskConfig(points_per_side=0)
    with pytest.raises(ValueError, match="template"):
        ClipProposer(ColourScorer(), None, template="a photo")


def test_unknown_route_is_refused():
    expected = r"proposer: expected one of \['clip', 'grounding_dino', 'owlv2', 'sam3'\]"
    with pytest.raises(ValueError, match=expected):
        GroundedSAM(detector=None, segmenter="/nonexistent", proposer="owl")


OPEN_GRID = AutoMaskConfig(points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=-1.0)


def test_clip_route_through_segment_and_grounded_sam(tiny_clip_dir, tiny_sam_dir, scene):
    import grounded_seg

    grounded_seg.clear_model_cache()
    # default filters: the random tiny SAM proposes no region, so the answer is empty, not an error
    det = grounded_seg.segment(
        scene, "red square", proposer="clip", detector=tiny_clip_dir, segmenter=tiny_sam_dir,
        device="cpu",
    )  # fmt: skip
    grounded_seg.clear_model_cache()
    assert len(det) == 0 and det.mask.shape == (0, 90, 120)
    # open filters: candidates exist, and every answer keeps the result contract
    gs = GroundedSAM(
        detector=tiny_clip_dir, segmenter=tiny_sam_dir, device="cpu", proposer="clip",
        proposer_options={"auto_config": OPEN_GRID, "background_texts": ()},
    )  # fmt: skip
    assert isinstance(gs.proposer, ClipProposer) and gs.proposer.segmenter is gs.segmenter
    gs.set_image(scene)
    det = gs.predict(["red square", "blue car"], box_threshold=0.0)
    assert len(det) >= 1
    assert set(det.data["class_name"].tolist()) <= {"red square", "blue car"}
    assert det.mask.shape == (len(det), 90, 120) and det.mask.dtype == bool
    assert np.all((det.confidence > 0) & (det.confidence <= 1))
    assert gs.segmenter.encoder_calls == 1


def test_clip_route_through_the_cli(tiny_clip_dir, tiny_sam_dir, scene, tmp_path, capsys):
    import json

    from PIL import Image

    from grounded_seg.cli import main

    image = tmp_path / "scene.png"
    Image.fromarray(scene).save(image)
    rc = main([
        "segment", str(image), "red square", "--proposer", "clip", "--detector", str(tiny_clip_dir),
        "--segmenter", str(tiny_sam_dir), "--device", "cpu", "--json", str(tmp_path / "out.json"),
    ])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["proposer"] == "clip" and report["detector"] == str(tiny_clip_dir)
    assert report["detections"] == []


def test_crop_views_average_the_rotated_crops(route):
    with pytest.raises(ValueError, match="crop_views: expected 1, 2 or 4, got 3"):
        ClipProposer(route.scorer, route.segmenter, crop_views=3)
    image = make_scene()
    plain = route.proposer.crop_embeddings(route.proposer.encode_image(image))
    seen = []

    def embed_images(crops, batch_size=64):
        seen.append([c.shape for c in crops])
        return ColourScorer.embed_images(route.scorer, crops)

    route.scorer.embed_images = embed_images
    four = ClipProposer(
        route.scorer, route.segmenter, AutoMaskConfig(points_per_side=16), crop_views=4
    )
    state = four.encode_image(image)
    averaged = four.crop_embeddings(state)
    assert len(seen) == 4  # the crop, then turned by 90, 180 and 270 degrees
    assert seen[1] == [(w, h, c) for h, w, c in seen[0]] and seen[2] == seen[0]
    # colour does not change when turned: the same embeddings as one view
    torch.testing.assert_close(averaged, plain)


def test_a_denser_grid_keeps_the_models_calibrated_filters():
    """README's recipe, AutoMaskConfig(points_per_side=32), used to replace shapes-sam's
    calibrated filters with SAM's defaults and find nothing; only what is named overrides."""
    from grounded_seg import AutoMaskConfig as Exported
    from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene

    assert Exported is AutoMaskConfig
    gs = GroundedSAM(
        detector="shapes-clip",
        segmenter="shapes-sam",
        proposer="clip",
        device="cpu",
        proposer_options={"auto_config": AutoMaskConfig(points_per_side=32)},
    )
    calibrated = dict(gs.segmenter.auto_mask)
    config = gs.proposer.auto_config
    assert config.points_per_side == 32 and calibrated.pop("points_per_side") == 16
    assert {k: getattr(config, k) for k in calibrated} == calibrated
    hits = 0
    for seed in range(HELD_OUT_SEEDS.start + 2300, HELD_OUT_SEEDS.start + 2305):
        scene = make_scene(seed)
        gs.set_image(scene.image)
        det = gs.predict(scene.phrases[0])
        hits += scene.phrases[0] in det.data["class_name"].tolist()
    assert hits >= 4, hits


def test_auto_config_resolution_order():
    calibrated = {"pred_iou_thresh": 0.5, "min_mask_region_area": 200}
    got = AutoMaskConfig(points_per_side=8, pred_iou_thresh=0.7).resolved(calibrated)
    assert (got.points_per_side, got.pred_iou_thresh, got.min_mask_region_area) == (8, 0.7, 200)
    assert got.stability_score_thresh == 0.95  # SAM's default where neither sets it
    with pytest.raises(ValueError, match="unknown fields"):
        AutoMaskConfig().resolved({"points": 3})

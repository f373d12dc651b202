"""GroundedSAM and segment(): the per-image cache, SAM skipped when nothing is found, the result."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv

import grounded_seg
from grounded_seg import GroundedSAM, api, segment
from grounded_seg.proposers.base import Proposals
from grounded_seg.proposers.grounding_dino import GroundingDinoProposer
from grounded_seg.segmenters.sam import SamSegmenter
from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene


class StandInProposer:
    """Returns fixed normalised boxes for the classes it is told are 'present'."""

    def __init__(self, present: dict[str, tuple[float, float, float, float]]):
        self.present = present  # class -> normalised xyxy box
        self.encoded = 0
        self.calls = 0

    def encode_image(self, image):
        self.encoded += 1
        return {"height": image.shape[0], "width": image.shape[1]}

    def propose(self, state, prompt, box_threshold, text_threshold, max_detections=None):
        self.calls += 1
        scale = np.array([state["width"], state["height"]] * 2, np.float32)
        rows = [
            (np.array(box, np.float32) * scale, 0.9 - 0.1 * i, prompt.classes.index(name), name)
            for i, (name, box) in enumerate(self.present.items())
            if name in prompt.classes and 0.9 - 0.1 * i > box_threshold
        ]
        if not rows:
            return Proposals.empty()
        return Proposals(
            np.stack([r[0] for r in rows]),
            np.array([r[1] for r in rows], np.float32),
            np.array([r[2] for r in rows], np.int64),
            [r[3] for r in rows],
        )


class StandInSegmenter:
    """Fills each box exactly; counts image encodings and decoder calls."""

    def __init__(self):
        self.encoded = 0
        self.calls = 0

    def encode_image(self, image):
        self.encoded += 1
        return image.shape[:2]

    def segment(self, state, boxes_xyxy):
        self.calls += 1
        height, width = state
        masks = np.zeros((len(boxes_xyxy), height, width), bool)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes_xyxy.astype(int), strict=True):
            mask[y1:y2, x1:x2] = True
        return masks, np.full(len(boxes_xyxy), 0.75, np.float32)


@pytest.fixture
def stand_ins():
    proposer = StandInProposer({"cat": (0.1, 0.2, 0.5, 0.6), "dog": (0.5, 0.5, 1.0, 1.0)})
    segmenter = StandInSegmenter()
    return proposer, segmenter, GroundedSAM(detector=proposer, segmenter=segmenter)


def test_result_contract(stand_ins, scene):
    _, _, gs = stand_ins
    gs.set_image(scene)
    det = gs.predict(["dog", "bird", "cat"])
    assert isinstance(det, sv.Detections) and len(det) == 2
    np.testing.assert_allclose(det.xyxy, [[12, 18, 60, 54], [60, 45, 120, 90]])
    assert det.xyxy.dtype == np.float32
    assert det.class_id.tolist() == [2, 0]
    assert det.data["class_name"].tolist() == ["cat", "dog"]
    assert det.mask.shape == (2, 90, 120) and det.mask.dtype == bool
    assert det.mask[0, 18:54, 12:60].all() and det.mask[0].sum() == 36 * 48
    np.testing.assert_allclose(det.confidence, [0.9, 0.8])
    np.testing.assert_allclose(det.data["mask_score"], [0.75, 0.75])


def test_nothing_found_is_empty_and_sam_never_runs(stand_ins, scene):
    _, segmenter, gs = stand_ins
    gs.set_image(scene)
    det = gs.predict("a bird")
    assert len(det) == 0
    assert det.xyxy.shape == (0, 4) and det.mask.shape == (0, 90, 120)
    assert det.confidence.shape == (0,) and det.class_id.shape == (0,)
    assert det.data["class_name"].shape == (0,) and det.data["mask_score"].shape == (0,)
    assert segmenter.encoded == 0 and segmenter.calls == 0


def test_several_prompts_pay_for_the_image_once(stand_ins, scene):
    proposer, segmenter, gs = stand_ins
    gs.set_image(scene)
    for prompt in ("cat", "dog", "cat. dog.", ["dog", "cat"], "bird"):
        gs.predict(prompt)
    assert proposer.encoded == 1 and proposer.calls == 5
    assert segmenter.encoded == 1 and segmenter.calls == 4  # "bird" found nothing
    gs.set_image(scene[::-1].copy())
    gs.predict("cat")
    assert proposer.encoded == 2 and segmenter.encoded == 2


def test_threshold_reaches_the_proposer(stand_ins, scene):
    _, _, gs = stand_ins
    gs.set_image(scene)
    assert len(gs.predict("cat. dog.", box_threshold=0.85)) == 1
    assert len(gs.predict("cat. dog.", box_threshold=0.95)) == 0


def test_predict_before_set_image(stand_ins):
    _, _, gs = stand_ins
    with pytest.raises(RuntimeError, match=r"set_image\(image\) before"):
        gs.predict("cat")
    gs.set_image(np.zeros((4, 4, 3), np.uint8))
    gs.reset_image()
    with pytest.raises(RuntimeError, match="set_image"):
        gs.predict("cat")


def test_bgr_input_gives_the_rgb_answer(stand_ins, scene):
    _, _, gs = stand_ins
    gs.set_image(scene)
    rgb = gs.predict("cat")
    gs.set_image(scene[:, :, ::-1].copy(), image_format="BGR")
    np.testing.assert_array_equal(gs._image, scene)
    bgr = gs.predict("cat")
    np.testing.assert_array_equal(rgb.xyxy, bgr.xyxy)


def test_wrong_component_types_are_refused():
    with pytest.raises(TypeError, match="detector: expected a model name, a path or a BoxProposer"):
        GroundedSAM(detector=3, segmenter=StandInSegmenter())
    with pytest.raises(TypeError, match="segmenter: expected"):
        GroundedSAM(detector=StandInProposer({}), segmenter=object())


def test_segment_end_to_end_on_tiny_models(tiny_gdino_dir, tiny_sam_dir, scene):
    grounded_seg.clear_model_cache()
    loads = api._warm.loads
    kwargs = dict(detector=tiny_gdino_dir, segmenter=tiny_sam_dir, box_threshold=0.0, device="cpu")
    det = segment(scene, ["red square", "blue car"], **kwargs)
    assert len(det) == 20
    assert set(det.data["class_name"].tolist()) <= {"red square", "blue car"}
    names = np.array(["red square", "blue car"])
    np.testing.assert_array_equal(det.data["class_name"], names[det.class_id])
    assert det.mask.shape == (20, 90, 120) and det.mask.dtype == bool
    assert np.all((det.xyxy >= 0) & (det.xyxy <= [120, 90, 120, 90]))
    assert np.all(det.xyxy[:, 2] >= det.xyxy[:, 0]) and np.all(det.xyxy[:, 3] >= det.xyxy[:, 1])
    assert np.all(np.diff(det.confidence) <= 0)
    # warm models: the second call loads nothing and answers identically
    again = segment(scene, ["red square", "blue car"], **kwargs)
    assert api._warm.loads == loads + 1
    np.testing.assert_array_equal(det.xyxy, again.xyxy)
    np.testing.assert_array_equal(det.mask, again.mask)
    grounded_seg.clear_model_cache()


def test_grounded_sam_matches_its_parts(tiny_gdino_dir, tiny_sam_dir, scene):
    proposer = GroundingDinoProposer.from_pretrained(tiny_gdino_dir, device="cpu")
    segmenter = SamSegmenter.from_pretrained(tiny_sam_dir, device="cpu")
    gs = GroundedSAM(detector=proposer, segmenter=segmenter)
    gs.set_image(scene)
    det = gs.predict("red square. blue car.", box_threshold=0.0)
    prompt = grounded_seg.normalize_prompt("red square. blue car.")
    expected = proposer.propose(proposer.encode_image(scene), prompt, 0.0, 0.25)
    masks, scores = segmenter.segment(segmenter.encode_image(scene), expected.xyxy)
    np.testing.assert_array_equal(det.xyxy, expected.xyxy)
    np.testing.assert_array_equal(det.mask, masks)
    np.testing.assert_array_equal(det.data["mask_score"], scores)
    assert det.data["phrase"].tolist() == expected.phrases


def test_set_image_copies_and_never_touches_the_users_array(stand_ins, scene):
    _, _, gs = stand_ins
    given = scene.copy()
    gs.set_image(given)
    assert not np.shares_memory(gs._image, given)
    gs._image[:] = 0  # the predictor's copy is its own
    np.testing.assert_array_equal(given, scene)


def _count_loads(monkeypatch) -> list:
    """Every ``load_image`` call of ``segment()`` and ``GroundedSAM`` (patched where looked up)."""
    real, seen = grounded_seg.images.load_image, []

    def counted(image, *args, **kwargs):
        seen.append(image)
        return real(image, *args, **kwargs)

    monkeypatch.setattr(api, "load_image", counted)
    monkeypatch.setattr(grounded_seg.predictor, "load_image", counted)
    return seen


def test_segment_loads_each_image_once_with_the_same_answers(monkeypatch):
    """Issue 26: segment() checked and decoded the image, then set_image did it again."""
    scenes = [make_scene(HELD_OUT_SEEDS.start + 3300 + i) for i in range(2)]
    images = [s.image for s in scenes]
    given = [image.copy() for image in images]
    prompt = sorted({phrase for s in scenes for phrase in s.phrases})
    options = {"detector": "shapes-gdino", "segmenter": "shapes-sam", "device": "cpu"}
    seen = _count_loads(monkeypatch)
    det = segment(given[0], prompt, **options)
    assert len(seen) == 1 and seen[0] is given[0]  # one check and decode of what the user gave
    seen.clear()
    batched = segment(given, prompt, batch_size=2, **options)
    assert len(seen) == 2 and all(a is b for a, b in zip(seen, given, strict=True))
    for image, kept in zip(images, given, strict=True):
        np.testing.assert_array_equal(kept, image)  # nothing the user gave is modified
    # the answers of set_image + predict (and of predict_batch) on the same warm models
    proposer, segmenter = api._warm.get(api._warm._key)
    gs = GroundedSAM(detector=proposer, segmenter=segmenter)
    seen.clear()
    gs.set_image(images[0])
    assert len(seen) == 1  # the public set_image still checks and copies
    expected = gs.predict(prompt)
    assert len(expected) > 0
    pairs = [(det, expected), *zip(batched, gs.predict_batch(images, prompt), strict=True)]
    for got, want in pairs:
        np.testing.assert_array_equal(got.xyxy, want.xyxy)
        np.testing.assert_array_equal(got.mask, want.mask)
        np.testing.assert_array_equal(got.class_id, want.class_id)
        np.testing.assert_array_equal(got.confidence, want.confidence)

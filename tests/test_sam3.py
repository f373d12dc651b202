"""The SAM 3 route: instances with masks per class, offline, with known right answers.

Two models: a stand-in Sam3Model whose outputs are set per class text (exact boxes, scores,
masks), and the tiny random ``transformers.Sam3Model`` of ``tiny_sam3.py`` for the real path.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import supervision as sv
import torch
from tiny_sam3 import MASK_SIZE, save_tiny_sam3
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from grounded_seg import GroundedSAM
from grounded_seg.errors import InvalidWeightsError, WeightsNotFoundError
from grounded_seg.prompts import normalize_prompt
from grounded_seg.proposers import proposer_class
from grounded_seg.proposers.sam3 import Sam3ImageSettings, Sam3Proposer, upsample_masks
from grounded_seg.shapes.clip_tokenizer import write_clip_tokenizer

HEIGHT, WIDTH = 60, 100  # non-square on purpose: SAM 3 resizes to a square


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


class TableSam3(torch.nn.Module):
    """A stand-in Sam3Model: class text -> known instances.

    ``table[text]`` is a list of ``(score, normalised xyxy box, (r0, r1, c0, c1) mask cells)``;
    the text's presence logit is ``presence.get(text, 30)`` (sigmoid ~ 1). Queries without an
    instance score ~0. Counts vision encoder and detector calls.
    """

    def __init__(self, tokenizer, table, presence=None, queries: int = 4) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.table, self.presence = tokenizer, table, presence or {}
        self.queries = queries
        self.vision_calls = 0
        self.detector_calls = 0
        self.texts_seen: list[str] = []

    def get_vision_features(self, pixel_values):
        self.vision_calls += 1
        states = tuple(torch.zeros(1, 4, s, s) for s in (MASK_SIZE, 8, 4))
        return Sam3VisionEncoderOutput(fpn_hidden_states=states, fpn_position_encoding=states)

    def forward(self, vision_embeds, input_ids, attention_mask):
        self.detector_calls += 1
        assert vision_embeds.fpn_hidden_states[0].shape[0] == len(input_ids)
        batch = len(input_ids)
        logits = torch.full((batch, self.queries), -30.0)
        boxes = torch.zeros(batch, self.queries, 4)
        masks = torch.full((batch, self.queries, MASK_SIZE, MASK_SIZE), -30.0)
        presence = torch.zeros(batch, 1)
        for b, ids in enumerate(input_ids.tolist()):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            self.texts_seen.append(text)
            presence[b, 0] = self.presence.get(text, 30.0)
            for q, (score, box, (r0, r1, c0, c1)) in enumerate(self.table.get(text, [])):
                logits[b, q] = logit(score)
                boxes[b, q] = torch.tensor(box)
                masks[b, q, r0:r1, c0:c1] = 30.0
        return SimpleNamespace(
            pred_logits=logits, pred_boxes=boxes, pred_masks=masks, presence_logits=presence
        )


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    return write_clip_tokenizer(tmp_path_factory.mktemp("sam3-tokenizer"))


@pytest.fixture(scope="module")
def tiny_sam3_dir(tmp_path_factory):
    return save_tiny_sam3(tmp_path_factory.mktemp("tiny-sam3"))


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def table_proposer(tokenizer, table, presence=None, **kwargs):
    model = TableSam3(tokenizer, table, presence)
    return Sam3Proposer(model, tokenizer, Sam3ImageSettings(32, 32), **kwargs), model


def bilinear_rectangle(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Cells ``[r0:r1, c0:c1]`` of a 16 x 16 grid, bilinearly upsampled (half-pixel centres)
    to HEIGHT x WIDTH and kept above 0.5: the product of the two 1D interpolations."""

    def weights(start: int, stop: int, out: int) -> np.ndarray:
        inside = np.zeros(MASK_SIZE)
        inside[start:stop] = 1.0
        coords = np.clip((np.arange(out) + 0.5) * MASK_SIZE / out - 0.5, 0, MASK_SIZE - 1)
        return np.interp(coords, np.arange(MASK_SIZE), inside)

    return np.outer(weights(r0, r1, HEIGHT), weights(c0, c1, WIDTH)) > 0.5


DOG = (0.9, (0.1, 0.2, 0.5, 0.6), (4, 8, 4, 12))  # pixels (10, 12, 50, 36)
BIRD = (0.8, (0.6, 0.0, 1.0, 0.5), (0, 8, 8, 16))  # pixels (60, 0, 100, 30)
TABLE = {"dog": [DOG], "bird": [BIRD]}


def test_class_ids_boxes_and_masks_are_exact(clip_tokenizer):
    proposer, model = table_proposer(clip_tokenizer, TABLE)
    found = proposer.propose(
        proposer.encode_image(image()), normalize_prompt("cat. dog. bird."), 0.3, 0.25
    )
    assert found.class_ids.tolist() == [1, 2] and found.phrases == ["dog", "bird"]
    np.testing.assert_allclose(found.scores, [0.9, 0.8], atol=1e-6)
    np.testing.assert_allclose(found.xyxy, [[10, 12, 50, 36], [60, 0, 100, 30]], atol=1e-4)
    # 16 x 16 mask cells on a 60 x 100 image: cell rows 4:8 -> pixel rows 15:30, cols 4:12 ->
    # 25:75, less the corner pixels where bilinear weights multiply to <= 0.5
    assert found.masks.shape == (2, HEIGHT, WIDTH) and found.masks.dtype == bool
    np.testing.assert_array_equal(found.masks[0], bilinear_rectangle(4, 8, 4, 12))
    np.testing.assert_array_equal(found.masks[1], bilinear_rectangle(0, 8, 8, 16))
    assert found.masks[0, 15:30, 25:75].sum() == 15 * 50 - 4 * 2  # 2 pixels off each corner
    assert found.masks[0].sum() == found.masks[0, 15:30, 25:75].sum()
    np.testing.assert_allclose(found.mask_scores, found.scores)
    assert found.best_score == pytest.approx(0.9, abs=1e-6)
    assert sorted(model.texts_seen) == ["bird", "cat", "dog"]


def test_vision_encoder_runs_once_per_image(clip_tokenizer):
    proposer, model = table_proposer(clip_tokenizer, TABLE, text_batch_size=2)
    state = proposer.encode_image(image())
    assert model.vision_calls == 0  # lazily, on the first prompt
    proposer.propose(state, normalize_prompt("cat. dog. bird."), 0.3, 0.25)
    assert (model.vision_calls, model.detector_calls) == (1, 2)  # 3 classes, 2 per batch
    proposer.propose(state, normalize_prompt("bird"), 0.3, 0.25)
    assert (model.vision_calls, model.detector_calls) == (1, 3)


def test_thirty_classes_one_vision_pass_exact_ids(clip_tokenizer):
    names = [f"thing {chr(ord('a') + k)}" for k in range(26)] + ["dog", "x", "y", "bird"]
    proposer, model = table_proposer(clip_tokenizer, TABLE, nms_threshold=None)
    found = proposer.propose(proposer.encode_image(image()), normalize_prompt(names), 0.3, 0.25)
    assert (model.vision_calls, model.detector_calls) == (1, 4)  # ceil(30 / 8) batches
    assert found.class_ids.tolist() == [26, 29] and found.phrases == ["dog", "bird"]


def test_score_is_detection_times_presence(clip_tokenizer):
    proposer, _ = table_proposer(clip_tokenizer, TABLE, presence={"bird": 0.0})
    found = proposer.propose(
        proposer.encode_image(image()), normalize_prompt("dog. bird."), 0.3, 0.25
    )
    np.testing.assert_allclose(found.scores, [0.9, 0.4], atol=1e-6)  # 0.8 * sigmoid(0)


def test_thresholds_and_max_detections(clip_tokenizer):
    proposer, _ = table_proposer(clip_tokenizer, TABLE)
    state, prompt = proposer.encode_image(image()), normalize_prompt("dog. bird.")
    assert proposer.propose(state, prompt, 0.85, 0.25).phrases == ["dog"]
    nothing = proposer.propose(state, prompt, 0.95, 0.25)
    assert len(nothing) == 0 and nothing.best_score == pytest.approx(0.9, abs=1e-6)
    assert proposer.propose(state, prompt, 0.3, 0.25, max_detections=1).phrases == ["dog"]
    a, b = proposer.propose(state, prompt, 0.3, 0.0), proposer.propose(state, prompt, 0.3, 1.0)
    np.testing.assert_array_equal(a.xyxy, b.xyxy)  # text_threshold is not used


def test_nms_across_classes_and_within_one(clip_tokenizer):
    same = (0.1, 0.1, 0.5, 0.5)
    table = {
        "cat": [
            (0.9, same, (0, 4, 0, 4)),
            (0.6, (0.12, 0.1, 0.5, 0.5), (0, 4, 0, 4)),
            (0.5, (0.6, 0.6, 0.9, 0.9), (10, 14, 10, 14)),
        ],
        "kitten": [(0.7, same, (0, 4, 0, 4))],
    }
    prompt = normalize_prompt("cat. kitten.")
    proposer, _ = table_proposer(clip_tokenizer, table)  # class-agnostic, IoU 0.5
    found = proposer.propose(proposer.encode_image(image()), prompt, 0.3, 0.25)
    assert found.phrases == ["cat", "cat"]
    np.testing.assert_allclose(found.scores, [0.9, 0.5], atol=1e-6)
    per_class, _ = table_proposer(clip_tokenizer, table, class_agnostic_nms=False)
    found = per_class.propose(per_class.encode_image(image()), prompt, 0.3, 0.25)
    assert found.phrases == ["cat", "kitten", "cat"]
    no_nms, _ = table_proposer(clip_tokenizer, table, nms_threshold=None)
    found = no_nms.propose(no_nms.encode_image(image()), prompt, 0.3, 0.25)
    np.testing.assert_allclose(found.scores, [0.9, 0.7, 0.6, 0.5], atol=1e-6)
    assert found.class_ids.tolist() == [0, 1, 0, 0]


def test_boxes_only_when_return_masks_false(clip_tokenizer):
    with_masks, _ = table_proposer(clip_tokenizer, TABLE)
    boxes_only, _ = table_proposer(clip_tokenizer, TABLE, return_masks=False)
    prompt = normalize_prompt("dog. bird.")
    a = with_masks.propose(with_masks.encode_image(image()), prompt, 0.3, 0.25)
    b = boxes_only.propose(boxes_only.encode_image(image()), prompt, 0.3, 0.25)
    assert b.masks is None and b.mask_scores is None
    np.testing.assert_array_equal(a.xyxy, b.xyxy)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)


def test_upsample_masks_threshold_half_probability():
    logits = torch.full((1, 2, 2), -10.0)
    logits[0, 0, 0] = 10.0
    np.testing.assert_array_equal(
        upsample_masks(logits, 4, 4)[0], np.kron([[1, 0], [0, 0]], np.ones((2, 2))).astype(bool)
    )


def test_bad_inputs(clip_tokenizer):
    proposer, _ = table_proposer(clip_tokenizer, TABLE)
    with pytest.raises(TypeError, match="expected a uint8"):
        proposer.encode_image(image().astype(np.float32))
    with pytest.raises(TypeError, match="Sam3ImageState"):
        proposer.propose("not a state", normalize_prompt("dog"), 0.3, 0.25)
    with pytest.raises(ValueError, match="SAM 3 reads at most 32"):
        proposer.propose(
            proposer.encode_image(image()), normalize_prompt(" ".join(["a"] * 40)), 0.3, 0.25
        )
    with pytest.raises(TypeError, match="return_masks"):
        table_proposer(clip_tokenizer, TABLE, return_masks="yes")


# --- the real (tiny, random) transformers Sam3Model ---


def test_tiny_model_batched_texts_equal_one_by_one(tiny_sam3_dir):
    one = Sam3Proposer.from_pretrained(
        tiny_sam3_dir, device="cpu", nms_threshold=None, text_batch_size=1
    )
    three = Sam3Proposer(one.model, one.tokenizer, one.image_settings, nms_threshold=None)
    calls = []
    one.model.vision_encoder.register_forward_hook(lambda *args: calls.append(1))
    prompt = normalize_prompt("red circle. blue square. green star.")
    state = one.encode_image(image())
    a = one.propose(state, prompt, 0.0, 0.25)
    b = three.propose(state, prompt, 0.0, 0.25)
    assert len(calls) == 1  # the second proposer reused the state's vision features
    assert len(a) == 3 * 8 and sorted(a.class_ids.tolist()) == sorted([0, 1, 2] * 8)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
    assert (a.masks != b.masks).mean() < 1e-3
    assert a.masks.shape == (24, HEIGHT, WIDTH)
    assert (a.xyxy[:, [0, 2]] <= WIDTH).all() and (a.xyxy[:, [1, 3]] <= HEIGHT).all()


E2E_CLASSES = ["red circle", "blue square"]


def test_end_to_end_masks_come_from_sam3(tiny_sam3_dir, tiny_sam_dir):
    # a segmenter named too, but SAM 3's masks asked for: SAM is loaded and never runs
    gs = GroundedSAM(
        detector=tiny_sam3_dir,
        segmenter=tiny_sam_dir,
        device="cpu",
        proposer="sam3",
        proposer_options={"nms_threshold": None, "return_masks": True},
    )
    assert isinstance(gs.proposer, Sam3Proposer) and proposer_class("sam3") is Sam3Proposer
    gs.set_image(image())
    result = gs.predict(E2E_CLASSES, box_threshold=0.0, max_detections=5)
    assert isinstance(result, sv.Detections) and len(result) == 5
    assert result.mask.shape == (5, HEIGHT, WIDTH)
    own = gs.proposer.propose(gs._proposer_state, normalize_prompt(E2E_CLASSES), 0.0, 0.25, 5)
    np.testing.assert_array_equal(result.mask, own.masks)
    np.testing.assert_array_equal(result.xyxy, own.xyxy)
    assert set(result.data["class_name"]) <= set(E2E_CLASSES)
    assert gs.segmenter.encoder_calls == 0  # SAM never ran


def test_end_to_end_without_segmenter_and_with_one(tiny_sam3_dir, tiny_sam_dir):
    alone = GroundedSAM(detector=tiny_sam3_dir, device="cpu", proposer="sam3")
    assert alone.segmenter is None and alone.proposer.returns_masks
    alone.set_image(image())
    assert alone.predict(E2E_CLASSES, box_threshold=0.0).mask.shape[1:] == (HEIGHT, WIDTH)
    # a segmenter named on the sam3 route masks SAM 3's boxes
    refined = GroundedSAM(
        detector=tiny_sam3_dir, segmenter=tiny_sam_dir, device="cpu", proposer="sam3"
    )
    assert refined.proposer.return_masks is False
    refined.set_image(image())
    result = refined.predict(E2E_CLASSES, box_threshold=0.0)
    assert refined.segmenter.encoder_calls == 1 and len(result) > 0


def test_hub_layout_sam3_video_loads_its_detector(tiny_sam3_dir, tmp_path):
    """facebook/sam3 is a ``sam3_video`` folder: detector weights under ``detector_model.``, the
    tracker's beside them; the detector loads strictly, the tracker's tensors are skipped."""
    from safetensors.torch import load_file, save_file
    from tiny_sam3 import tiny_sam3_config
    from transformers import Sam3VideoConfig

    folder = tmp_path / "sam3-video"
    folder.mkdir()
    for path in tiny_sam3_dir.iterdir():
        if path.name not in ("config.json", "model.safetensors"):
            (folder / path.name).write_bytes(path.read_bytes())
    Sam3VideoConfig(detector_config=tiny_sam3_config()).save_pretrained(folder)
    weights = load_file(tiny_sam3_dir / "model.safetensors")
    weights = {f"detector_model.{key}": value for key, value in weights.items()}
    weights["tracker_model.some.weight"] = torch.zeros(2)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    video = Sam3Proposer.from_pretrained(folder, device="cpu")
    plain = Sam3Proposer.from_pretrained(tiny_sam3_dir, device="cpu")
    assert video.model.config.model_type == "sam3"
    expected = plain.model.state_dict()
    loaded = video.model.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in loaded.items():
        assert torch.equal(tensor, expected[name]), name


def test_pixels_resize_and_normalise():
    settings = Sam3ImageSettings(56, 56)
    for value, expected in ((0, -1.0), (255, 1.0), (51, -0.6)):
        pixels = settings.pixels(np.full((HEIGHT, WIDTH, 3), value, np.uint8))
        assert pixels.shape == (1, 3, 56, 56) and pixels.dtype == torch.float32
        torch.testing.assert_close(pixels, torch.full_like(pixels, expected))
    # a left/right split stays a split after the square resize: the left 40% -> columns < 22.4
    split = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    split[:, 40:] = 255
    row = settings.pixels(split)[0, 0, 0]
    assert (row[:22] == -1).all() and (row[23:] == 1).all()


def test_missing_weights_offline_says_how_to_get_them():
    with pytest.raises(WeightsNotFoundError) as err:
        Sam3Proposer.from_pretrained("sam3", device="cpu")
    text = str(err.value)
    assert "request access on https://huggingface.co/facebook/sam3" in text
    assert "hf download facebook/sam3 --local-dir" in text and "sam3" in text


def test_missing_tokenizer_files_fail_clearly(tmp_path):
    folder = save_tiny_sam3(tmp_path / "no-tokenizer", tokenizer=False)
    with pytest.raises(InvalidWeightsError, match=r"vocab\.json, merges\.txt"):
        Sam3Proposer.from_pretrained(folder, device="cpu")


def test_missing_preprocessor_config_fails_clearly(tiny_sam3_dir, tmp_path):
    folder = tmp_path / "no-preprocessor"
    folder.mkdir()
    for path in tiny_sam3_dir.iterdir():
        if path.name != "preprocessor_config.json":
            (folder / path.name).write_bytes(path.read_bytes())
    with pytest.raises(InvalidWeightsError, match=r"preprocessor_config\.json"):
        Sam3Proposer.from_pretrained(folder, device="cpu")
    settings = json.loads((tiny_sam3_dir / "preprocessor_config.json").read_text())
    assert Sam3ImageSettings.from_pretrained(tiny_sam3_dir).height == settings["size"]["height"]

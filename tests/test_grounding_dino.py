"""Grounding DINO proposer: decoding controlled outputs, pass merging, the backbone cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounded_seg.prompts import normalize_prompt, plan_text_passes
from grounded_seg.proposers.base import Proposals
from grounded_seg.proposers.grounding_dino import (
    GroundingDinoProposer,
    decode_pass,
    merge_passes,
)

NEG = -20.0  # sigmoid(-20) ~ 2e-9


def logit(p: float) -> float:
    return float(torch.logit(torch.tensor(p)))


def make_logits(text_pass, rows, width=256):
    """(Q, 256) logits like the model's: -inf past the caption, NEG elsewhere, rows set."""
    logits = torch.full((len(rows), width), float("-inf"))
    logits[:, : len(text_pass.input_ids)] = NEG
    for q, row in enumerate(rows):
        for position, p in row.items():
            logits[q, position] = logit(p)
    return logits


@pytest.fixture
def cat_plant(bert_tokenizer):
    (text_pass,) = plan_text_passes(normalize_prompt(["cat", "potted plant"]), bert_tokenizer, 256)
    return text_pass  # [CLS] cat . pot ##ted plant . [SEP]


def test_decode_maps_boxes_to_original_pixels_and_classes(cat_plant):
    logits = make_logits(
        cat_plant,
        [
            {5: 0.8, 1: 0.3},  # "plant" -> potted plant, score 0.8
            {1: 0.6},  # "cat" -> cat, score 0.6
            {1: 0.2, 4: 0.3},  # best 0.3 < box_threshold: dropped
            {3: 0.9},  # "pot" piece -> potted plant, score 0.9
        ],
    )
    boxes = torch.tensor(
        [
            [0.5, 0.5, 0.2, 0.4],  # centre of a 300 x 200 (W x H) image
            [0.05, 0.9, 0.2, 0.4],  # spills over the left and bottom edges: clipped
            [0.5, 0.5, 0.1, 0.1],
            [0.25, 0.25, 0.1, 0.1],
        ]
    )
    out = decode_pass(logits, boxes, cat_plant, 200, 300, 0.35, 0.25)
    # sorted by score: query 3 (0.9), query 0 (0.8), query 1 (0.6)
    np.testing.assert_allclose(out.scores, [0.9, 0.8, 0.6], rtol=1e-5)
    np.testing.assert_allclose(
        out.xyxy,
        [[60.0, 40.0, 90.0, 60.0], [120.0, 60.0, 180.0, 140.0], [0.0, 140.0, 45.0, 200.0]],
        atol=1e-4,
    )
    assert out.xyxy.dtype == np.float32
    assert out.class_ids.tolist() == [1, 1, 0]
    assert out.phrases == ["potted", "plant", "cat"]


def test_decode_threshold_is_strict_and_counts_every_caption_token(cat_plant):
    # the official rule: max over the caption's tokens (the "." included) must exceed the threshold
    logits = make_logits(cat_plant, [{2: 0.5, 1: 0.1}, {1: 0.35}])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2)
    out = decode_pass(logits, boxes, cat_plant, 100, 100, 0.35, 0.25)
    assert len(out) == 1  # 0.35 is not > 0.35
    np.testing.assert_allclose(out.scores, [0.5], rtol=1e-5)
    assert out.class_ids.tolist() == [0]  # class by its own tokens: cat 0.1 > potted plant ~0
    assert out.phrases == ["cat"]  # no word above text_threshold: the class name


def test_decode_nothing_found_is_empty_not_none(cat_plant):
    logits = make_logits(cat_plant, [{1: 0.1}])
    out = decode_pass(logits, torch.tensor([[0.5, 0.5, 0.2, 0.2]]), cat_plant, 50, 50, 0.35, 0.25)
    assert len(out) == 0 and out.xyxy.shape == (0, 4) and out.phrases == []


def test_decode_uses_the_pass_class_ids(bert_tokenizer):
    prompt = normalize_prompt(["cat", "dog", "potted plant"])
    second = plan_text_passes(prompt, bert_tokenizer, 6)[1]  # "potted plant." alone
    assert second.class_ids == (2,)
    logits = make_logits(second, [{2: 0.9}])
    out = decode_pass(logits, torch.tensor([[0.5, 0.5, 0.2, 0.2]]), second, 10, 10, 0.35, 0.25)
    assert out.class_ids.tolist() == [2]


def proposals(boxes, scores, classes):
    return Proposals(
        np.array(boxes, np.float32),
        np.array(scores, np.float32),
        np.array(classes, np.int64),
        [f"c{c}" for c in classes],
    )


def test_merge_passes_is_class_aware_nms():
    a = proposals([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.5], [0, 0])
    b = proposals([[1, 1, 10, 10], [0, 0, 10, 10]], [0.8, 0.7], [0, 1])
    merged = merge_passes([a, b], nms_threshold=0.5)
    # [1,1,10,10] (class 0, IoU 0.81 with the 0.9 box) is suppressed; class 1 overlaps but stays
    assert merged.scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert merged.class_ids.tolist() == [0, 1, 0]
    assert merged.phrases == ["c0", "c1", "c0"]
    assert len(merge_passes([Proposals.empty(), Proposals.empty()], 0.5)) == 0


@pytest.fixture(scope="module")
def proposer(tiny_gdino_dir):
    return GroundingDinoProposer.from_pretrained(tiny_gdino_dir, device="cpu")


def test_backbone_runs_once_per_image_and_outputs_are_unchanged(proposer, scene):
    prompts = [normalize_prompt("red square. blue car."), normalize_prompt("a dog")]
    fresh = []
    for prompt in prompts:
        (text_pass,) = proposer.text_passes(prompt)
        fresh.append(proposer.forward_pass(proposer.encode_image(scene), text_pass))

    calls = []
    backbone = proposer.model.model.backbone
    hook = backbone.conv_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        state = proposer.encode_image(scene)
        cached = [proposer.forward_pass(state, proposer.text_passes(p)[0]) for p in prompts]
    finally:
        hook.remove()
    assert len(calls) == 1
    for (logits_a, boxes_a), (logits_b, boxes_b) in zip(fresh, cached, strict=True):
        torch.testing.assert_close(logits_a, logits_b, rtol=0, atol=0)
        torch.testing.assert_close(boxes_a, boxes_b, rtol=0, atol=0)
    assert "forward" not in vars(backbone)  # the module is never patched per call


def test_long_prompt_runs_several_passes_and_labels_every_class(proposer, scene, monkeypatch):
    proposer_max = proposer.max_text_len
    monkeypatch.setattr(proposer, "max_text_len", 8)  # [CLS] + 3 classes of 1 token + dots ...
    prompt = normalize_prompt(["cat", "dog", "car", "bus", "tree", "boat"])
    passes = proposer.text_passes(prompt)
    assert [p.class_ids for p in passes] == [(0, 1, 2), (3, 4, 5)]
    seen = []
    original = proposer._forward

    def spy(pixel_values, pixel_mask, cache, text_pass):
        seen.append(len(text_pass.input_ids))
        return original(pixel_values, pixel_mask, cache, text_pass)

    monkeypatch.setattr(proposer, "_forward", spy)
    out = proposer.propose(proposer.encode_image(scene), prompt, 0.0, 0.25)
    assert seen == [8, 8] and max(seen) <= 8 < proposer_max
    assert set(out.class_ids.tolist()) <= set(range(6))
    assert {0, 1, 2} & set(out.class_ids.tolist()) and {3, 4, 5} & set(out.class_ids.tolist())
    assert np.all(np.diff(out.scores) <= 0)


def test_real_model_output_contract(proposer, scene):
    prompt = normalize_prompt(["red square", "blue car"])
    out = proposer.propose(proposer.encode_image(scene), prompt, 0.0, 0.25)
    assert len(out) == 20  # every query passes threshold 0
    h, w = scene.shape[:2]
    assert np.all(out.xyxy[:, [0, 2]] >= 0) and np.all(out.xyxy[:, [0, 2]] <= w)
    assert np.all(out.xyxy[:, [1, 3]] >= 0) and np.all(out.xyxy[:, [1, 3]] <= h)
    assert np.all((out.scores >= 0) & (out.scores <= 1))
    assert all(p for p in out.phrases)

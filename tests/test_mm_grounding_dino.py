"""MM-Grounding-DINO runs through the Grounding DINO proposer: picked from the folder's model type,
with the project's deformable, fusion and backbone-cache modules installed, and the same answers
as the stock transformers model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import MMGroundingDinoForObjectDetection
from transformers.models.mm_grounding_dino.modeling_mm_grounding_dino import (
    MMGroundingDinoBiMultiHeadAttention,
    MMGroundingDinoConfig,
)

import grounded_seg
from grounded_seg.errors import InvalidWeightsError
from grounded_seg.prompts import normalize_prompt
from grounded_seg.proposers.backbone_cache import CachedBackbone
from grounded_seg.proposers.deformable import Float32Sampling
from grounded_seg.proposers.fusion import FactoredBiAttention
from grounded_seg.proposers.grounding_dino import GroundingDinoProposer

from tiny_models import save_tiny_mm_gdino

PROMPT = "cat . dog . red car"


@pytest.fixture(scope="module")
def mm_dir(tmp_path_factory, vocab_file):
    return save_tiny_mm_gdino(tmp_path_factory.mktemp("mm") / "mm-gdino", vocab_file)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.random((60, 90, 3)) * 255).astype(np.uint8)


def _count(model: torch.nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


def test_the_folder_model_type_picks_mm_grounding_dino_with_the_equivalents(mm_dir):
    proposer = GroundingDinoProposer.from_pretrained(mm_dir)
    assert type(proposer.model) is MMGroundingDinoForObjectDetection
    # one enhancer layer: one fusion, 1 enhancer + 2 decoder deformable kernels, one backbone
    assert _count(proposer.model, FactoredBiAttention) == 1
    assert _count(proposer.model, Float32Sampling) == 3
    assert _count(proposer.model, CachedBackbone) == 1
    assert _count(proposer.model, MMGroundingDinoBiMultiHeadAttention) == 0


def test_the_installed_modules_give_the_stock_models_answers(mm_dir, image):
    """Logits and boxes of the proposer's model (factored fusion, gather kernel, cached
    backbone) equal the stock transformers model's on the same inputs."""
    proposer = GroundingDinoProposer.from_pretrained(mm_dir)
    stock = MMGroundingDinoForObjectDetection.from_pretrained(mm_dir).eval()
    state = proposer.encode_image(image)
    (text_pass,) = proposer.text_passes(normalize_prompt(PROMPT))
    logits, boxes = proposer.forward_pass(state, text_pass)
    ids = torch.tensor([text_pass.input_ids])
    with torch.inference_mode():
        out = stock(
            pixel_values=state.pixel_values,
            pixel_mask=state.pixel_mask,
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            token_type_ids=torch.zeros_like(ids),
        )
    tokens = ids.shape[1]  # the columns past the caption are -inf in both
    assert logits.shape == out.logits[0].shape and float(out.logits[0, :, :tokens].std()) > 0.01
    torch.testing.assert_close(logits, out.logits[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(boxes, out.pred_boxes[0], rtol=1e-4, atol=1e-5)


def test_the_fusion_equivalent_matches_the_mm_module(mm_dir):
    """The factored fusion against MM-Grounding-DINO's own module at the full enhancer sizes."""
    torch.manual_seed(0)
    original = MMGroundingDinoBiMultiHeadAttention(MMGroundingDinoConfig()).eval()
    for parameter in original.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    factored = FactoredBiAttention(original).eval()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(1, 300, 256, generator=gen), torch.randn(1, 6, 256, generator=gen)
    text_mask = torch.zeros(1, 6, dtype=torch.bool)
    text_mask[0, 4:] = True
    with torch.no_grad():
        (v, vw), (t, tw) = factored(x, y, None, text_mask)
        (ve, vwe), (te, twe) = original(x, y, None, text_mask)
    torch.testing.assert_close(v, ve, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(t, te, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(vw, vwe, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tw, twe, rtol=1e-5, atol=1e-7)


def test_segment_runs_end_to_end_with_exact_class_ids(mm_dir, tiny_sam_dir, image):
    detections = grounded_seg.segment(
        image, PROMPT, detector=mm_dir, segmenter=tiny_sam_dir, box_threshold=0.0,
        text_threshold=0.0, device="cpu",
    )  # fmt: skip
    assert len(detections) > 0
    assert detections.mask.shape == (len(detections), 60, 90)
    names = ["cat", "dog", "red car"]
    assert set(detections.data["class_name"]) <= set(names)
    for class_id, name in zip(detections.class_id, detections.data["class_name"], strict=True):
        assert names[class_id] == name


def test_a_folder_of_another_kind_is_refused_naming_it(tiny_sam_dir):
    with pytest.raises(
        InvalidWeightsError, match=r"'grounding-dino' or 'mm-grounding-dino'.*'sam'"
    ):
        GroundingDinoProposer.from_pretrained(tiny_sam_dir)

"""Official SAM-HQ checkpoints give the official ``segment_anything_hq`` answers.

``tests/oracle/sam_hq_runner.py`` runs the official package unchanged in the oracle environment:
it builds the official SAM-HQ with random (perturbed) weights, saves the official ``.pth`` and
records what ``SamPredictor`` computes for a batch of boxes (``multimask_output=False``, the
official default ``hq_token_only=False``). These tests load the same file through grounded_seg
and compare stage by stage, with the SAM 1 tolerance rule of ``test_official_parity``
(``LOGIT_TOL`` on low-res logits, ``assert_masks_match`` on the masks). Run with ``pytest -s``
to see the measured differences.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from oracle_helpers import (
    LOGIT_TOL,
    ORACLE_DIR,
    PARITY_BOXES,
    assert_masks_match,
    max_diff,
    run_oracle,
    write_parity_image,
)
from PIL import Image

from grounded_seg import GroundedSAM
from grounded_seg.errors import InvalidWeightsError
from grounded_seg.official import convert_checkpoint, detect_checkpoint, load_official_state_dict
from grounded_seg.official.convert import mapped_state_dict
from grounded_seg.official.keymap import rename
from grounded_seg.official.sam_hq import HQ_KEYS
from grounded_seg.proposers.base import Proposals
from grounded_seg.segmenters import load_segmenter
from grounded_seg.segmenters.sam import scale_boxes
from grounded_seg.segmenters.sam_hq import SamHQSegmenter, decode_boxes

RUNNER = ORACLE_DIR / "sam_hq_runner.py"
BOXES = PARITY_BOXES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sam-hq-parity")


@pytest.fixture(scope="module")
def image_path(work) -> Path:
    return write_parity_image(work)


@pytest.fixture(scope="module")
def image(image_path) -> np.ndarray:
    return np.asarray(Image.open(image_path).convert("RGB"))


@pytest.fixture(scope="module")
def oracle(oracle_python, work, image_path) -> tuple[Path, dict]:
    """The official SAM-HQ ViT-B (random weights) as ``sam_hq_vit_b.pth``, and its outputs."""
    checkpoint, out, boxes = work / "sam_hq_vit_b.pth", work / "sam_hq_out.pt", work / "boxes.json"
    boxes.write_text(json.dumps(BOXES))
    run_oracle(
        oracle_python,
        *("run", "--variant", "vit_b", "--checkpoint", str(checkpoint)),
        *("--image", str(image_path), "--boxes", str(boxes), "--out", str(out)),
        runner=RUNNER,
    )
    return checkpoint, torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def state_dict(oracle) -> dict[str, torch.Tensor]:
    return load_official_state_dict(oracle[0])


# ---------------------------------------------------------------- recognition and mapping


def test_sam_hq_is_recognised_and_every_tensor_placed(state_dict):
    kind, config, mapped = mapped_state_dict(state_dict)  # raises on any gap or shape mismatch
    assert (kind.family, kind.variant) == ("sam_hq", "vit-b")
    assert type(config).__name__ == "SamHQConfig"
    assert config.vision_config.global_attn_indexes == [2, 5, 8, 11]
    assert config.mask_decoder_config.vit_dim == 768
    # every HQ tensor lands, unchanged, where its rule sends it
    for key in HQ_KEYS:
        (target,), _ = rename(key, "sam_hq")
        assert torch.equal(mapped[target], state_dict[key]), key
    assert torch.equal(mapped["mask_decoder.hq_token.weight"], state_dict[HQ_KEYS[0]])
    assert len(mapped) == len(state_dict) + 1  # + the tied copy of the prompt encoder's PE


def test_a_plain_sam_checkpoint_is_still_sam(state_dict):
    """Without the HQ decoder's tensors the file is a segment-anything checkpoint (SAM-HQ keeps
    SAM's names), recognised as such and converted as SAM 1."""
    plain = {key: value for key, value in state_dict.items() if key not in HQ_KEYS}
    assert len(plain) == len(state_dict) - len(HQ_KEYS)
    kind, config, _ = mapped_state_dict(plain)
    assert (kind.family, kind.variant) == ("sam", "vit-b")
    assert type(config).__name__ == "SamConfig"


@pytest.mark.parametrize(
    "removed", ["mask_decoder.hf_mlp.layers.2.bias", "mask_decoder.hf_token.weight"]
)
def test_a_damaged_sam_hq_checkpoint_names_the_missing_tensor(state_dict, work, removed):
    damaged = {key: value for key, value in state_dict.items() if key != removed}
    assert detect_checkpoint(damaged).family == "sam_hq"  # the other HQ tensors still say so
    path = work / f"damaged-{removed}.pth"
    torch.save(damaged, path)
    with pytest.raises(InvalidWeightsError, match=rf"missing \({removed.replace('.', '[.]')}\)"):
        convert_checkpoint(path, work / f"damaged-{removed}")
    assert not (work / f"damaged-{removed}").exists()
    path.unlink()


# ---------------------------------------------------------------- outputs, stage by stage


def test_sam_hq_vit_b_matches_official_stage_by_stage(oracle, image, work, monkeypatch):
    checkpoint, ref = oracle
    assert ref["hq_token_only_default"] is False  # the official predictor's default
    monkeypatch.setenv("GROUNDED_SEG_CACHE", str(work / "cache"))
    segmenter = load_segmenter(str(checkpoint), device="cpu")
    assert type(segmenter) is SamHQSegmenter and segmenter.hq_token_only is False
    state = segmenter.encode_image(image)
    assert torch.equal(state.pixel_values, ref["pixel_values"])
    embeddings = segmenter.image_embeddings(state)
    assert max_diff(embeddings, ref["embeddings"], "SAM-HQ-B image embeddings") <= 1e-4
    # the early ViT feature the HQ token reads: the first global-attention block's output
    assert max_diff(state.vit_features, ref["interm"][0], "SAM-HQ-B early ViT feature") <= 1e-4

    boxes = np.asarray(BOXES, np.float32)
    sam_boxes = torch.from_numpy(scale_boxes(boxes, state.original_size, state.reshaped_size))
    assert max_diff(sam_boxes, ref["sam_boxes"]) == 0.0
    with torch.inference_mode():
        low_res, iou = decode_boxes(
            segmenter.model, embeddings, state.vit_features, sam_boxes[None]
        )
        hq_only, _ = decode_boxes(
            segmenter.model, embeddings, state.vit_features, sam_boxes[None], hq_token_only=True
        )
        stock = segmenter.model(
            image_embeddings=embeddings,
            intermediate_embeddings=[state.vit_features],
            input_boxes=sam_boxes[None],
            multimask_output=False,
        )
    assert max_diff(low_res, ref["low_res_logits"], "SAM-HQ-B low-res logits") <= LOGIT_TOL
    assert max_diff(hq_only, ref["hq_only_low_res_logits"], "SAM-HQ-B HQ-only logits") <= LOGIT_TOL
    assert max_diff(iou, ref["iou"], "SAM-HQ-B IoU scores") <= 1e-4
    # transformers' own SamHQModel.forward (not used: see segmenters/sam_hq.py) for the record
    max_diff(stock.pred_masks[0, :, 0], ref["low_res_logits"], "SamHQModel.forward logits")

    masks, scores = segmenter.segment(state, boxes)
    assert segmenter.encoder_calls == 1
    assert_masks_match(masks, ref["mask_logits"])
    np.testing.assert_allclose(scores, ref["iou"].clamp(0, 1).numpy(), atol=1e-4)


class FixedBoxes:
    """A stand-in proposer: the oracle's boxes for any prompt, best first."""

    def encode_image(self, image):
        return None

    def propose(self, state, prompt, box_threshold, text_threshold, max_detections=None):
        scores = np.array([0.9, 0.8, 0.7], np.float32)
        return Proposals(np.asarray(BOXES, np.float32), scores, np.zeros(3, np.int64), ["x"] * 3)


def test_grounded_sam_on_the_official_file_gives_the_official_masks(
    oracle, image, work, monkeypatch
):
    checkpoint, ref = oracle
    monkeypatch.setenv("GROUNDED_SEG_CACHE", str(work / "cache"))
    gs = GroundedSAM(detector=FixedBoxes(), segmenter=str(checkpoint), device="cpu")
    assert type(gs.segmenter) is SamHQSegmenter
    gs.set_image(image)
    found = gs.predict("x")
    np.testing.assert_allclose(found.xyxy, np.asarray(BOXES, np.float32))
    assert_masks_match(found.mask, ref["mask_logits"])
    np.testing.assert_allclose(found.data["mask_score"], ref["iou"].clamp(0, 1).numpy(), atol=1e-4)


def test_sam_hq_vit_l_is_recognised_and_fully_mapped(oracle_python, work):
    """ViT-L (24 blocks, width 1024): recognised and every tensor placed (no inference: the
    official ViT-L forward alone takes minutes on 2 CPU cores)."""
    checkpoint = work / "sam_hq_vit_l.pth"
    try:
        run_oracle(
            oracle_python,
            *("save", "--variant", "vit_l", "--checkpoint", str(checkpoint)),
            runner=RUNNER,
        )
        kind, config, _ = mapped_state_dict(load_official_state_dict(checkpoint))
        assert (kind.family, kind.variant) == ("sam_hq", "vit-l")
        vision = config.vision_config
        assert (vision.hidden_size, vision.num_hidden_layers) == (1024, 24)
        assert vision.global_attn_indexes == [5, 11, 17, 23]
        assert config.mask_decoder_config.vit_dim == 1024
    finally:
        checkpoint.unlink(missing_ok=True)


def test_light_hq_sam_is_recognised_and_refused_clearly(oracle_python, work):
    """The official vit_tiny (Light HQ-SAM: TinyViT encoder) has no transformers model."""
    checkpoint = work / "sam_hq_vit_tiny.pth"
    try:
        run_oracle(
            oracle_python,
            *("save", "--variant", "vit_tiny", "--checkpoint", str(checkpoint)),
            runner=RUNNER,
        )
        source = load_official_state_dict(checkpoint)
        assert detect_checkpoint(source).variant == "vit-tiny"
        refused = r"vit-tiny .*TinyViT.* ViT image encoder only"
        with pytest.raises(InvalidWeightsError, match=refused):
            convert_checkpoint(checkpoint, work / "tiny_out")
        assert not (work / "tiny_out").exists()
    finally:
        checkpoint.unlink(missing_ok=True)

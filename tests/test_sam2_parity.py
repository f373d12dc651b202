"""Official SAM 2.1 checkpoints give the official ``SAM2ImagePredictor``'s answers.

The oracle is the official ``sam2`` package, run unchanged in its own environment by
``tests/oracle/sam2_runner.py``: it builds an official model with perturbed random weights,
saves it as the released ``.pt`` files are (``{"model": state_dict}``) and records what
``set_image`` + ``predict(box=..., multimask_output=False)`` computed, stage by stage. These
tests load the same file through grounded_seg (``load_segmenter`` / ``GroundedSAM(segmenter=
path)``) and compare under the SAM 1 rule of ``test_official_parity``: ``LOGIT_TOL`` on the
low-res logits; a mask pixel may differ only where the official logit is within
``MASK_FLIP_TOL`` of 0. ``pytest -s`` prints the measured differences.
"""

from __future__ import annotations

import json
import shutil
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
from grounded_seg.official.checkpoint import matches
from grounded_seg.official.convert import mapped_state_dict
from grounded_seg.official.sam2 import DROPPED
from grounded_seg.proposers.base import Proposals
from grounded_seg.segmenters import load_segmenter
from grounded_seg.segmenters.sam2 import Sam2Segmenter, scale_boxes

RUNNER = ORACLE_DIR / "sam2_runner.py"
BOXES = PARITY_BOXES
VARIANTS = {
    "sam2.1_hiera_t.yaml": "hiera-t",
    "sam2.1_hiera_s.yaml": "hiera-s",
    "sam2.1_hiera_b+.yaml": "hiera-b+",
    "sam2.1_hiera_l.yaml": "hiera-l",
}
VIDEO_PREFIXES = (
    "memory_attention.",
    "memory_encoder.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
    "mask_downsample.",
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sam2-parity")


@pytest.fixture(scope="module", autouse=True)
def _cache(work):
    """Converted checkpoints go to this module's own cache, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GROUNDED_SEG_CACHE", str(work / "cache"))
        yield


@pytest.fixture(scope="module")
def image_path(work) -> Path:
    return write_parity_image(work)


@pytest.fixture(scope="module")
def image(image_path) -> np.ndarray:
    return np.asarray(Image.open(image_path).convert("RGB"))


def run_sam2_oracle(python: str, work: Path, image_path: Path, config: str) -> tuple[Path, dict]:
    """The official SAM 2.1 of ``config`` (random weights) saved as a .pt, and what it computed."""
    stem = config.removesuffix(".yaml").replace("+", "p")
    checkpoint, out, boxes = work / f"{stem}.pt", work / f"{stem}_out.pt", work / "boxes.json"
    boxes.write_text(json.dumps(BOXES))
    run_oracle(
        python,
        *("run", "--config", config, "--checkpoint", str(checkpoint)),
        *("--image", str(image_path), "--boxes", str(boxes), "--out", str(out)),
        runner=RUNNER,
    )
    return checkpoint, torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def tiny_oracle(oracle_python, work, image_path) -> tuple[Path, dict]:
    return run_sam2_oracle(oracle_python, work, image_path, "sam2.1_hiera_t.yaml")


@pytest.fixture(scope="module")
def official_sizes(oracle_python, work) -> dict:
    out = work / "shapes.pt"
    run_oracle(oracle_python, "describe", "--out", str(out), runner=RUNNER)
    return torch.load(out, weights_only=True)


class FixedBoxes:
    """A stand-in proposer returning the test's boxes for any prompt."""

    def encode_image(self, image):
        return None

    def propose(self, state, prompt, box_threshold, text_threshold, max_detections=None):
        n = len(BOXES)
        return Proposals(
            np.array(BOXES, np.float32),
            np.full(n, 0.9, np.float32),
            np.zeros(n, np.int64),
            ["thing"] * n,
        )


# ---------------------------------------------------------------- recognition and mapping


@pytest.mark.parametrize("config", list(VARIANTS))
def test_official_sizes_are_recognised_and_configured_as_their_yaml(config, official_sizes):
    """Every official size, from its tensors' shapes alone (meta tensors): the variant, every
    tensor placed, the video tensors (and only those) dropped, and each Hiera block built with
    the official width, heads, window and query pooling."""
    from transformers import Sam2Model

    official = official_sizes[config]
    source = {k: torch.empty(shape, device="meta") for k, shape in official["shapes"].items()}
    kind, sam2_config, _ = mapped_state_dict(source, config)  # raises on any gap
    assert (kind.family, kind.variant) == ("sam2", VARIANTS[config])
    dropped = {k for k in source if matches(DROPPED, k)}
    assert dropped == {k for k in source if k.startswith(VIDEO_PREFIXES)}
    with torch.device("meta"):
        model = Sam2Model(sam2_config)
    blocks = [
        (b.dim, b.dim_out, b.attn.num_attention_heads, b.window_size, tuple(b.query_stride or ()))
        for b in model.vision_encoder.backbone.blocks
    ]
    assert blocks == [tuple(block) for block in official["blocks"]]
    decoder = sam2_config.mask_decoder_config
    assert decoder.num_attention_heads == official["decoder_heads"]
    stability = (
        decoder.dynamic_multimask_via_stability,
        decoder.dynamic_multimask_stability_delta,
        decoder.dynamic_multimask_stability_thresh,
    )
    assert stability == tuple(official["stability"])


def test_hiera_t_checkpoint_maps_every_tensor_unchanged(tiny_oracle):
    source = load_official_state_dict(tiny_oracle[0])
    assert detect_checkpoint(source).variant == "hiera-t"
    _, _, mapped = mapped_state_dict(source)
    dropped = [k for k in source if matches(DROPPED, k)]
    assert all(k.startswith(VIDEO_PREFIXES) for k in dropped)
    # every kept official value appears, unchanged, somewhere in the mapped model
    mapped_sums = {round(float(v.double().sum()), 4) for v in mapped.values()}
    for key, value in source.items():
        if key in dropped or key.startswith("sam_prompt_encoder.point_embeddings."):
            continue  # the four point embeddings are stacked into one table: checked below
        assert round(float(value.double().sum()), 4) in mapped_sums, key
    stacked = torch.cat(
        [source[f"sam_prompt_encoder.point_embeddings.{i}.weight"] for i in range(4)]
    )
    assert torch.equal(mapped["prompt_encoder.point_embed.weight"], stacked)


def test_damaged_or_foreign_state_dicts_are_refused_by_name(tiny_oracle, work):
    source = load_official_state_dict(tiny_oracle[0])
    damaged = {k: v for k, v in source.items() if k != "sam_mask_decoder.conv_s0.weight"}
    with pytest.raises(InvalidWeightsError, match=r"not filled \(e\.g\. mask_decoder\.conv_s0\."):
        mapped_state_dict(damaged)
    no_point = {k: v for k, v in source.items() if "point_embeddings.2" not in k}
    with pytest.raises(InvalidWeightsError, match=r"point_embeddings\.2\.weight"):
        mapped_state_dict(no_point)
    no_pos = {k: v for k, v in source.items() if k != "image_encoder.trunk.pos_embed"}
    with pytest.raises(InvalidWeightsError, match=r"image_encoder\.trunk\.pos_embed"):
        mapped_state_dict(no_pos)
    extra = {**source, "image_encoder.trunk.extra.weight": torch.zeros(2)}
    with pytest.raises(
        InvalidWeightsError, match=r"'image_encoder\.trunk\.extra\.weight': no rule"
    ):
        mapped_state_dict(extra)
    last = "image_encoder.trunk.blocks.11."  # a 13th block: Hiera-T's widths, no official depth
    deeper = {**source, **{k.replace(last, "image_encoder.trunk.blocks.12."): v
                           for k, v in source.items() if k.startswith(last)}}  # fmt: skip
    with pytest.raises(InvalidWeightsError, match="expected one of the official sizes"):
        mapped_state_dict(deeper)
    foreign = work / "foreign.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, foreign)
    with pytest.raises(InvalidWeightsError, match=r"SAM 2\.1 \(image_encoder\.trunk"):
        load_segmenter(foreign, device="cpu")
    truncated = work / "damaged.pt"
    torch.save({"model": damaged}, truncated)
    with pytest.raises(InvalidWeightsError, match=r"mask_decoder\.conv_s0"):
        load_segmenter(truncated, device="cpu")


# ---------------------------------------------------------------- the official answers


def compare(segmenter: Sam2Segmenter, ref: dict, image: np.ndarray, name: str) -> None:
    """grounded_seg's SAM 2.1 against the official run ``ref``, stage by stage."""
    state = segmenter.encode_image(image)
    assert torch.equal(state.pixel_values, ref["pixel_values"])  # the official transform, exactly
    features = segmenter.features(state)
    for level, (ours, official) in enumerate(zip(features[:2], ref["high_res_feats"], strict=True)):
        assert max_diff(ours, official, f"{name} high-res features {level}") <= 1e-4
    assert max_diff(features[-1], ref["image_embed"], f"{name} image embedding") <= 1e-4
    boxes = np.array(BOXES, np.float32)
    assert max_diff(scale_boxes(boxes, state.original_size, 1024), ref["boxes_1024"]) == 0.0
    low_res, iou = segmenter.low_res_logits(state, boxes)
    assert max_diff(low_res, ref["low_res_logits"], f"{name} low-res logits") <= LOGIT_TOL
    assert max_diff(iou, ref["iou"], f"{name} IoU scores") <= LOGIT_TOL
    masks, scores = segmenter.segment(state, boxes)
    assert_masks_match(masks, ref["mask_logits"])
    np.testing.assert_allclose(scores, ref["iou"].clamp(0, 1).numpy(), atol=LOGIT_TOL)


def test_hiera_t_matches_official_through_grounded_sam(tiny_oracle, image):
    checkpoint, ref = tiny_oracle
    gs = GroundedSAM(detector=FixedBoxes(), segmenter=str(checkpoint), device="cpu")
    assert isinstance(gs.segmenter, Sam2Segmenter)
    compare(gs.segmenter, ref, image, "SAM2.1-T")
    gs.set_image(image)
    detections = gs.predict("thing")
    assert_masks_match(detections.mask, ref["mask_logits"])
    assert gs.segmenter.encoder_calls == 2  # compare()'s own state, then set_image's


def test_single_mask_choice_is_the_officials_stability_fallback(tiny_oracle, image):
    """The official predictor falls back from the single-mask token to the best multimask output
    when the single mask is unstable; with these weights it does for every box, so taking the
    single-mask token alone would miss the official logits by far more than the tolerance."""
    checkpoint, ref = tiny_oracle
    assert ref["dynamic_multimask_via_stability"] is True
    segmenter = load_segmenter(checkpoint, device="cpu")
    state = segmenter.encode_image(image)
    segmenter.model.mask_decoder.dynamic_multimask_via_stability = False  # this instance only
    token0, _ = segmenter.low_res_logits(state, np.array(BOXES, np.float32))
    per_box = (token0 - ref["low_res_logits"]).abs().flatten(1).max(1).values
    print(f"parity: single-mask token alone differs from official by {per_box.tolist()}")
    assert (per_box > 100 * LOGIT_TOL).all()


@pytest.mark.parametrize(
    ("config", "blocks", "global_blocks"),
    [
        ("sam2.1_hiera_b+.yaml", [2, 3, 16, 3], [12, 16, 20]),  # ~1 min on 2 cores
        ("sam2.1_hiera_l.yaml", [2, 6, 36, 4], [23, 33, 43]),  # ~2 min on 2 cores, 900 MB
    ],
)
def test_larger_sizes_match_official(
    config, blocks, global_blocks, oracle_python, work, image_path, image
):
    checkpoint, ref = run_sam2_oracle(oracle_python, work, image_path, config)
    dst = work / f"{checkpoint.stem}_converted"
    try:
        assert convert_checkpoint(checkpoint, dst).variant == VARIANTS[config]
        backbone = json.loads((dst / "config.json").read_text())["vision_config"]["backbone_config"]
        assert backbone["blocks_per_stage"] == blocks
        assert backbone["global_attention_blocks"] == global_blocks
        compare(Sam2Segmenter.from_pretrained(dst, device="cpu"), ref, image, VARIANTS[config])
    finally:  # 320 MB (B+) or 900 MB (L) each
        checkpoint.unlink(missing_ok=True)
        shutil.rmtree(dst, ignore_errors=True)

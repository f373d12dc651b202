"""Official checkpoints give the official implementations' answers.

The oracles are the official packages (groundingdino-py, segment-anything), run unchanged in their
own environment (torch + torchvision, transformers 4.x) by ``tests/oracle/official_runner.py``:
it builds each official model with random weights, saves it in the official format and records
what the official inference path computes. These tests load the same files through grounded_seg
and compare. ``GROUNDED_SEG_ORACLE_PYTHON`` names the oracle environment's python
(``scripts/test.sh`` builds it once and sets it); without it the tests skip locally and fail in CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from oracle_helpers import (
    LOGIT_TOL,
    PARITY_BOXES,
    assert_masks_match,
    max_diff,
    run_oracle,
    write_parity_image,
)
from PIL import Image

from grounded_seg import GroundedSAM
from grounded_seg.errors import InvalidWeightsError
from grounded_seg.official import (
    DROPPED,
    convert_checkpoint,
    converted_model_dir,
    detect_checkpoint,
    load_official_state_dict,
)
from grounded_seg.official.checkpoint import matches
from grounded_seg.official.convert import mapped_state_dict
from grounded_seg.prompts import normalize_prompt
from grounded_seg.proposers.deformable import GatherDeformableAttention
from grounded_seg.proposers.fusion import FactoredBiAttention
from grounded_seg.proposers.grounding_dino import GroundingDinoProposer
from grounded_seg.segmenters.sam import SamSegmenter

CAPTION = "black cat . dog"  # two phrases: the sub-sentence text mask is exercised
SAM_BOXES = json.dumps(PARITY_BOXES)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parity")


@pytest.fixture(scope="module")
def image_path(work) -> Path:
    return write_parity_image(work)


@pytest.fixture(scope="module")
def image(image_path) -> np.ndarray:
    return np.asarray(Image.open(image_path).convert("RGB"))


def run_sam_oracle(oracle_python: str, work: Path, image_path: Path, variant: str):
    """The official SAM of ``variant`` (random weights) saved as a .pth, and what it computed."""
    checkpoint, out = work / f"sam_{variant}.pth", work / f"sam_{variant}_out.pt"
    boxes = work / "boxes.json"
    boxes.write_text(SAM_BOXES)
    run_oracle(
        oracle_python,
        *("sam", "--variant", variant, "--checkpoint", str(checkpoint)),
        *("--image", str(image_path), "--boxes", str(boxes), "--out", str(out)),
    )
    return checkpoint, torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def sam_oracle(oracle_python, work, image_path) -> tuple[Path, dict]:
    return run_sam_oracle(oracle_python, work, image_path, "vit_b")


@pytest.fixture(scope="module")
def bert_dir(oracle_python, work, bert_vocab_file) -> Path:
    out = work / "bert"
    run_oracle(oracle_python, "bert", "--vocab", str(bert_vocab_file), "--out", str(out))
    return out


@pytest.fixture(scope="module")
def gdino_oracle(oracle_python, work, image_path, bert_dir) -> tuple[Path, Path, dict]:
    checkpoint, sam, out = work / "gd_swint.pth", work / "sam_e2e.pth", work / "gd_out.pt"
    run_oracle(
        oracle_python,
        *("gdino", "--bert", str(bert_dir), "--checkpoint", str(checkpoint)),
        *("--image", str(image_path), "--caption", CAPTION, "--boxes", "3"),
        *("--sam", str(sam), "--out", str(out)),
    )
    return checkpoint, sam, torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def sam_dir(sam_oracle, work) -> Path:
    dst = work / "sam_converted"
    convert_checkpoint(sam_oracle[0], dst)
    return dst


@pytest.fixture(scope="module")
def gdino_dir(gdino_oracle, work, bert_dir) -> Path:
    dst = work / "gd_converted"
    convert_checkpoint(gdino_oracle[0], dst, tokenizer=bert_dir)
    return dst


@contextlib.contextmanager
def forced_topk(indices: torch.Tensor):
    """Within the block, the query selection picks ``indices`` (the oracle's choice).

    Random weights make first-stage scores nearly tie, so two correct implementations may rank
    queries differently from some rank on; forcing the oracle's selection compares what follows.
    """
    real = torch.topk

    def topk(scores, k, *args, **kwargs):
        if k == indices.shape[1]:
            return torch.gather(scores, 1, indices), indices
        return real(scores, k, *args, **kwargs)

    torch.topk = topk
    try:
        yield
    finally:
        torch.topk = real


# ---------------------------------------------------------------- recognition and mapping


def test_checkpoints_are_recognised_from_their_tensors(sam_oracle, gdino_oracle):
    sam = load_official_state_dict(sam_oracle[0])
    gd = load_official_state_dict(gdino_oracle[0])  # {"model": {"module.<key>": ...}} on disk
    assert detect_checkpoint(sam).variant == "vit-b"
    assert (detect_checkpoint(gd).family, detect_checkpoint(gd).variant) == (
        "grounding_dino",
        "swin-t",
    )
    assert not any(k.startswith("module.") for k in gd)


@pytest.mark.parametrize("which", ["sam", "gdino"])
def test_every_official_tensor_is_used_and_every_model_tensor_filled(
    which, sam_oracle, gdino_oracle
):
    path = sam_oracle[0] if which == "sam" else gdino_oracle[0]
    source = load_official_state_dict(path)
    kind, config, mapped = mapped_state_dict(source)  # raises on any gap or shape mismatch
    dropped = [k for k in source if matches(DROPPED[kind.family], k)]
    if which == "sam":
        assert dropped == []
        assert config.vision_config.global_attn_indexes == [2, 5, 8, 11]
    else:
        assert sorted({k.split(".")[1] for k in dropped if k.startswith("bert.")}) == ["pooler"]
        assert config.backbone_config.depths == [2, 2, 6, 2]
        assert config.backbone_config.window_size == 7
        assert config.num_queries == 900
    # every non-dropped official value appears, unchanged, somewhere in the mapped model
    mapped_sums = {round(float(v.double().sum()), 3) for v in mapped.values()}
    for key, value in source.items():
        if key in dropped or value.dim() == 0:
            continue
        if "qkv" in key or "in_proj" in key:
            continue  # split into three; checked by the outputs
        assert round(float(value.double().sum()), 3) in mapped_sums, key


def test_swin_b_checkpoint_is_recognised_and_fully_mapped(oracle_python, bert_dir, work):
    checkpoint = work / "gd_swinb.pth"
    run_oracle(
        oracle_python,
        *("gdino-save", "--bert", str(bert_dir), "--config", "GroundingDINO_SwinB_cfg.py"),
        *("--checkpoint", str(checkpoint)),
    )
    source = load_official_state_dict(checkpoint)
    kind, config, mapped = mapped_state_dict(source)
    assert (kind.family, kind.variant) == ("grounding_dino", "swin-b")
    backbone = config.backbone_config
    assert (backbone.embed_dim, backbone.depths, backbone.num_heads, backbone.window_size) == (
        128,
        [2, 2, 18, 2],
        [4, 8, 16, 32],
        12,
    )
    q = mapped[
        "model.backbone.conv_encoder.model.swin.encoder.layers.2.blocks.17.attention.q_proj.weight"
    ]
    qkv = source["backbone.0.layers.2.blocks.17.attn.qkv.weight"]
    assert torch.equal(q, qkv[:512])  # the first third of the fused projection
    checkpoint.unlink()


# ---------------------------------------------------------------- SAM


def test_sam_preprocessing_equals_official(sam_dir, sam_oracle, image):
    segmenter = SamSegmenter.from_pretrained(sam_dir, device="cpu")
    state = segmenter.encode_image(image)
    assert torch.equal(state.pixel_values, sam_oracle[1]["pixel_values"])
    assert state.reshaped_size == (683, 1024)


def compare_sam(model_dir: Path, ref: dict, image: np.ndarray, name: str) -> None:
    """grounded_seg's SAM on ``model_dir`` against the official run ``ref``: image embeddings,
    masks, low-res logits from the same embeddings and boxes, predicted IoU."""
    segmenter = SamSegmenter.from_pretrained(model_dir, device="cpu")
    state = segmenter.encode_image(image)
    embeddings = segmenter.image_embeddings(state)
    assert max_diff(embeddings, ref["embeddings"], f"{name} image embeddings") <= 1e-4
    boxes = np.array(json.loads(SAM_BOXES), np.float32)
    masks, scores = segmenter.segment(state, boxes)
    assert_masks_match(masks, ref["mask_logits"])
    # the decoder on its own, from the same inputs
    from grounded_seg.segmenters.sam import scale_boxes

    sam_boxes = torch.from_numpy(scale_boxes(boxes, state.original_size, state.reshaped_size))
    assert max_diff(sam_boxes, ref["sam_boxes"]) == 0.0
    with torch.inference_mode():
        out = segmenter.model(
            image_embeddings=embeddings, input_boxes=sam_boxes[None], multimask_output=False
        )
    low_res = out.pred_masks[0, :, 0]
    assert max_diff(low_res, ref["low_res_logits"], f"{name} low-res logits") <= LOGIT_TOL
    np.testing.assert_allclose(scores, ref["iou"].clamp(0, 1).numpy(), atol=1e-3)


def test_sam_vit_b_matches_official(sam_dir, sam_oracle, image):
    compare_sam(sam_dir, sam_oracle[1], image, "SAM-B")


def test_sam_vit_h_matches_official(oracle_python, work, image_path, image):
    """ViT-H (632M parameters, 32 blocks): recognised, converted, and the same answers."""
    checkpoint, ref = run_sam_oracle(oracle_python, work, image_path, "vit_h")
    dst = work / "sam_h_converted"
    try:
        assert detect_checkpoint(load_official_state_dict(checkpoint)).variant == "vit-h"
        convert_checkpoint(checkpoint, dst)
        config = json.loads((dst / "config.json").read_text())["vision_config"]
        assert (config["hidden_size"], config["num_hidden_layers"]) == (1280, 32)
        assert config["global_attn_indexes"] == [7, 15, 23, 31]
        compare_sam(dst, ref, image, "SAM-H")
    finally:  # 2.5 GB each
        checkpoint.unlink(missing_ok=True)
        shutil.rmtree(dst, ignore_errors=True)


# ---------------------------------------------------------------- Grounding DINO


def test_grounding_dino_preprocessing_equals_official(gdino_dir, gdino_oracle, image):
    proposer = GroundingDinoProposer.from_pretrained(gdino_dir, device="cpu")
    state = proposer.encode_image(image)
    assert torch.equal(state.pixel_values, gdino_oracle[2]["pixel_values"][None])
    text_pass = proposer.text_passes(normalize_prompt(CAPTION))[0]
    assert proposer.tokenizer.decode(text_pass.input_ids) == "[CLS] black cat. dog. [SEP]"


def test_grounding_dino_swin_t_matches_official_stage_by_stage(gdino_dir, gdino_oracle, image):
    ref = gdino_oracle[2]
    proposer = GroundingDinoProposer.from_pretrained(gdino_dir, device="cpu")
    # what is compared is the model as grounded_seg runs it: the leaner equivalents installed
    modules = list(proposer.model.modules())
    assert sum(isinstance(m, FactoredBiAttention) for m in modules) == 6
    assert sum(isinstance(m, GatherDeformableAttention) for m in modules) == 12
    state = proposer.encode_image(image)
    ids = torch.tensor([proposer.text_passes(normalize_prompt(CAPTION))[0].input_ids])
    seen = {}
    hook = proposer.model.model.backbone.conv_encoder.register_forward_hook(
        lambda _m, _a, out: seen.update(backbone=[feature for feature, _ in out])
    )
    try:
        with torch.inference_mode(), forced_topk(ref["topk_indices"]):
            out = proposer.model(
                pixel_values=state.pixel_values,
                pixel_mask=state.pixel_mask,
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                token_type_ids=torch.zeros_like(ids),
            )
    finally:
        hook.remove()
    for ours, official in zip(seen["backbone"], ref["backbone"], strict=True):
        assert max_diff(ours, official, f"backbone {tuple(ours.shape)}") <= 1e-3
    assert max_diff(out.encoder_last_hidden_state_vision, ref["memory"], "enhancer image") <= 1e-3
    assert max_diff(out.encoder_last_hidden_state_text, ref["memory_text"], "enhancer text") <= 1e-3
    # the scores the query selection ranks, and how far the two rankings agree unforced
    scores = out.enc_outputs_class.max(-1).values
    assert max_diff(scores, ref["topk_scores"], "query selection scores") <= 1e-3
    natural = torch.topk(scores, ref["topk_indices"].shape[1], dim=1).indices
    agree = int((natural[0] == ref["topk_indices"][0]).int().cumprod(0).sum())
    print(f"parity: unforced query selection agrees on the first {agree} of 900 ranks")
    assert agree >= 100, f"the rankings part at rank {agree}"
    # the decoder, layer by layer (relative to the states' size: the oracle scales them down)
    states, official_states = out.intermediate_hidden_states[0], ref["decoder_states"][:, 0]
    assert max_diff(states, official_states, "decoder states") <= 1e-3 * float(
        official_states.abs().max()
    )
    # official: the initial reference boxes, then each layer's refinement; transformers keeps
    # the initial ones apart
    assert (
        max_diff(out.init_reference_points[0], ref["decoder_references"][0, 0], "initial boxes")
        <= 1e-3
    )
    assert (
        max_diff(
            out.intermediate_reference_points[0], ref["decoder_references"][1:, 0], "decoder boxes"
        )
        <= 1e-3
    )
    length = ids.shape[1]
    assert max_diff(out.logits[0, :, :length], ref["logits"][:, :length], "logits") <= 1e-3
    assert max_diff(out.pred_boxes[0], ref["boxes"], "boxes") <= 1e-3


# ---------------------------------------------------------------- end to end


def test_grounded_sam_matches_the_official_path(gdino_oracle, bert_dir, image, monkeypatch, work):
    """groundingdino predict -> SamPredictor.predict_torch, vs GroundedSAM on the .pth files."""
    detector, segmenter, ref = gdino_oracle
    monkeypatch.setenv("GROUNDED_SEG_CACHE", str(work / "cache"))
    monkeypatch.setenv("GROUNDED_SEG_BERT_TOKENIZER", str(bert_dir))
    gs = GroundedSAM(
        detector=str(detector),
        segmenter=str(segmenter),
        device="cpu",
        proposer_options={"nms_threshold": None},  # the official output has no NMS
    )
    gs.set_image(image)
    with forced_topk(ref["predict_topk_indices"]):
        found = gs.predict(ref["predict_caption"], ref["box_threshold"], ref["text_threshold"])
    order = torch.argsort(ref["predict_scores"], descending=True)  # ours come sorted by score
    height, width = image.shape[:2]
    scale = np.array([width, height, width, height], np.float32)
    assert len(found) == len(order) == 3
    official_xyxy = ref["predict_xyxy"][order].numpy()
    box_diff = float(np.abs(found.xyxy - official_xyxy).max()) / max(width, height)
    print(f"parity: end-to-end boxes (normalised): max abs diff {box_diff:.3g}")
    np.testing.assert_allclose(
        found.xyxy / scale, ref["predict_xyxy"][order].numpy() / scale, atol=1e-3
    )
    np.testing.assert_allclose(found.confidence, ref["predict_scores"][order].numpy(), atol=1e-3)
    for ours, official in zip(
        found.data["phrase"], [ref["predict_phrases"][i] for i in order], strict=True
    ):
        words = " ".join(w for w in official.split() if w not in ("[CLS]", "[SEP]"))
        # the official phrase may be empty; grounded_seg then names the class instead
        assert ours == (words or ref["predict_caption"])
    assert_masks_match(found.mask, ref["sam"]["mask_logits"][order])


# ---------------------------------------------------------------- files, cache and errors


def test_conversion_is_cached_and_a_changed_source_is_noticed(sam_oracle, work, monkeypatch):
    monkeypatch.setenv("GROUNDED_SEG_CACHE", str(work / "cache-test"))
    src = work / "copy_of_sam.pth"
    src.write_bytes(sam_oracle[0].read_bytes())
    start = time.perf_counter()
    first = converted_model_dir(src)
    cold = time.perf_counter() - start
    record = (first / "grounded_seg.json").read_text()
    start = time.perf_counter()
    assert converted_model_dir(src) == first
    warm = time.perf_counter() - start
    assert warm < cold / 5, (cold, warm)  # the second load does not convert again
    os.utime(src)  # touched, same bytes: reused after hashing
    assert converted_model_dir(src) == first
    assert (first / "grounded_seg.json").read_text() == record
    state = load_official_state_dict(src)
    state["mask_decoder.iou_token.weight"] = state["mask_decoder.iou_token.weight"] + 1
    torch.save(state, src)
    again = converted_model_dir(src)
    assert (again / "grounded_seg.json").read_text() != record  # new sha256
    from safetensors.torch import load_file

    tensors = load_file(again / "model.safetensors")
    assert torch.equal(
        tensors["mask_decoder.iou_token.weight"], state["mask_decoder.iou_token.weight"]
    )


def test_wrong_kind_of_file_gets_a_clear_error(sam_oracle, work, monkeypatch):
    monkeypatch.setenv("GROUNDED_SEG_CACHE", str(work / "cache-errors"))
    with pytest.raises(InvalidWeightsError, match="official sam vit-b checkpoint; the detector"):
        GroundedSAM(detector=str(sam_oracle[0]), segmenter=str(sam_oracle[0]), device="cpu")
    other = work / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(InvalidWeightsError, match="expected an official GroundingDINO"):
        convert_checkpoint(other, work / "other_out")
    truncated = work / "truncated.pth"
    truncated.write_bytes(sam_oracle[0].read_bytes()[:1000])
    with pytest.raises(InvalidWeightsError, match="weights_only=True"):
        convert_checkpoint(truncated, work / "truncated_out")
    assert not (work / "other_out").exists() and not (work / "truncated_out").exists()


def test_cli_convert_writes_a_folder_and_never_overwrites(sam_oracle, work):
    dst = work / "cli_sam"
    done = subprocess.run(
        [sys.executable, "-m", "grounded_seg.cli", "convert", str(sam_oracle[0]), str(dst)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "sam vit-b" in done.stdout
    assert {p.name for p in dst.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "grounded_seg.json",
    }
    again = subprocess.run(
        [sys.executable, "-m", "grounded_seg.cli", "convert", str(sam_oracle[0]), str(dst)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 2 and "already exists" in again.stderr

"""Official SAM 2.1 checkpoints (``sam2.1_hiera_*.pt``, ``{"model": state_dict}``) on
``transformers.Sam2Model``.

The official file holds the whole video model (``SAM2Base``): the image encoder (Hiera trunk and
FPN neck), the prompt encoder and mask decoder that ``SAM2ImagePredictor`` uses, and the video
parts (memory attention, memory encoder, object pointers) that only the video predictor uses.
``Sam2Model`` is the image model, so those video tensors are dropped, each with its reason; every
``Sam2Model`` tensor is filled from the file.

What the tensors tell: widths, blocks per stage (a block whose width changes carries a ``proj``),
the windowed position embedding's sizes, the neck's channels, the decoder's sizes. What they do
not tell (attention heads, which blocks attend globally, the later stages' window sizes: none of
them changes a tensor's shape) comes from the official config of the recognised size
(``sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``); an unknown size is refused.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..errors import InvalidWeightsError
from .families import OfficialFamily
from .keymap import Rule, one

_TRUNK = "image_encoder.trunk."
_PATCH = _TRUNK + "patch_embed.proj.weight"
_DECODER_TOKEN = "sam_mask_decoder.iou_token.weight"
IMAGE_SIZE = 1024  # every official SAM 2.1 config: model.image_size
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# (embed_dim, blocks per stage) -> variant; what the tensors cannot show, per variant, from the
# official yaml configs (Hiera's defaults where a yaml leaves them out).
VARIANTS: dict[tuple[int, tuple[int, ...]], str] = {
    (96, (1, 2, 7, 2)): "hiera-t",
    (96, (1, 2, 11, 2)): "hiera-s",
    (112, (2, 3, 16, 3)): "hiera-b+",
    (144, (2, 6, 36, 4)): "hiera-l",
}
UNSEEN_IN_TENSORS: dict[str, dict[str, Any]] = {
    "hiera-t": {"heads": 1, "global": [5, 7, 9], "windows": [8, 4, 14, 7]},
    "hiera-s": {"heads": 1, "global": [7, 10, 13], "windows": [8, 4, 14, 7]},
    "hiera-b+": {"heads": 2, "global": [12, 16, 20], "windows": [8, 4, 14, 7]},
    "hiera-l": {"heads": 2, "global": [23, 33, 43], "windows": [8, 4, 16, 8]},
}
DECODER_HEADS = 8  # SAM2Base builds its two-way transformer with num_heads=8 for every size
# build_sam2 (apply_postprocessing=True, what SAM2ImagePredictor gets) turns on the decoder's
# single-mask fallback: when the single mask's stability score is below 0.98 (logit band +-0.05),
# the best of the three multimask outputs is returned instead. Sam2MaskDecoder does the same.
STABILITY = {"delta": 0.05, "thresh": 0.98}


def _count(sd: dict[str, torch.Tensor], pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.fullmatch(pattern, k))})


def _stages(sd: dict[str, torch.Tensor]) -> tuple[list[int], list[int]]:
    """Blocks per stage and width per stage: a stage's first block (after the first stage)
    changes the width and carries ``proj``."""
    depth = _count(sd, r"image_encoder\.trunk\.blocks\.(\d+)\..*")
    starts = [0] + [i for i in range(depth) if f"{_TRUNK}blocks.{i}.proj.weight" in sd]
    ends = [*starts[1:], depth]
    blocks = [end - start for start, end in zip(starts, ends, strict=True)]
    widths = [int(sd[f"{_TRUNK}blocks.{start}.norm2.weight"].shape[0]) for start in starts]
    return blocks, widths


def detect(sd: dict[str, torch.Tensor]) -> str | None:
    """``hiera-t|hiera-s|hiera-b+|hiera-l`` for an official SAM 2 / 2.1 state dict, else ``None``
    (``hiera-<width>-<blocks>`` for a size no official config has)."""
    if _PATCH not in sd or _DECODER_TOKEN not in sd:
        return None
    try:
        blocks, _ = _stages(sd)
    except KeyError:
        return "hiera-unknown"  # damaged: config() names what is missing
    width = int(sd[_PATCH].shape[0])
    return VARIANTS.get((width, tuple(blocks)), f"hiera-{width}-{'-'.join(map(str, blocks))}")


def _require(sd: dict[str, torch.Tensor], *keys: str) -> None:
    missing = [k for k in keys if k not in sd]
    if missing:
        raise InvalidWeightsError(
            f"official SAM 2.1 checkpoint: expected tensors {', '.join(missing)}; they are "
            "missing (a damaged or partial state dict)"
        )


def config(sd: dict[str, torch.Tensor]) -> Any:
    """A ``Sam2Config`` sized from the official tensors (sizes the tensors cannot show come from
    the recognised variant's official yaml)."""
    from transformers import Sam2Config

    _require(
        sd,
        _TRUNK + "pos_embed",
        _TRUNK + "pos_embed_window",
        _TRUNK + "blocks.0.norm2.weight",
        "image_encoder.neck.convs.0.conv.weight",
        "sam_prompt_encoder.no_mask_embed.weight",
        "sam_prompt_encoder.mask_downscaling.3.weight",
        "sam_mask_decoder.mask_tokens.weight",
        "sam_mask_decoder.transformer.layers.0.mlp.layers.0.weight",
        "sam_mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight",
        "sam_mask_decoder.iou_prediction_head.layers.0.weight",
    )
    variant = detect(sd)
    if variant not in UNSEEN_IN_TENSORS:
        known = ", ".join(f"{v} (width {w}, blocks {list(b)})" for (w, b), v in VARIANTS.items())
        raise InvalidWeightsError(
            f"official SAM 2.1 checkpoint: expected one of the official sizes {known}, got "
            f"{variant}: its attention heads and windows are not recorded in the tensors"
        )
    unseen = UNSEEN_IN_TENSORS[variant]
    blocks, widths = _stages(sd)
    patch = sd[_PATCH]
    neck = _count(sd, r"image_encoder\.neck\.convs\.(\d+)\.conv\.weight")
    channels = [int(sd[f"image_encoder.neck.convs.{i}.conv.weight"].shape[1]) for i in range(neck)]
    hidden = int(sd["image_encoder.neck.convs.0.conv.weight"].shape[0])
    levels = [[IMAGE_SIZE // s, IMAGE_SIZE // s] for s in (4, 8, 16)]  # stride of each level
    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": int(patch.shape[0]),
        "num_attention_heads": unseen["heads"],
        "image_size": [IMAGE_SIZE, IMAGE_SIZE],
        "patch_kernel_size": list(patch.shape[-2:]),
        "window_positional_embedding_background_size": list(sd[_TRUNK + "pos_embed"].shape[-2:]),
        "blocks_per_stage": blocks,
        "embed_dim_per_stage": widths,
        "num_attention_heads_per_stage": [unseen["heads"] * 2**i for i in range(len(blocks))],
        "window_size_per_stage": [
            int(sd[_TRUNK + "pos_embed_window"].shape[-1]),
            *unseen["windows"][1:],
        ],
        "global_attention_blocks": unseen["global"],
    }
    vision = {
        "model_type": "sam2_vision_model",
        "backbone_config": backbone,
        "backbone_channel_list": channels,
        "backbone_feature_sizes": levels,
        "fpn_hidden_size": hidden,
        "fpn_top_down_levels": [2, 3],
        "num_feature_levels": 3,
    }
    prompt = {
        "hidden_size": int(sd["sam_prompt_encoder.no_mask_embed.weight"].shape[1]),
        "image_size": IMAGE_SIZE,
        "patch_size": 16,
        "mask_input_channels": int(sd["sam_prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        "num_point_embeddings": _count(sd, r"sam_prompt_encoder\.point_embeddings\.(\d+)\.weight"),
    }
    dec = "sam_mask_decoder."
    mask = {
        "hidden_size": int(sd[dec + "mask_tokens.weight"].shape[1]),
        "mlp_dim": int(sd[dec + "transformer.layers.0.mlp.layers.0.weight"].shape[0]),
        "num_hidden_layers": _count(sd, r"sam_mask_decoder\.transformer\.layers\.(\d+)\..*"),
        "num_attention_heads": DECODER_HEADS,
        "attention_downsample_rate": hidden
        // int(sd[dec + "transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0]),
        "num_multimask_outputs": int(sd[dec + "mask_tokens.weight"].shape[0]) - 1,
        "iou_head_depth": _count(sd, r"sam_mask_decoder\.iou_prediction_head\.layers\.(\d+)\..*"),
        "iou_head_hidden_dim": int(sd[dec + "iou_prediction_head.layers.0.weight"].shape[0]),
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": STABILITY["delta"],
        "dynamic_multimask_stability_thresh": STABILITY["thresh"],
    }
    return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=mask)


def prepare(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack the prompt encoder's four point embeddings (labels 0..3, ``(1, C)`` each) into the
    one ``(4, C)`` table ``Sam2PromptEncoder.point_embed`` holds."""
    prefix = "sam_prompt_encoder.point_embeddings."
    keys = sorted((k for k in sd if k.startswith(prefix)), key=lambda k: int(k.split(".")[2]))
    expected = [f"{prefix}{i}.weight" for i in range(4)]
    if keys != expected:
        raise InvalidWeightsError(
            f"official SAM 2.1 checkpoint: expected the point embeddings {', '.join(expected)}, "
            f"got {', '.join(keys) or 'none'}"
        )
    out = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    out[prefix + "stacked"] = torch.cat([sd[k] for k in expected], dim=0)
    return out


_TB = r"image_encoder\.trunk\.blocks\.(\d+)\."
_HF_TB = r"vision_encoder.backbone.blocks.\1."
_TW = r"sam_mask_decoder\.transformer\."
_HF_TW = "mask_decoder.transformer."
_HF_FINAL = _HF_TW + "final_attn_token_to_image."
_ATTN = r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
_MLP3 = (
    r"sam_mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)"
)

RULES: tuple[Rule, ...] = (
    # Hiera trunk: windowed position embedding, patch embedding, multiscale blocks
    one(r"image_encoder\.trunk\.(pos_embed|pos_embed_window)", r"vision_encoder.backbone.\1"),
    one(
        r"image_encoder\.trunk\.patch_embed\.proj\.(.*)",
        r"vision_encoder.backbone.patch_embed.projection.\1",
    ),
    one(_TB + r"norm([12])\.(.*)", _HF_TB + r"layer_norm\2.\3"),
    one(_TB + r"attn\.(qkv|proj)\.(.*)", _HF_TB + r"attn.\2.\3"),
    one(_TB + r"mlp\.layers\.0\.(.*)", _HF_TB + r"mlp.proj_in.\2"),
    one(_TB + r"mlp\.layers\.1\.(.*)", _HF_TB + r"mlp.proj_out.\2"),
    one(_TB + r"proj\.(.*)", _HF_TB + r"proj.\2"),
    # FPN neck (the sine position encoding has no tensors)
    one(r"image_encoder\.neck\.convs\.(\d+)\.conv\.(.*)", r"vision_encoder.neck.convs.\1.\2"),
    # added to the lowest-resolution features of a frame with no memory: every single image
    one(r"no_mem_embed", "no_memory_embedding"),
    # prompt encoder; its random Fourier matrix also encodes the image grid (two places)
    Rule(
        r"sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
        (
            "shared_image_embedding.positional_embedding",
            "prompt_encoder.shared_embedding.positional_embedding",
        ),
    ),
    one(r"sam_prompt_encoder\.point_embeddings\.stacked", "prompt_encoder.point_embed.weight"),
    one(r"sam_prompt_encoder\.(not_a_point_embed|no_mask_embed)\.(.*)", r"prompt_encoder.\1.\2"),
    one(r"sam_prompt_encoder\.mask_downscaling\.0\.(.*)", r"prompt_encoder.mask_embed.conv1.\1"),
    one(
        r"sam_prompt_encoder\.mask_downscaling\.1\.(.*)",
        r"prompt_encoder.mask_embed.layer_norm1.\1",
    ),
    one(r"sam_prompt_encoder\.mask_downscaling\.3\.(.*)", r"prompt_encoder.mask_embed.conv2.\1"),
    one(
        r"sam_prompt_encoder\.mask_downscaling\.4\.(.*)",
        r"prompt_encoder.mask_embed.layer_norm2.\1",
    ),
    one(r"sam_prompt_encoder\.mask_downscaling\.6\.(.*)", r"prompt_encoder.mask_embed.conv3.\1"),
    # mask decoder: the two-way transformer
    one(
        _TW + r"layers\.(\d+)\." + _ATTN + r"\.([qkv]_proj)\.(.*)",
        _HF_TW + r"layers.\1.\2.\3.\4",
    ),
    one(_TW + r"layers\.(\d+)\." + _ATTN + r"\.out_proj\.(.*)", _HF_TW + r"layers.\1.\2.o_proj.\3"),
    one(_TW + r"layers\.(\d+)\.norm([1-4])\.(.*)", _HF_TW + r"layers.\1.layer_norm\2.\3"),
    one(_TW + r"layers\.(\d+)\.mlp\.layers\.0\.(.*)", _HF_TW + r"layers.\1.mlp.proj_in.\2"),
    one(_TW + r"layers\.(\d+)\.mlp\.layers\.1\.(.*)", _HF_TW + r"layers.\1.mlp.proj_out.\2"),
    one(_TW + r"final_attn_token_to_image\.([qkv]_proj)\.(.*)", _HF_FINAL + r"\1.\2"),
    one(_TW + r"final_attn_token_to_image\.out_proj\.(.*)", _HF_FINAL + r"o_proj.\1"),
    one(_TW + r"norm_final_attn\.(.*)", _HF_TW + r"layer_norm_final_attn.\1"),
    # mask decoder: output tokens, high-resolution feature projections, upscaling, 3-layer MLPs
    one(r"sam_mask_decoder\.(iou_token|mask_tokens|obj_score_token)\.(.*)", r"mask_decoder.\1.\2"),
    one(r"sam_mask_decoder\.(conv_s[01])\.(.*)", r"mask_decoder.\1.\2"),
    one(r"sam_mask_decoder\.output_upscaling\.0\.(.*)", r"mask_decoder.upscale_conv1.\1"),
    one(r"sam_mask_decoder\.output_upscaling\.1\.(.*)", r"mask_decoder.upscale_layer_norm.\1"),
    one(r"sam_mask_decoder\.output_upscaling\.3\.(.*)", r"mask_decoder.upscale_conv2.\1"),
    one(_MLP3 + r"\.layers\.0\.(.*)", r"mask_decoder.\1.proj_in.\2"),
    one(_MLP3 + r"\.layers\.1\.(.*)", r"mask_decoder.\1.layers.0.\2"),
    one(_MLP3 + r"\.layers\.2\.(.*)", r"mask_decoder.\1.proj_out.\2"),
)

_VIDEO = "belongs to the video model (Sam2VideoModel, SAM2VideoPredictor), not the image model"
DROPPED: tuple[tuple[str, str], ...] = (
    (r"memory_attention\..*", f"memory attention (a frame attends to past memories): {_VIDEO}"),
    (r"memory_encoder\..*", f"memory encoder (a frame and its mask become a memory): {_VIDEO}"),
    (r"maskmem_tpos_enc", f"temporal position encoding of the memories: {_VIDEO}"),
    (r"no_mem_pos_enc", f"position encoding of the no-memory token: {_VIDEO}"),
    (r"no_obj_ptr", f"object pointer of frames where the object is absent: {_VIDEO}"),
    (r"no_obj_embed_spatial", f"memory embedding of frames without the object: {_VIDEO}"),
    (r"obj_ptr_proj\..*", f"the decoder's output token -> an object pointer: {_VIDEO}"),
    (r"obj_ptr_tpos_proj\..*", f"temporal position encoding of object pointers: {_VIDEO}"),
    (r"mask_downsample\..*", f"downsamples a mask given as a frame's own output: {_VIDEO}"),
)


def processor_config() -> dict[str, Any]:
    """``preprocessor_config.json`` for transformers' ``Sam2ImageProcessor``: the official
    ``SAM2Transforms`` (to [0, 1], resize to 1024 x 1024 without keeping the aspect ratio,
    bilinear, ImageNet mean and std; no padding)."""
    return {
        "image_processor_type": "Sam2ImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "resample": 2,  # bilinear
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "mask_size": {"height": IMAGE_SIZE // 4, "width": IMAGE_SIZE // 4},
    }


SAM2 = OfficialFamily(
    "sam2",
    "Sam2Model",
    detect,
    config,
    RULES,
    processor_config,
    dropped=DROPPED,
    prepare=prepare,
)

"""A tiny SAM 2 video model built offline from a config (random weights, 128 x 128 input), saved
as a ``Sam2VideoModel`` folder with the official preprocessing settings at its size.

Features are 128 wide and memories 64 (``Sam2VideoModel``'s memory attention reads 64-wide
memories, and it stacks object pointers right only when they are split into several memory-wide
tokens: features wider than memories, as in every official size); three memories and four
object pointers, so that the memory bound shows within a few frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from grounded_seg.official.sam2 import processor_config

SIDE = 128  # the tiny model's input side (the official models: 1024)
NUM_MASKMEM = 3
MAX_POINTERS = 4
OBJECT_BIAS = 5.0


def tiny_sam2_video_config():
    from transformers import Sam2VideoConfig

    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": 8,
        "image_size": [SIDE, SIDE],
        "blocks_per_stage": [1, 1, 2, 1],
        "embed_dim_per_stage": [8, 16, 32, 64],
        "num_attention_heads_per_stage": [1, 1, 2, 2],
        "window_size_per_stage": [4, 4, 4, 2],
        "global_attention_blocks": [3],
        "window_positional_embedding_background_size": [4, 4],
    }
    vision = {
        "model_type": "sam2_vision_model",
        "backbone_config": backbone,
        "backbone_channel_list": [64, 32, 16, 8],
        "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]],
        "fpn_hidden_size": 128,
    }
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": 128, "image_size": SIDE, "mask_input_channels": 8},
        mask_decoder_config={
            "hidden_size": 128,
            "mlp_dim": 64,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
        image_size=SIDE,
        num_maskmem=NUM_MASKMEM,
        max_object_pointers_in_encoder=MAX_POINTERS,
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[SIDE // 16, SIDE // 16],
        memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64,
        memory_fuser_num_layers=1,
    )


def save_tiny_sam2_video(folder: Path) -> Path:
    """The tiny video model (every parameter perturbed, so nothing sits at its zero init; the
    object score raised by ``OBJECT_BIAS``) and the official preprocessing at ``SIDE``."""
    from transformers import Sam2VideoModel

    torch.manual_seed(0)
    model = Sam2VideoModel(tiny_sam2_video_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        # objects judged present (else every mask is the no-object fill and proves nothing)
        model.mask_decoder.pred_obj_score_head.proj_out.bias.add_(OBJECT_BIAS)
    model.save_pretrained(folder)
    config = processor_config()
    config["size"] = {"height": SIDE, "width": SIDE}
    config["mask_size"] = {"height": SIDE // 4, "width": SIDE // 4}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return folder

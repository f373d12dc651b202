"""A tiny SAM 2 built offline from a config (random weights, 128 x 128 input), saved with the
official preprocessing settings: ``load_segmenter`` loads it as a ``Sam2Segmenter``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from grounded_seg.official.sam2 import processor_config

SIDE = 128  # the tiny model's input side (the official models: 1024)


def tiny_sam2_config():
    from transformers import Sam2Config

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
        "backbone_config": backbone,
        "backbone_channel_list": [64, 32, 16, 8],
        "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]],
        "fpn_hidden_size": 32,
    }
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": 32, "image_size": SIDE, "mask_input_channels": 8},
        mask_decoder_config={
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
    )


def save_tiny_sam2(folder: Path, side: int = SIDE) -> Path:
    """A 0.12M-parameter SAM 2 (every parameter perturbed, so nothing sits at its zero init)
    and the official preprocessing at ``side``."""
    from transformers import Sam2Model

    torch.manual_seed(0)
    model = Sam2Model(tiny_sam2_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(folder)
    config = processor_config()
    config["size"] = {"height": side, "width": side}
    config["mask_size"] = {"height": side // 4, "width": side // 4}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return folder

"""A tiny SAM-HQ built offline from a config (random, perturbed weights, 256 x 256 input) with
SAM's image processor: ``load_segmenter`` loads it as a ``SamHQSegmenter``."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_sam_hq_config():
    """tests/tiny_models.py's tiny SAM as a SAM-HQ, with three ViT blocks of which two attend
    globally (1 and 2): the HQ path must read the first of them."""
    from transformers import SamHQConfig

    return SamHQConfig(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=256,
            patch_size=16,
            output_channels=32,
            global_attn_indexes=[1, 2],
            window_size=4,
            mlp_dim=64,
            num_pos_feats=16,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=256, patch_size=16),
        mask_decoder_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=64,
            iou_head_hidden_dim=32,
            vit_dim=32,
        ),
    )


def save_tiny_sam_hq(folder: Path, seed: int = 0) -> Path:
    """A 0.5M-parameter SAM-HQ at 256 x 256 (16 x 16 embedding, 64 x 64 low-res masks); every
    parameter perturbed so that no HQ block is the identity or zero."""
    from transformers import SamHQModel, SamImageProcessorPil

    torch.manual_seed(seed)
    model = SamHQModel(tiny_sam_hq_config()).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(folder)
    SamImageProcessorPil(
        size={"longest_edge": 256}, pad_size={"height": 256, "width": 256}
    ).save_pretrained(folder)
    return folder

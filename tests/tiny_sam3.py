"""A tiny SAM 3 (``transformers.Sam3Model``) built offline from a config, saved in the Hugging
Face format with an offline CLIP BPE tokenizer and a ``preprocessor_config.json``.

Nothing here downloads anything. The tokenizer is the library's offline byte-level BPE (see
``tests/tiny_clip.py``): ``vocab.json`` and ``merges.txt`` in the model folder, where the real
``facebook/sam3`` keeps its own. The image processor's settings are written as JSON, not through
``Sam3ImageProcessor`` (which needs torchvision).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from grounded_seg.shapes.clip_tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    build_vocab_and_merges,
    write_clip_tokenizer,
)

IMAGE_SIZE = 56  # pixels, square: 4 x 4 patches of 14
MASK_SIZE = 16  # the mask head's resolution (the first FPN level: 4 x the patch grid)
NUM_QUERIES = 8
TEXT_LEN = 32  # SAM 3 pads every text to 32 tokens


def tiny_sam3_config():
    """A ~260k-parameter Sam3Config: width 32, one or two layers per part, 8 queries."""
    from transformers import Sam3Config, Sam3VisionConfig, Sam3ViTConfig

    vocab, _ = build_vocab_and_merges()
    vit = Sam3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=14,
        window_size=2,
        global_attn_indexes=[1],
        pretrain_image_size=28,
    )
    side = IMAGE_SIZE // 14
    vision = Sam3VisionConfig(
        backbone_config=vit,
        fpn_hidden_size=32,
        backbone_feature_sizes=[[4 * side] * 2, [2 * side] * 2, [side] * 2],
    )
    text = dict(
        model_type="clip_text_model",
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=TEXT_LEN,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    return Sam3Config(
        vision_config=vision,
        text_config=text,
        geometry_encoder_config=dict(num_layers=1, **small),
        detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=1, num_queries=NUM_QUERIES, **small),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )


def write_preprocessor_config(folder: Path, size: int = IMAGE_SIZE) -> None:
    """The ``preprocessor_config.json`` of a SAM 3 folder (square resize, mean = std = 0.5)."""
    settings = {
        "image_processor_type": "Sam3ImageProcessor",
        "size": {"height": size, "width": size},
        "mask_size": {"height": MASK_SIZE, "width": MASK_SIZE},
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
    }
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps(settings, indent=2))


def save_tiny_sam3(folder: Path, seed: int = 0, tokenizer: bool = True) -> Path:
    """A randomly initialised tiny Sam3Model, its preprocessor settings and (``tokenizer``) its
    CLIP tokenizer in ``folder``; ``Sam3Proposer.from_pretrained(folder)`` loads it offline."""
    from transformers import Sam3Model

    folder = Path(folder)
    torch.manual_seed(seed)
    Sam3Model(tiny_sam3_config()).eval().save_pretrained(folder)
    write_preprocessor_config(folder)
    if tokenizer:
        write_clip_tokenizer(folder)
    return folder

"""A tiny CLIP built offline from a config, saved in the Hugging Face format.

Nothing here downloads anything. The tokenizer is the library's offline byte-level BPE
(:mod:`grounded_seg.shapes.clip_tokenizer`): CLIP's 256 byte-unicode characters, each also with
the ``</w>`` end-of-word suffix, merges that make each word of the shapes world and of the CLIP
route's texts one token, then ``<|startoftext|>`` and ``<|endoftext|>`` as the last two ids.
"""

from __future__ import annotations

from pathlib import Path

import torch

from grounded_seg.shapes.clip_tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    MERGED_WORDS,
    build_vocab_and_merges,
    bytes_to_unicode,
    write_clip_tokenizer,
)

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "IMAGE_SIZE",
    "MAX_TEXT_LEN",
    "MERGED_WORDS",
    "build_vocab_and_merges",
    "bytes_to_unicode",
    "save_tiny_clip",
    "tiny_clip_config",
    "write_clip_tokenizer",
]

IMAGE_SIZE = 32  # pixels, square; 4 x 4 patches of 8 pixels
MAX_TEXT_LEN = 32  # tokens, <|startoftext|> and <|endoftext|> included


def tiny_clip_config(vocab_size: int | None = None):
    """A 62k-parameter CLIP: 2-layer text and vision towers of width 32, patch 8, 32 x 32 pixels."""
    from transformers import CLIPConfig

    vocab, _ = build_vocab_and_merges()
    text = dict(
        vocab_size=vocab_size or len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TEXT_LEN,
        projection_dim=32,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
        projection_dim=32,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny CLIP, its tokenizer and image processor (side 32) in ``folder``.

    ``AutoProcessor``, ``AutoTokenizer`` and ``AutoImageProcessor`` load it offline.
    """
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    folder = Path(folder)
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config()).eval()
    model.save_pretrained(folder)
    tokenizer = write_clip_tokenizer(folder)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder

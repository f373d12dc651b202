"""Tiny Grounding DINO and SAM built offline from configs, saved in the Hugging Face format.

Nothing here downloads anything. The generated WordPiece vocabulary keeps the ids Grounding DINO
hard-codes: 101 ``[CLS]``, 102 ``[SEP]``, 1012 ``"."`` and 1029 ``"?"``.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

WORDS = (
    "a an the and of on in with is another hitting running girl boy man woman person cat cats dog "
    "dogs black white red green blue yellow purple car bus tree plant potted pot chair table "
    "mountain panda pandas lion ear boat head up"
).split()


def write_vocab(path: Path) -> Path:
    """Write a ``vocab.txt`` of 1100 entries with Grounding DINO's special ids in place."""
    vocab = [f"[unused{i}]" for i in range(1100)]
    vocab[0], vocab[100], vocab[101], vocab[102], vocab[103] = (
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    )
    vocab[1012], vocab[1029] = ".", "?"
    pieces = list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
    pieces += [*string.digits, ",", "-", "!", "'", "(", ")"]
    for i, token in enumerate(pieces + WORDS):
        vocab[200 + i] = token
    path.write_text("\n".join(vocab) + "\n")
    return path


def make_tokenizer(vocab_file: Path):
    from transformers import BertTokenizer

    return BertTokenizer(vocab=str(vocab_file), do_lower_case=True)


def tiny_gdino_config(vocab_size: int = 1100, num_queries: int = 20):
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    swin = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        image_size=64,
        out_indices=[2, 3, 4],
        out_features=["stage2", "stage3", "stage4"],
    )
    bert = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    return GroundingDinoConfig(
        backbone_config=swin,
        text_config=bert,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,  # 1 breaks tied bbox heads in transformers 5
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=num_queries,
        encoder_n_points=2,
        decoder_n_points=2,
    )


def save_tiny_gdino(folder: Path, vocab_file: Path, seed: int = 0, num_queries: int = 20) -> Path:
    """A 0.5M-parameter Grounding DINO, its tokenizer and a small image processor (side 64)."""
    from transformers import GroundingDinoForObjectDetection, GroundingDinoImageProcessorPil

    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(tiny_gdino_config(num_queries=num_queries)).eval()
    model.save_pretrained(folder)
    make_tokenizer(vocab_file).save_pretrained(folder)
    GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(
        folder
    )
    return folder


def save_tiny_mm_gdino(
    folder: Path, vocab_file: Path, seed: int = 0, shortest_edge: int = 64
) -> Path:
    """The tiny Grounding DINO's sizes as an MM-Grounding-DINO (``mm-grounding-dino``), with its
    tokenizer and image processor (short side ``shortest_edge``; at 64 a square image's extra
    feature level is 1 x 1: one value per GroupNorm group of the tiny width, refused by torch)."""
    from transformers import (
        GroundingDinoImageProcessorPil,
        MMGroundingDinoConfig,
        MMGroundingDinoForObjectDetection,
    )

    fields = tiny_gdino_config().to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        fields.pop(key, None)
    torch.manual_seed(seed)
    model = MMGroundingDinoForObjectDetection(MMGroundingDinoConfig(**fields)).eval()
    with torch.no_grad():  # the contrastive head's bias and scale away from their init values
        for name, parameter in model.named_parameters():
            if "class_embed" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    model.save_pretrained(folder)
    make_tokenizer(vocab_file).save_pretrained(folder)
    size = {"shortest_edge": shortest_edge, "longest_edge": shortest_edge * 3 // 2}
    GroundingDinoImageProcessorPil(size=size).save_pretrained(folder)
    return folder


def tiny_sam_config():
    from transformers import SamConfig

    return SamConfig(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=256,
            patch_size=16,
            output_channels=32,
            global_attn_indexes=[1],
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
        ),
    )


def save_tiny_sam(folder: Path, seed: int = 0) -> Path:
    """A 0.5M-parameter SAM working at 256 x 256 (16 x 16 embedding, 64 x 64 low-res masks)."""
    from transformers import SamImageProcessorPil, SamModel

    torch.manual_seed(seed)
    SamModel(tiny_sam_config()).eval().save_pretrained(folder)
    SamImageProcessorPil(
        size={"longest_edge": 256}, pad_size={"height": 256, "width": 256}
    ).save_pretrained(folder)
    return folder

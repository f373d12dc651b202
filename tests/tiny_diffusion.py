"""A tiny Stable Diffusion inpainting pipeline built offline from configs (random weights), saved
as a diffusers folder: for the mechanics of ``replace`` (which pixels change, the size), not for
pictures. The tokenizer is the library's offline CLIP BPE (see tests/tiny_clip.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from grounded_seg.shapes.clip_tokenizer import BOS_TOKEN, EOS_TOKEN, write_clip_tokenizer

WORDS = ("a", "wooden", "chair", "red", "circle")


def save_tiny_inpainter(folder: Path, seed: int = 0) -> Path:
    """A 32 px inpainting pipeline: UNet of widths 32/64 on 16 x 16 latents, a 2-level VAE."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = write_clip_tokenizer(folder / "tokenizer-source", WORDS)
    tokenizer.model_max_length = 77  # the pipeline pads prompts to it
    vocab = tokenizer.get_vocab()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab[BOS_TOKEN],
            eos_token_id=vocab[EOS_TOKEN], pad_token_id=vocab[EOS_TOKEN],
        )
    ).eval()  # fmt: skip
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=9,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=32,
    )  # fmt: skip
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)
    pipeline = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipeline.save_pretrained(folder / "inpainter")
    return folder / "inpainter"

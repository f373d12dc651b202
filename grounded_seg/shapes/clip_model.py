"""The shapes CLIP: its configuration, its preprocessing and the loss of one training step."""

from __future__ import annotations

from typing import Any

import torch

from ..clip import contrastive_loss, projected_features
from .clip_tokenizer import BOS_TOKEN, EOS_TOKEN, build_vocab_and_merges

MAX_TEXT_LEN = 32  # tokens, <|startoftext|> and <|endoftext|> included


def shapes_clip_config(
    image_size: int = 48,
    *,
    width: int = 128,
    layers: int = 4,
    patch_size: int = 8,
    text_width: int = 64,
    text_layers: int = 2,
    projection_dim: int = 64,
    heads: int = 4,
) -> Any:
    """A small ``CLIPConfig`` for the shapes world (vocabulary of :mod:`.clip_tokenizer`).

    The vision tower is a ViT of ``layers`` layers of width ``width`` over ``patch_size`` patches
    of ``image_size`` pixels; the text tower has ``text_layers`` layers of width ``text_width``;
    both project to ``projection_dim``. MLPs are 4x wide (as CLIP's); attention heads of the text
    tower: ``max(1, text_width // 32)``.
    """
    from transformers import CLIPConfig

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if width % heads:
        raise ValueError(f"width {width} is not a multiple of heads {heads}")
    vocab, _ = build_vocab_and_merges()
    text = dict(
        vocab_size=len(vocab),
        hidden_size=text_width,
        intermediate_size=4 * text_width,
        num_hidden_layers=text_layers,
        num_attention_heads=max(1, text_width // 32),
        max_position_embeddings=MAX_TEXT_LEN,
        projection_dim=projection_dim,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    vision = dict(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def image_processor_for(image_size: int) -> Any:
    """The route's preprocessing at ``image_size``: shortest edge resized, centre crop, CLIP's
    mean and std (``CLIPImageProcessorPil``, which needs no torchvision)."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )


def pairs_loss(
    model: Any, image_processor: Any, tokens: Any, pairs: tuple[list, list[int], list[list[int]]]
) -> torch.Tensor:
    """The loss of one step's :func:`~grounded_seg.shapes.clip_data.step_pairs`: the mean of
    :func:`grounded_seg.clip.contrastive_loss` over its batches, weighted by their pairs.
    ``tokens``: the tokenized :data:`~grounded_seg.shapes.clip_data.CAPTIONS`, on the model's
    device."""
    crops, captions, batches = pairs
    device = model.logit_scale.device
    pixels = image_processor(images=crops, return_tensors="pt")["pixel_values"]
    image_emb = projected_features(model.get_image_features(pixel_values=pixels.to(device)))
    text_emb = projected_features(
        model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
    )
    caption_index = torch.tensor(captions, device=device)
    total = sum(len(b) for b in batches)
    return sum(  # type: ignore[return-value]
        contrastive_loss(image_emb[b], text_emb[caption_index[b]], model.logit_scale)
        * (len(b) / total)
        for b in batches
    )

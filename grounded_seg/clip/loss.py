"""CLIP's symmetric contrastive loss (Lecture 1).

``N`` images and their ``N`` captions are encoded and projected into one joint space of ``D``
dimensions, both sides are L2-normalised, and

    logits = (I_e @ T_e.T) * exp(t)             # (N, N); row i: image i against every caption

where ``t`` is the learned log temperature scale (``CLIPModel.logit_scale``; OpenAI's CLIP starts
at ``t = log(1 / 0.07) = 2.659`` and clamps ``exp(t)`` at 100). The matching pairs are on the
diagonal, so the loss is the mean of the cross-entropy over rows (each image against all captions)
and over columns (each caption against all images), both with labels ``arange(N)``.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

MAX_LOGIT_SCALE = math.log(100.0)
"""Upper bound of ``logit_scale`` during training (the temperature scale ``exp`` of it <= 100)."""


def contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """CLIP's symmetric contrastive loss of ``N`` matching image-caption pairs.

    Args:
        image_emb: ``(N, D)`` projected image embeddings, not normalised (row ``i`` is image ``i``).
        text_emb: ``(N, D)`` projected caption embeddings, not normalised (row ``i`` is the caption
            of image ``i``). Both are L2-normalised here.
        logit_scale: the **log** of the temperature scale, exactly like ``CLIPModel.logit_scale``:
            the cosine similarities are multiplied by ``exp(logit_scale)`` (a float, or a tensor of
            one element, which stays in the autograd graph so it can be learned).

    Returns:
        A 0-dim tensor: ``(CE(logits, arange(N)) + CE(logits.T, arange(N))) / 2`` with
        ``logits = normalise(image_emb) @ normalise(text_emb).T * exp(logit_scale)``, in nats.
        It equals ``CLIPModel(..., return_loss=True).loss`` for the same embeddings. Two pairs
        whose captions are the same text are false negatives for these labels; keep them out of
        one batch (see :func:`caption_batches`).

    Raises:
        TypeError: an embedding is not a ``torch.Tensor``, or ``logit_scale`` is neither a real
            number nor a tensor.
        ValueError: an embedding is not 2-D, the shapes differ, ``N`` or ``D`` is 0, or
            ``logit_scale`` has more than one element.
    """
    for name, emb in (("image_emb", image_emb), ("text_emb", text_emb)):
        if not isinstance(emb, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor of shape (N, D), got {type(emb)}")
        if emb.ndim != 2:
            raise ValueError(f"{name}: expected shape (N, D), got {tuple(emb.shape)}")
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image_emb and text_emb: expected the same shape (N, D), got "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    n, d = image_emb.shape
    if n < 1 or d < 1:
        raise ValueError(f"image_emb: expected shape (N, D) with N, D >= 1, got {(n, d)}")
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(
                f"logit_scale: expected one value, got a tensor of shape {tuple(logit_scale.shape)}"
            )
        scale = logit_scale.reshape(()).exp().to(image_emb.device)
    elif isinstance(logit_scale, (int, float)) and not isinstance(logit_scale, bool):
        scale = math.exp(float(logit_scale))
    else:
        raise TypeError(f"logit_scale: expected a float or a tensor, got {type(logit_scale)}")
    image = functional.normalize(image_emb, dim=-1)
    text = functional.normalize(text_emb.to(image.device, image.dtype), dim=-1)
    logits = image @ text.T * scale  # (N, N): row i = image i against every caption
    labels = torch.arange(n, device=logits.device)
    return (
        functional.cross_entropy(logits, labels) + functional.cross_entropy(logits.T, labels)
    ) / 2


# --------------------------------------------------------------------------- the data

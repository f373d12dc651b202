"""Optimisers the recipes share."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["adamw_decaying_matrices"]


def adamw_decaying_matrices(
    model: torch.nn.Module, learning_rate: float, weight_decay: float, **adamw: Any
) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not on gains, biases or CLIP's
    ``logit_scale``), as CLIP trains. Two groups, in parameter order: the trainable parameters of
    2 or more dimensions, then the other trainable ones. ``adamw``: further AdamW arguments
    (``betas``, ``eps``)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=learning_rate,
        **adamw,
    )

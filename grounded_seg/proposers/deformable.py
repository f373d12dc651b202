"""A faster pure-PyTorch kernel for Grounding DINO's multi-scale deformable attention.

transformers marks ``MultiScaleDeformableAttention`` as a replaceable kernel (its forward can be
swapped for a compiled one from a kernel hub; no hub is reachable here, and on the CPU there is no
compiled kernel). Its pure-PyTorch path samples every level with ``grid_sample`` into a
``(B*heads, C, queries, points)`` tensor, stacks the levels into one ``(B*heads, C, queries,
levels*points)`` tensor and multiplies it by the attention weights before summing: on 800 x 1200
images that is ~330 MB written and read three times per encoder layer.

:class:`PointMajorDeformableAttention` computes the same sum with the sampling grid laid out
points-major, ``(B*heads, points, queries, 2)``, so each level's samples come back as
``(B*heads, C, points, queries)`` and the weighting is ``points`` fused multiply-adds on
contiguous ``(B*heads, C, queries)`` slices, accumulated in place: no stack, no product tensor.
Same inputs, same outputs up to float32 summation order (max abs difference ~5e-7 on unit-scale
values); measured in ``benchmarks/vs_reference.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class PointMajorDeformableAttention(nn.Module):
    """Drop-in for transformers' ``MultiScaleDeformableAttention`` (same forward signature).

    ``value``: ``(B, sum(H_l * W_l), heads, C)``; ``sampling_locations``: ``(B, queries, heads,
    levels, points, 2)`` as (x, y) in [0, 1] of each level's map; ``attention_weights``: ``(B,
    queries, heads, levels, points)``. Returns ``(B, queries, heads * C)``. Points outside a map
    sample zeros (bilinear, ``align_corners=False``), as ``grid_sample`` does.
    """

    def forward(
        self,
        value: torch.Tensor,
        value_spatial_shapes: torch.Tensor,
        value_spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        im2col_step: int,
    ) -> torch.Tensor:
        batch, _, heads, channels = value.shape
        queries = sampling_locations.shape[1]
        points = sampling_locations.shape[4]
        levels = value.split([h * w for h, w in value_spatial_shapes_list], dim=1)
        # (B, Q, heads, L, P, 2) -> (B*heads, L, P, Q, 2); weights -> (B*heads, L, P, Q)
        grids = (2 * sampling_locations - 1).permute(0, 2, 3, 4, 1, 5).flatten(0, 1)
        weights = attention_weights.permute(0, 2, 3, 4, 1).flatten(0, 1)
        output = None
        for level, (height, width) in enumerate(value_spatial_shapes_list):
            level_value = (
                levels[level]
                .flatten(2)
                .transpose(1, 2)
                .reshape(batch * heads, channels, height, width)
            )
            sampled = functional.grid_sample(  # (B*heads, C, P, Q)
                level_value,
                grids[:, level],
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )
            level_weights = weights[:, level, :, None]  # (B*heads, P, 1, Q)
            for point in range(points):
                if output is None:
                    output = sampled[:, :, point] * level_weights[:, point]
                else:
                    output = output.addcmul_(sampled[:, :, point], level_weights[:, point])
        assert output is not None
        return output.view(batch, heads * channels, queries).transpose(1, 2).contiguous()


def use_point_major_deformable_attention(model: nn.Module) -> int:
    """Replace every transformers ``MultiScaleDeformableAttention`` kernel module in ``model``
    (Grounding DINO's encoder and decoder layers) with :class:`PointMajorDeformableAttention`.

    Returns how many were replaced. Models without such modules are left as they are.
    """
    replaced = 0
    for module in list(model.modules()):
        kernel = getattr(module, "attn", None)
        if type(kernel).__name__ == "MultiScaleDeformableAttention":
            module.attn = PointMajorDeformableAttention()
            replaced += 1
    return replaced

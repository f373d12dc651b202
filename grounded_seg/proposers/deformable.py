"""Grounding DINO's multi-scale deformable attention: a leaner kernel, float32 under autocast.

Two things are installed on every deformable-attention kernel module of a Grounding DINO model
(:func:`install_deformable_sampler`; parameter-free modules, so the state dict is unchanged):

1. :class:`GatherDeformableAttention`, the same sum as transformers' pure-PyTorch
   ``MultiScaleDeformableAttention`` with a fraction of the memory traffic. transformers samples
   every level with ``grid_sample`` on channel-first maps (each channel of each tap a separate
   strided read) into a ``(B*heads, C, queries, levels*points)`` tensor, ~330 MB on an 800 x 1200
   image, then weights and sums it. Here the four bilinear corners of every tap become row indices
   into a channel-last table with their combined weights, and one ``embedding_bag`` sums the
   ``levels * points * 4`` rows of each (query, head). Same outputs up to float32 rounding (as far
   from a float64 evaluation as transformers' kernel is: ~1.6e-5 on 800 x 1200 maps with
   unit-scale values). Grounding DINO Swin-T at 800 x 1200 on the 2-core CPU: the six enhancer
   kernels 1.92 s -> 0.40 s, the forward pass without the backbone 4.95 s -> 3.78 s.
2. :class:`Float32Sampling` around it: under bfloat16 autocast the sampling positions would be
   rounded to 8 significant bits before they become pixel indices (half a pixel off on a
   150-pixel-wide level; with transformers' kernel, torch's CPU bfloat16 ``grid_sample`` also
   returned nan or errors above 1 on unit-variance maps, the enhancer overflowed and no box
   survived). The floating inputs are cast to float32, the kernel runs with autocast off, and
   the output is cast back to the caller's dtype; in float32 it only passes the call through.
   The projections around the kernel (value, offsets, weights, output) keep the fast path's
   precision.

Before installing, the replaced class is checked (:data:`EQUIVALENT`: a fingerprint of the
source of its ``forward`` and a float64 self-check of outputs and gradients, taps on pixel
centres and the zero border's kinks included); a class that fails keeps transformers' kernel
(no float32 wrapper either), and one INFO line says why (see ``grounded_seg._equivalents``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from .._equivalents import Equivalent, compare
from ._install import replace_modules

SAMPLER_CLASS_NAME = "MultiScaleDeformableAttention"
# the source of the stock kernel's forward (grounded_seg._equivalents.fingerprint) where the
# gather was checked equal to it; MM-Grounding-DINO's copy has the same source
VERIFIED_FINGERPRINTS = {"c5c50fbfe1bd0fb6": "transformers 5.20.0, 5.25.0"}
GATHER_DEVICES = frozenset({"cpu", "cuda"})  # device types with embedding_bag


class GatherDeformableAttention(nn.Module):
    """Drop-in for transformers' ``MultiScaleDeformableAttention`` (same forward signature).

    ``value``: ``(B, sum(H_l * W_l), heads, C)``; ``sampling_locations``: ``(B, queries, heads,
    levels, points, 2)`` as (x, y) in [0, 1] of each level's map; ``attention_weights``: ``(B,
    queries, heads, levels, points)``. Returns ``(B, queries, heads * C)``. Points outside a map
    sample zeros (bilinear, ``align_corners=False``), as ``grid_sample`` does.

    Every (query, head) output is a weighted sum of ``levels * points * 4`` value rows: the four
    bilinear corners of each sampling point, weighted by the corner's bilinear weight times the
    point's attention weight. Those row indices and weights are computed once, and a single
    ``embedding_bag(mode="sum")`` gathers and sums the ``C``-channel rows, instead of one
    channel-strided ``grid_sample`` per level and a weighted sum over points. The value maps get a
    one-pixel zero border (and a zero tail) so that corners outside a map read zeros and need no
    masks: coordinates are clamped to that border first, where both corners of an outside point
    are zeros or carry weight 0. Differentiable in all three float inputs (``floor`` is not, as in
    ``grid_sample``), with ``grid_sample``'s one-sided derivatives at the border's kinks.

    ``fallback`` (the module it replaces) runs instead on devices without ``embedding_bag``
    (MPS, as of torch 2.13); the CPU and CUDA take the gather.
    """

    def __init__(self, fallback: nn.Module | None = None) -> None:
        super().__init__()
        self.fallback = fallback

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
        if value.device.type not in GATHER_DEVICES:
            if self.fallback is None:
                raise ValueError(
                    f"expected a tensor on one of {sorted(GATHER_DEVICES)} (or a fallback kernel), "
                    f"got {value.device.type}"
                )
            return self.fallback(
                value,
                value_spatial_shapes,
                value_spatial_shapes_list,
                level_start_index,
                sampling_locations,
                attention_weights,
                im2col_step,
            )
        batch, _, heads, channels = value.shape
        queries, levels, points = sampling_locations.shape[1], *sampling_locations.shape[3:5]
        shapes = [(int(h), int(w)) for h, w in value_spatial_shapes_list]
        if len(shapes) != levels or value.shape[1] != sum(h * w for h, w in shapes):
            raise ValueError(
                f"expected {levels} level shapes covering {value.shape[1]} value rows, got {shapes}"
            )
        table, first_row, padded_width = _padded_table(value, shapes)
        rows = table.shape[2]
        index_dtype = torch.int32 if batch * heads * rows < 2**31 else torch.int64
        device, dtype = value.device, sampling_locations.dtype

        def per_point(numbers: list[int], kind: torch.dtype) -> torch.Tensor:  # (levels*points,)
            return torch.tensor(numbers, device=device, dtype=kind).repeat_interleave(points)

        width = per_point([w for _, w in shapes], dtype)
        height = per_point([h for h, _ in shapes], dtype)
        taps = levels * points
        grid = 2 * sampling_locations.reshape(batch, queries, heads, taps, 2) - 1
        # grid_sample's unnormalisation, then limited to the zero border [-1, size]
        x = _to_border(((grid[..., 0] + 1) * width).sub_(1).div_(2), width)
        y = _to_border(((grid[..., 1] + 1) * height).sub_(1).div_(2), height)
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0  # (B, Q, heads, taps)
        row_width = per_point(padded_width, index_dtype)
        # row of the top-left corner in the (B * heads * rows, C) table
        bag_offset = torch.arange(batch * heads, device=device, dtype=index_dtype) * rows
        top_left = (
            y0.to(index_dtype) * row_width
            + x0.to(index_dtype)
            + per_point(first_row, index_dtype)
            + bag_offset.view(batch, 1, heads, 1)
        )
        index = torch.stack(
            [top_left, top_left + 1, top_left + row_width, top_left + row_width + 1], 3
        )  # (B, Q, heads, 4, taps)
        weight = attention_weights.reshape(batch, queries, heads, taps)
        lower = fy * weight
        upper = weight - lower
        corner_weights = torch.stack(
            [upper * (1 - fx), upper * fx, lower * (1 - fx), lower * fx], 3
        )
        out = functional.embedding_bag(
            index.view(batch * queries * heads, 4 * taps),
            table.reshape(-1, channels),
            per_sample_weights=corner_weights.view(batch * queries * heads, 4 * taps).to(
                table.dtype
            ),
            mode="sum",
        )
        return out.view(batch, queries, heads * channels)


def _to_border(position: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Pixel ``position`` limited to ``[-1, size]`` (the zero border), with ``grid_sample``'s
    derivative: it passes for ``-1 <= position < size`` and is 0 elsewhere.

    The bounds are kinks of bilinear sampling with zero padding, and many taps sit on them
    exactly (at Grounding DINO's initialisation the offset weights are 0, reference points are
    pixel centres and offsets integers). On -1, the centre of the border pixel before the map,
    ``grid_sample`` gives the one-sided derivative into the map: the gather does too when the
    gradient passes there. On ``size`` both corners are outside for ``grid_sample`` (derivative
    0), but the gather's lower corner row is the next level's memory (weight 0, any value), so
    the gradient must stop there.

    With gradients, ``torch.where`` says that exactly: ``clamp``'s gradient at its bound
    changed in torch 2.14 (1 before, 0 since, which took the derivative away from every tap on
    -1) and ``torch.minimum`` halves it at a tie. Without gradients, the in-place ``clamp``
    (twice as fast; ``position`` is a temporary). The values are the same, NaN included."""
    if torch.is_grad_enabled() and position.requires_grad:
        position = torch.where(position < -1, -1.0, position)
        return torch.where(position >= size, size, position)
    return torch.minimum(position.clamp_(min=-1.0), size)


def _padded_table(
    value: torch.Tensor, shapes: list[tuple[int, int]]
) -> tuple[torch.Tensor, list[int], list[int]]:
    """``value`` ``(B, N, heads, C)`` as ``(B, heads, rows, C)``: each level's ``(h, w)`` map with
    a one-pixel zero border, levels one after the other, then a zero tail one bordered row long
    (so a corner one row below the last level is still inside). Returns the table, the row of
    each level's pixel (0, 0) and each level's bordered width ``w + 2``."""
    batch, _, heads, channels = value.shape
    parts, first_row, padded_width = [], [], []
    start = 0
    for part, (height, width) in zip(
        value.split([h * w for h, w in shapes], 1), shapes, strict=True
    ):
        level = part.view(batch, height, width, heads, channels).permute(0, 3, 1, 2, 4)
        parts.append(functional.pad(level, (0, 0, 1, 1, 1, 1)).flatten(2, 3))
        first_row.append(start + (width + 2) + 1)
        padded_width.append(width + 2)
        start += (height + 2) * (width + 2)
    parts.append(value.new_zeros(batch, heads, max(padded_width) + 2, channels))
    return torch.cat(parts, 2), first_row, padded_width


class Float32Sampling(torch.nn.Module):
    """Run ``inner`` (a parameter-free sampling module) in float32; return the input dtype.

    ``inner`` is called with the same positional and keyword arguments; every floating-point
    tensor among them is cast to float32 first and autocast is off inside. The output has the
    dtype of the first floating tensor argument (the value maps).
    """

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        if any(True for _ in inner.parameters()) or any(True for _ in inner.buffers()):
            raise ValueError(
                f"expected a parameter-free sampling module, got {type(inner).__name__} with "
                "parameters or buffers"
            )
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        dtype = next((a.dtype for a in (*args, *kwargs.values()) if _is_float(a)), torch.float32)
        args = tuple(a.float() if _is_float(a) else a for a in args)
        kwargs = {k: v.float() if _is_float(v) else v for k, v in kwargs.items()}
        device = next((a.device.type for a in (*args, *kwargs.values()) if _is_float(a)), "cpu")
        with torch.autocast(device, enabled=False):
            return self.inner(*args, **kwargs).to(dtype)


def _is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _self_check(stock: nn.Module) -> str | None:
    """The stock kernel and the gather in float64 on two small levels (power-of-two sizes, so
    that pixel centres and edges are exact): random taps in and around the maps, and taps on
    the pixel grid, on pixel edges and on the centres of the zero border (where the bilinear
    weights have kinks). Outputs and the gradients of all three inputs within 1e-9."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 8), (2, 4)]
    heads, channels, queries, points = 2, 3, 8, 2
    f64 = torch.float64
    value = torch.randn(1, sum(h * w for h, w in shapes), heads, channels, generator=gen, dtype=f64)
    locations = torch.rand(1, queries, heads, len(shapes), points, 2, generator=gen, dtype=f64)
    locations = 1.4 * locations - 0.2
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=f64).view(len(shapes), 1, 2)
    pixels = torch.randint(-1, 9, (4, heads, len(shapes), points, 2), generator=gen).to(f64)
    pixels = torch.minimum(pixels, sizes)  # -1 .. size: the border's centres included
    locations[0, :4] = (pixels + 0.5) / sizes  # on pixel centres
    locations[0, 4:6] = pixels[:2] / sizes  # on pixel edges
    weights = torch.rand(1, queries, heads, len(shapes), points, generator=gen, dtype=f64)
    spatial = torch.tensor(shapes)
    starts = torch.tensor([0, shapes[0][0] * shapes[0][1]])
    probe = torch.randn(1, queries, heads * channels, generator=gen, dtype=f64)
    answers = []
    for kernel in (stock, GatherDeformableAttention()):
        inputs = [t.clone().requires_grad_(True) for t in (value, locations, weights)]
        with torch.enable_grad():
            out = kernel(inputs[0], spatial, shapes, starts, inputs[1], inputs[2], 64)
            (out * probe).sum().backward()
        answers.append((out, *(t.grad for t in inputs)))
    return compare(answers[1], answers[0], rtol=1e-9)


EQUIVALENT = Equivalent(
    name="deformable-attention gather (grounded_seg.proposers.deformable)",
    members=("forward",),
    verified=VERIFIED_FINGERPRINTS,
    self_check=_self_check,
)


def install_deformable_sampler(model: torch.nn.Module) -> int:
    """Replace every transformers ``MultiScaleDeformableAttention`` kernel module of ``model``
    with ``Float32Sampling(GatherDeformableAttention(fallback=<the replaced kernel>))``, if the
    kernel's class passes :data:`EQUIVALENT`'s checks (else transformers' kernels stay, and one
    INFO line says why).

    Idempotent; the state dict is unchanged (the kernels hold no tensors). Returns how many
    kernels are installed after the call (12 for Grounding DINO Swin-T: 6 enhancer layers,
    6 decoder layers; 0 after a fallback).
    """
    return replace_modules(
        model,
        SAMPLER_CLASS_NAME,
        Float32Sampling,
        lambda kernel: Float32Sampling(GatherDeformableAttention(fallback=kernel)),
        EQUIVALENT,
    )

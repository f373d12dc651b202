"""The point-major deformable-attention kernel computes what transformers' kernel computes,
and GroundingDinoProposer installs it (inside the float32 wrapper) on every layer."""

from __future__ import annotations

import pytest
import torch
from transformers import GroundingDinoForObjectDetection
from transformers.models.grounding_dino.modeling_grounding_dino import (
    MultiScaleDeformableAttention,
)

from grounded_seg.proposers.deformable import (
    PointMajorDeformableAttention,
    install_deformable_sampler,
)

from tiny_models import tiny_gdino_config


def _inputs(batch: int, queries: int, spread: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(23, 37), (12, 19), (6, 10), (3, 5)]  # odd sizes, as 800 x 1200 gives 13 x 19
    heads, channels, levels, points = 8, 32, len(shapes), 4
    total = sum(h * w for h, w in shapes)
    value = torch.randn(batch, total, heads, channels, generator=gen)
    # centred near 0.5; spread > 0.5 puts many points outside the maps (sampled as zeros)
    locations = 0.5 + spread * (
        torch.rand(batch, queries, heads, levels, points, 2, generator=gen) - 0.5
    )
    weights = torch.softmax(
        torch.randn(batch, queries, heads, levels * points, generator=gen), -1
    ).view(batch, queries, heads, levels, points)
    spatial = torch.tensor(shapes)
    starts = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]])
    return value, spatial, shapes, starts, locations, weights, 64


@pytest.mark.parametrize(("batch", "queries", "spread"), [(1, 300, 1.0), (2, 57, 1.6)])
def test_same_output_as_transformers_kernel(batch, queries, spread) -> None:
    args = _inputs(batch, queries, spread, seed=batch)
    expected = MultiScaleDeformableAttention()(*args)
    got = PointMajorDeformableAttention()(*args)
    assert got.shape == expected.shape == (batch, queries, 8 * 32)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)
    assert float(expected.abs().max()) > 0.5  # not a comparison of zeros


def test_gradients_match_transformers_kernel() -> None:
    """Fine-tuning goes through the same module: its gradients are the same too."""
    value, spatial, shapes, starts, locations, weights, step = _inputs(1, 40, 1.2, seed=3)
    grads = []
    for kernel in (MultiScaleDeformableAttention(), PointMajorDeformableAttention()):
        v = value.clone().requires_grad_(True)
        loc = locations.clone().requires_grad_(True)
        w = weights.clone().requires_grad_(True)
        kernel(v, spatial, shapes, starts, loc, w, step).square().sum().backward()
        grads.append((v.grad, loc.grad, w.grad))
    for ours, theirs in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_every_grounding_dino_kernel_is_replaced_and_outputs_agree() -> None:
    torch.manual_seed(0)
    config = tiny_gdino_config()
    model = GroundingDinoForObjectDetection(config).eval()
    pixels = torch.randn(1, 3, 64, 96)
    ids = torch.tensor([[101, 500, 600, 1012, 102]])  # [CLS] w w . [SEP]
    inputs = {"pixel_values": pixels, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        before = model(**inputs)
    replaced = install_deformable_sampler(model)
    assert replaced == config.encoder_layers + config.decoder_layers
    assert not any(isinstance(m, MultiScaleDeformableAttention) for m in model.modules())
    with torch.inference_mode():
        after = model(**inputs)
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(after.pred_boxes, before.pred_boxes, rtol=0, atol=1e-5)
    assert install_deformable_sampler(model) == replaced  # idempotent: nothing wrapped twice

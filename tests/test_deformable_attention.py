"""The gather (embedding_bag) deformable-attention kernel computes what transformers' kernel
computes, forward and backward, also at and beyond the maps' edges, and GroundingDinoProposer
installs it (inside the float32 wrapper) on every layer."""

from __future__ import annotations

import pytest
import torch
from transformers import GroundingDinoForObjectDetection
from transformers.models.grounding_dino.modeling_grounding_dino import (
    MultiScaleDeformableAttention,
)

from grounded_seg.proposers.deformable import (
    GatherDeformableAttention,
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
    got = GatherDeformableAttention()(*args)
    assert got.shape == expected.shape == (batch, queries, 8 * 32)
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-6)  # float32 rounding of positions
    assert float(expected.abs().max()) > 0.5  # not a comparison of zeros


def test_points_on_and_beyond_the_edges_sample_like_grid_sample() -> None:
    """Taps exactly on the border, half a pixel in, just outside and far outside every map: the
    zero border and the clamp must give grid_sample's zeros-padding answer, and a point that is
    entirely outside must contribute nothing."""
    value, spatial, shapes, starts, _, _, step = _inputs(1, 1, 1.0, seed=5)
    edge = torch.tensor([-3.0, -0.02, 0.0, 0.01, 0.5, 0.99, 1.0, 1.02, 4.0])
    xs, ys = torch.meshgrid(edge, edge, indexing="ij")
    queries = xs.numel()
    heads, levels, points = 8, len(shapes), 4
    locations = torch.stack([xs.flatten(), ys.flatten()], -1)  # (Q, 2)
    locations = locations.view(1, queries, 1, 1, 1, 2).expand(1, queries, heads, levels, points, 2)
    weights = torch.full((1, queries, heads, levels, points), 1.0 / (levels * points))
    args = (value, spatial, shapes, starts, locations.contiguous(), weights, step)
    expected = MultiScaleDeformableAttention()(*args)
    got = GatherDeformableAttention()(*args)
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-6)  # float32 rounding of positions
    outside = (xs.flatten().abs() > 2) | (ys.flatten().abs() > 2)  # -3 or 4 on an axis
    assert bool((got[0, outside] == 0).all())
    assert float(got[0, ~outside].abs().max()) > 0.1


def test_as_close_to_float64_as_transformers_kernel() -> None:
    """The kernels round differently; neither is further from the float64 answer."""
    args = _inputs(1, 500, 1.2, seed=7)
    exact = MultiScaleDeformableAttention()(
        *[a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    )
    theirs = (MultiScaleDeformableAttention()(*args).double() - exact).abs().max()
    ours = (GatherDeformableAttention()(*args).double() - exact).abs().max()
    assert float(ours) <= 2 * float(theirs) + 1e-7


def test_bad_level_shapes_are_refused() -> None:
    value, spatial, shapes, starts, locations, weights, step = _inputs(1, 10, 1.0, seed=1)
    with pytest.raises(ValueError, match="level shapes"):
        GatherDeformableAttention()(
            value, spatial, [*shapes[:-1], (4, 5)], starts, locations, weights, step
        )


def test_gradients_match_transformers_kernel() -> None:
    """Fine-tuning goes through the same module: its gradients are the same too."""
    value, spatial, shapes, starts, locations, weights, step = _inputs(1, 40, 1.2, seed=3)
    grads = []
    for kernel in (MultiScaleDeformableAttention(), GatherDeformableAttention()):
        v = value.clone().requires_grad_(True)
        loc = locations.clone().requires_grad_(True)
        w = weights.clone().requires_grad_(True)
        kernel(v, spatial, shapes, starts, loc, w, step).square().sum().backward()
        grads.append((v.grad, loc.grad, w.grad))
    (value_grad, location_grad, weight_grad), expected = grads[1], grads[0]
    torch.testing.assert_close(value_grad, expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight_grad, expected[2], rtol=1e-5, atol=1e-5)
    # d/d(location) is a map-width times a difference of corner values: float32 rounding of
    # the positions shows at the 1e-5 relative level (measured 4.5e-5 at most)
    torch.testing.assert_close(location_grad, expected[1], rtol=2e-4, atol=2e-4)
    assert float(location_grad.abs().max()) > 1.0


def _grid_taps(dtype: torch.dtype):
    """Taps exactly on the kinks of bilinear sampling with zero padding, on power-of-two maps
    (exact in float32 and float64): every pixel centre from the border's -1 to ``size`` on both
    axes (the border centres -1 and ``size`` included), and pixel edges."""
    shapes = [(4, 8), (2, 4), (1, 2)]
    heads, channels, points = 2, 3, 3
    gen = torch.Generator().manual_seed(11)
    value = torch.randn(1, sum(h * w for h, w in shapes), heads, channels, generator=gen)
    taps = []
    for h, w in shapes:
        xs, ys = torch.meshgrid(torch.arange(-1.0, w + 1), torch.arange(-1.0, h + 1), indexing="ij")
        centres = torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h], -1)
        edges = torch.stack([xs.flatten() / w, (ys.flatten() + 0.5) / h], -1)
        taps.append(torch.cat([centres, edges]))
    queries = max(len(t) for t in taps)
    locations = torch.zeros(1, queries, heads, len(shapes), points, 2)
    for level, t in enumerate(taps):  # each query samples one tap per level, the rest off-map
        locations[0, :, :, level, :, :] = -3.0
        locations[0, : len(t), :, level, 0] = t[:, None]
        locations[0, : len(t), :, level, 1] = t.flip(0)[:, None]  # another tap of the same map
    weights = torch.rand(1, queries, heads, len(shapes), points, generator=gen)
    spatial = torch.tensor(shapes)
    starts = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]])
    probe = torch.randn(1, queries, heads * channels, generator=gen)
    floats = [t.to(dtype) for t in (value, locations, weights, probe)]
    return floats, spatial, shapes, starts


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_on_the_pixel_grid_and_the_zero_border_match_grid_sample(dtype) -> None:
    """On a kink, ``grid_sample`` takes one side: on -1 (the zero border's centre before the
    map) the derivative into the map, on ``size`` 0. torch 2.14's ``clamp`` stopped passing
    gradients at its bound (the gather's old x = -1 derivative: 0), and the old
    ``torch.minimum`` leaked half a derivative at ``size`` from the next level's memory."""
    (value, locations, weights, probe), spatial, shapes, starts = _grid_taps(dtype)
    grads = []
    for kernel in (MultiScaleDeformableAttention(), GatherDeformableAttention()):
        inputs = [t.clone().requires_grad_(True) for t in (value, locations, weights)]
        out = kernel(inputs[0], spatial, shapes, starts, inputs[1], inputs[2], 64)
        (out * probe).sum().backward()
        grads.append([out, *(t.grad for t in inputs)])
    tolerance = 1e-12 if dtype == torch.float64 else 2e-5
    for name, got, expected in zip(("output", "value", "location", "weight"), *grads, strict=True):
        scale = float(expected.abs().max())
        assert scale > 0.1, name  # not a comparison of zeros
        error = float((got - expected).abs().max())
        assert error <= tolerance * scale, (name, error, scale)


def test_with_and_without_gradients_the_values_are_the_same() -> None:
    """The border limit takes two routes (``torch.where`` with gradients, in-place ``clamp``
    without): the same numbers, on and off the kinks."""
    (value, locations, weights, _), spatial, shapes, starts = _grid_taps(torch.float32)
    random = _inputs(1, 200, 1.6, seed=4)
    for args in ((value, spatial, shapes, starts, locations, weights, 64), random):
        with torch.no_grad():
            plain = GatherDeformableAttention()(*args)
        tracked = [a.clone().requires_grad_(True) if torch.is_tensor(a) and a.is_floating_point()
                   else a for a in args]  # fmt: skip
        assert torch.equal(GatherDeformableAttention()(*tracked).detach(), plain)


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
    kernels = [m for m in model.modules() if isinstance(m, GatherDeformableAttention)]
    assert len(kernels) == replaced
    # transformers' kernels remain only as the fallbacks of devices without embedding_bag
    originals = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    assert {id(m) for m in originals} == {id(k.fallback) for k in kernels}
    with torch.inference_mode():
        after = model(**inputs)
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(after.pred_boxes, before.pred_boxes, rtol=0, atol=1e-5)
    assert install_deformable_sampler(model) == replaced  # idempotent: nothing wrapped twice


def test_devices_without_embedding_bag_take_the_fallback(monkeypatch) -> None:
    from grounded_seg.proposers import deformable

    args = _inputs(1, 20, 1.0, seed=2)
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, *inputs):
            calls.append(len(inputs))
            return MultiScaleDeformableAttention()(*inputs)

    kernel = GatherDeformableAttention(fallback=Spy())
    gathered = kernel(*args)
    assert calls == []
    monkeypatch.setattr(deformable, "GATHER_DEVICES", frozenset({"cuda"}))  # as if on MPS
    torch.testing.assert_close(kernel(*args), gathered, rtol=0, atol=5e-6)
    assert calls == [7]
    with pytest.raises(ValueError, match="fallback"):
        GatherDeformableAttention()(*args)

"""Grounding DINO's deformable-attention sampling, kept in float32 under half precision.

Deformable attention reads the value maps at fractional positions with ``grid_sample``. In
bfloat16 the position itself is rounded to 8 significant bits before it is turned into a pixel
index: on a 150-pixel-wide level, sampling positions land up to half a pixel off, and the CPU
kernel's bfloat16 path returns values several units away from the float32 answer on the same
inputs (measured: max abs error 5.8 on unit-variance values). The enhancer then overflows
(``inf``/``nan`` after one layer) and no box survives.

:func:`sample_in_float32` wraps each sampling module (``MultiScaleDeformableAttention``, no
parameters) so that its floating inputs are cast to float32 and its output back to the caller's
dtype. The projections around it (value, offsets, weights, output) stay in the model's dtype, so
the fast path keeps its speed; in float32 the wrapper does nothing but pass the call through.
"""

from __future__ import annotations

from typing import Any

import torch

SAMPLER_CLASS_NAME = "MultiScaleDeformableAttention"


class Float32Sampling(torch.nn.Module):
    """Run ``inner`` (a parameter-free sampling module) in float32; return the input dtype.

    ``inner`` is called with the same positional and keyword arguments; every floating-point
    tensor among them is cast to float32 first. The output has the dtype of the first floating
    tensor argument (the value maps).
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
        return self.inner(*args, **kwargs).to(dtype)


def _is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def sample_in_float32(model: torch.nn.Module) -> int:
    """Wrap every deformable sampling module of ``model`` in :class:`Float32Sampling`.

    Idempotent; the state dict is unchanged (the wrapped modules hold no tensors). Returns how
    many modules are wrapped after the call (12 for Grounding DINO Swin-T: 6 enhancer layers,
    6 decoder layers).
    """
    wrapped = 0
    for parent in list(model.modules()):
        if isinstance(parent, Float32Sampling):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, Float32Sampling):
                wrapped += 1
            elif type(child).__name__ == SAMPLER_CLASS_NAME:
                setattr(parent, name, Float32Sampling(child))
                wrapped += 1
    return wrapped

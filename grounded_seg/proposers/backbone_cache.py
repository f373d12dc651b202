"""Grounding DINO's image backbone run once per image, safely shared by threads and prompts.

The Swin backbone does not read the text, so every prompt (and every pass of a long prompt) on
one image can reuse its output. transformers' ``GroundingDinoModel.forward`` calls
``self.backbone(pixel_values, pixel_mask)`` unconditionally and takes no precomputed features,
so the reuse has to happen inside the backbone module.

It used to be done by swapping ``backbone.forward`` for the duration of each call. On a model
shared by several threads those swaps overlapped: one call's restore left another call's
closure installed, and every later image got an old image's features. Here the module is
changed once, when the proposer is built (:func:`install_backbone_cache`), and never again:
:class:`CachedBackbone` holds the same two children under the same names (the state dict,
``save_pretrained`` and loading are unchanged) and looks up the cache of the *current call* in
a :class:`contextvars.ContextVar`, which every thread sees separately. The cache travels with
the call (:func:`backbone_cache`), not with the model.

Each reuse returns fresh lists: ``GroundingDinoModel.forward`` appends the extra feature level's
position embedding to the list the backbone returned, which on a reused list would grow by one
entry per prompt.

The replaced class is checked first (:data:`EQUIVALENT`: a fingerprint of its source and a
self-check on a tiny image, see ``grounded_seg._equivalents``); if it fails, the stock backbone
stays, and every call computes the features (``backbone_cache`` then fills nothing).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .._equivalents import Equivalent, compare
from ._install import replace_modules

ORIGINAL_CLASS_NAME = ("GroundingDinoConvModel", "MMGroundingDinoConvModel")  # same source
# the source of the stock class's __init__ and forward (grounded_seg._equivalents.fingerprint)
# where CachedBackbone was checked against it
VERIFIED_FINGERPRINTS = {"3949332135c6367c": "transformers 5.20.0, 5.25.0"}

_ACTIVE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "grounded_seg_backbone_cache", default=None
)


@contextlib.contextmanager
def backbone_cache(cache: dict[str, Any]) -> Iterator[None]:
    """Within the block, this thread's backbone calls read and fill ``cache`` (one image's)."""
    token = _ACTIVE.set(cache)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class CachedBackbone(nn.Module):
    """transformers' ``GroundingDinoConvModel`` with a per-call cache of its output.

    ``forward(pixel_values (B, 3, h, w), pixel_mask (B, h, w))`` returns, as the original does,
    ``(features, position_embeddings)``: a list of ``(feature_map, mask)`` per level and a list
    of position embeddings. Outside :func:`backbone_cache` it computes them every time.
    """

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        missing = [n for n in ("conv_encoder", "position_embedding") if not hasattr(original, n)]
        if missing:
            raise ValueError(
                f"expected a {ORIGINAL_CLASS_NAME}, got {type(original).__name__} without {missing}"
            )
        self.conv_encoder = original.conv_encoder
        self.position_embedding = original.position_embedding
        # the original class's own forward (reads only the two children above): nothing copied
        self._compute = type(original).forward

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> Any:
        cache = _ACTIVE.get()
        if cache is None:
            return self._compute(self, pixel_values, pixel_mask)
        if "output" not in cache:
            cache["output"] = self._compute(self, pixel_values, pixel_mask)
        features, positions = cache["output"]
        return list(features), list(positions)


def _self_check(original: nn.Module) -> str | None:
    """The stock backbone and :class:`CachedBackbone` on one 64 x 64 image (the module's device
    and dtype, every submodule in eval mode for the check): the cached call and its reuse give
    the stock output, the reuse in lists of its own."""
    parameter = next(original.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, 64, 64, generator=gen).to(device, dtype)
    mask = torch.ones(1, 64, 64, dtype=torch.long, device=device)
    cached = CachedBackbone(original)
    modes = [(module, module.training) for module in original.modules()]
    original.eval()
    try:
        with torch.no_grad():
            expected = original(pixels, mask)
            with backbone_cache({}):
                first = cached(pixels, mask)
                second = cached(pixels, mask)
    finally:
        for module, training in modes:
            module.training = training
    if any(a is b for a, b in zip(first, second, strict=True)):
        return "a reused output shares its lists with the first call's"
    return compare(first, expected, rtol=1e-6) or compare(second, expected, rtol=1e-6)


EQUIVALENT = Equivalent(
    name="per-call backbone cache (grounded_seg.proposers.backbone_cache)",
    members=("__init__", "forward"),
    verified=VERIFIED_FINGERPRINTS,
    self_check=_self_check,
)


def install_backbone_cache(model: nn.Module) -> int:
    """Replace the ``GroundingDinoConvModel`` in ``model`` with a :class:`CachedBackbone`
    holding the same children, if the class passes :data:`EQUIVALENT`'s checks (else it stays,
    and one INFO line says why). Idempotent; the state dict is unchanged. Returns how many are
    installed after the call (1 for a Grounding DINO model; 0 after a fallback)."""
    return replace_modules(model, ORIGINAL_CLASS_NAME, CachedBackbone, CachedBackbone, EQUIVALENT)

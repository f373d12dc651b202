"""SAM's decomposed relative-position bias, built in the layout attention reads, in reused memory.

Every SAM ViT attention adds a bias ``rel_h[q, k_h] + rel_w[q, k_w]`` (MViTv2's decomposed
relative positions) to its ``(heads, N, N)`` scores; for a global-attention block of SAM-B that is
12 x 4096 x 4096 floats (805 MB). transformers builds it by broadcasting two ``einsum`` outputs.
Two costs come with that on the CPU:

1. ``einsum`` returns permuted (non-contiguous) tensors, so the broadcast sum comes out in the
   permuted layout and the ``reshape`` to ``(batch, heads, N, N)`` that attention needs copies
   all 805 MB again;
2. each of those 805 MB tensors is fresh memory from the system, and the page faults of touching
   it cost about as much as the sum itself.

:func:`contiguous_rel_pos` gives each attention module a ``get_decomposed_rel_pos`` that makes the
two small ``einsum`` outputs contiguous (so the sum is born in attention's layout, no second copy)
and, when no gradient is needed, writes the sum into one scratch tensor per shape that the blocks
of one encoder pass share (freed when the encoder returns; one per thread). The numbers are the
same bit for bit. SAM-B image encoder on 2 CPU threads at 1024 x 1024 (medians of 4
alternating runs, OMP_NUM_THREADS=2): 6.47 s with transformers' builder, 5.21 s with this one.

The module's own ``get_rel_pos`` (interpolation and gathering of the learned tables) is reused;
only where the final sum is written changes. Each attention class is checked first
(:data:`EQUIVALENT`: a fingerprint of the source of the ``get_decomposed_rel_pos`` it stands in
for and a float64 self-check, see ``grounded_seg._equivalents``); a class that fails keeps its
own builder, and one INFO line says why.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

import torch

from .._equivalents import Equivalent, compare, log_fallback, refusal

logger = logging.getLogger(__name__)
# the source of the stock get_decomposed_rel_pos (grounded_seg._equivalents.fingerprint) where
# this builder was checked equal to it (SAM's and SAM-HQ's attention classes)
VERIFIED_FINGERPRINTS = {"9ab5612138418b65": "transformers 5.20.0, 5.25.0"}

_SCRATCH_ATTR = "_grounded_seg_rel_pos_scratch"


class _Scratch(threading.local):
    """Per-thread tensors reused within one encoder pass, keyed by shape, dtype and device."""

    def __init__(self) -> None:
        self.tensors: dict[tuple, torch.Tensor] = {}

    def get(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        key = (shape, like.dtype, like.device)
        if key not in self.tensors:
            self.tensors[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return self.tensors[key]

    def clear(self) -> None:
        self.tensors.clear()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        # a copied or unpickled model gets an empty scratch of its own (tensors are per pass)
        return type(self), ()


def _clear_after_forward(scratch: _Scratch, *_: Any) -> None:
    """The encoder's forward hook (a module-level function, so the model can be pickled)."""
    scratch.clear()


class _RelPosBuilder:
    """``module.get_decomposed_rel_pos`` for one attention module; unlike a bound method made
    with ``types.MethodType``, it survives ``pickle`` and ``copy.deepcopy`` of the model."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _decomposed_rel_pos(self.module, *args, **kwargs)


def _decomposed_rel_pos(
    self: Any,
    query: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """``(B, qh, qw, kh, kw)`` contiguous: ``q . R_h[qh - kh] + q . R_w[qw - kw]``.

    ``query`` is ``(B, qh * qw, C)``; ``rel_pos_h`` ``(2 * size - 1, C)``, likewise ``rel_pos_w``.
    Without gradients the result lives in the encoder pass's scratch tensor: it is valid until
    the next block of the same shape builds its bias.
    """
    query_height, query_width = q_size
    key_height, key_width = k_size
    table_h = self.get_rel_pos(query_height, key_height, rel_pos_h)  # (qh, kh, C)
    table_w = self.get_rel_pos(query_width, key_width, rel_pos_w)  # (qw, kw, C)
    batch, _, dim = query.shape
    grid = query.reshape(batch, query_height, query_width, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid, table_h).contiguous()
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid, table_w).contiguous()
    scratch = getattr(self, _SCRATCH_ATTR, None)
    if scratch is None or (
        torch.is_grad_enabled() and (rel_h.requires_grad or rel_w.requires_grad)
    ):
        return rel_h[..., :, None] + rel_w[..., None, :]
    out = scratch.get((batch, query_height, query_width, key_height, key_width), rel_h)
    return torch.add(rel_h[..., :, None], rel_w[..., None, :], out=out)


def _self_check(module: torch.nn.Module) -> str | None:
    """The class's own ``get_decomposed_rel_pos`` and ours on the module's tables (a float64
    CPU copy) and a random 3 x 5 query: the same bias and the same gradients."""
    stock = type(module).get_decomposed_rel_pos
    gen = torch.Generator().manual_seed(0)
    tables = [t.detach().to("cpu", torch.float64) for t in (module.rel_pos_h, module.rel_pos_w)]
    tables = [t + 0.1 * torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in tables]
    query = torch.randn(2, 15, tables[0].shape[1], generator=gen, dtype=torch.float64)
    answers = []
    for build in (stock, _decomposed_rel_pos):
        inputs = [t.clone().requires_grad_(True) for t in (query, *tables)]
        with torch.enable_grad():  # with gradients: ours leaves the scratch alone
            bias = build(module, *inputs, (3, 5), (3, 5))
            torch.autograd.backward(
                bias, torch.linspace(-1, 1, bias.numel(), dtype=bias.dtype).view_as(bias)
            )
        answers.append((bias, *(t.grad for t in inputs)))
    return compare(answers[1], answers[0], rtol=1e-9)


EQUIVALENT = Equivalent(
    name="contiguous relative-position builder (grounded_seg.segmenters.rel_pos)",
    members=("get_decomposed_rel_pos",),
    verified=VERIFIED_FINGERPRINTS,
    self_check=_self_check,
)


def contiguous_rel_pos(model: torch.nn.Module) -> int:
    """Give every attention module of ``model`` that has decomposed relative positions the
    builder above (instance attributes; class, weights and state dict untouched), sharing one
    scratch that is emptied when ``model.vision_encoder`` (or ``model``) returns.

    Idempotent. Returns how many modules use it after the call (12 for SAM-B, 32 for SAM-H).
    A module whose ``get_decomposed_rel_pos`` / ``get_rel_pos`` are not there (another
    transformers version) is left as it is, and so are the modules of a class that fails
    :data:`EQUIVALENT`'s checks (one INFO line says why; 0 when every class fails).
    """
    encoder = getattr(model, "vision_encoder", model)
    scratch = getattr(encoder, _SCRATCH_ATTR, None)
    if scratch is None:
        scratch = _Scratch()
        setattr(encoder, _SCRATCH_ATTR, scratch)
        encoder.register_forward_hook(
            functools.partial(_clear_after_forward, scratch), always_call=True
        )
    count = 0
    reasons: dict[type, str | None] = {}
    kept: dict[type, int] = {}
    for module in model.modules():
        if not getattr(module, "use_rel_pos", False):
            continue
        if not (hasattr(module, "get_decomposed_rel_pos") and hasattr(module, "get_rel_pos")):
            logger.debug("%s has no get_decomposed_rel_pos; left as it is", type(module).__name__)
            continue
        cls = type(module)
        if cls not in reasons:
            reasons[cls] = refusal(EQUIVALENT, module)
        if reasons[cls] is not None:
            kept[cls] = kept.get(cls, 0) + 1
            if isinstance(vars(module).get("get_decomposed_rel_pos"), _RelPosBuilder):
                del module.get_decomposed_rel_pos  # installed before: the class's own again
            continue
        current = vars(module).get("get_decomposed_rel_pos")
        if not (isinstance(current, _RelPosBuilder) and current.module is module):
            module.get_decomposed_rel_pos = _RelPosBuilder(module)
        setattr(module, _SCRATCH_ATTR, scratch)
        count += 1
    for cls, number in kept.items():
        log_fallback(EQUIVALENT, f"{cls.__name__}.get_decomposed_rel_pos", number, reasons[cls])
    return count

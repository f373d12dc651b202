"""Grounding DINO's bidirectional image<->text attention, computed without 1024-wide image tensors.

In each of the six feature-enhancer layers, transformers' ``GroundingDinoBiMultiHeadAttention``
projects all ``N`` image tokens (about 20k at 800 x 1200) three times between the model width
``d`` (256) and the fusion width ``E = heads * head_dim`` (1024): image queries, image values and
the image output projection, ``3 * N * d * E`` multiply-adds per layer. But the text has only ``T``
tokens (a handful for most prompts; at most 256), and every one of those products is linear, so
they can be re-associated through the ``T``-sized side:

- logits: ``(X Wq_h^T + bq_h) K_h^T = X (Wq_h^T K_h^T) + bq_h K_h^T``: a ``(d, T)`` matrix per head
  first, then one ``(N, d) @ (d, heads * T)`` product;
- image output: ``out_proj(concat_h(P_h V_h)) = sum_h P_h (V_h Wo_h^T) + bo``: a ``(T, d)`` matrix
  per head, then one ``(N, heads * T) @ (heads * T, d)`` product;
- text output: ``P'_h (X Wv_h^T + bv_h) = (P'_h X) Wv_h^T + rowsum(P'_h) bv_h``.

That is ``3 * N * d * heads * T`` instead of ``N * E * (3 d + 2 T)``: 1.9% of the work for a
five-token prompt, 60% at the 256-token maximum, never more. Everything between the products (the
global-max shift, the +-50000 clamp, the masks, both softmaxes, dropout) is the original's, in the
original's order, on the same ``(batch * heads, N, T)`` logits, so the outputs (and the returned
attention weights) are the same up to float32 rounding.

:func:`install_factored_fusion` swaps each ``fusion_layer.attn`` for a
:class:`FactoredBiAttention` that holds the same six ``nn.Linear`` modules under the same names:
the state dict, ``save_pretrained`` and loading are unchanged, after checking that the module it
replaces is the one it was verified against (:data:`EQUIVALENT`: a source fingerprint and a
float64 self-check; the stock module stays otherwise, see ``grounded_seg._equivalents``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional

from .._equivalents import Equivalent, compare
from ._install import replace_modules

# MM-Grounding-DINO carries the same module under its own prefix (the same source, checked equal
# to the stock module in tests/test_fusion.py)
ORIGINAL_CLASS_NAME = ("GroundingDinoBiMultiHeadAttention", "MMGroundingDinoBiMultiHeadAttention")
_PROJECTIONS = (
    "vision_proj",
    "text_proj",
    "values_vision_proj",
    "values_text_proj",
    "out_vision_proj",
    "out_text_proj",
)
_CLAMP = 50000.0  # the original's bound on shifted logits (half precision's range)
# the source of the stock class's __init__ and forward (grounded_seg._equivalents.fingerprint)
# where this module was checked equal to it; MM-Grounding-DINO's copy has the same source
VERIFIED_FINGERPRINTS = {"4ed1689110987e2e": "transformers 5.20.0, 5.25.0"}


class FactoredBiAttention(nn.Module):
    """Same inputs, outputs and parameters as transformers' ``GroundingDinoBiMultiHeadAttention``.

    ``forward(vision_features (B, N, d), text_features (B, T, d), vision_attention_mask (B, N)
    bool or None, text_attention_mask (B, T) bool or None)`` with masks True at padding. Returns
    ``((vision_out (B, N, d), vision_weights (B*heads, N, T)), (text_out (B, T, d), text_weights
    (B*heads, T, N)))``, the weights after softmax and before dropout.
    """

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        missing = [
            n for n in (*_PROJECTIONS, "num_heads", "head_dim", "scale") if not hasattr(original, n)
        ]
        if missing:
            raise ValueError(
                f"expected a GroundingDinoBiMultiHeadAttention, got {type(original).__name__} "
                f"without {missing}"
            )
        self.num_heads = int(original.num_heads)
        self.head_dim = int(original.head_dim)
        self.embed_dim = self.num_heads * self.head_dim
        self.scale = float(original.scale)
        self.dropout = float(getattr(original, "dropout", 0.0))
        for name in _PROJECTIONS:
            setattr(self, name, getattr(original, name))

    def forward(
        self,
        vision_features: torch.Tensor,
        text_features: torch.Tensor,
        vision_attention_mask: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        batch, n_vision, dim = vision_features.shape
        if text_features.dim() != 3 or text_features.shape[0] != batch:
            raise ValueError(
                f"expected text_features (B={batch}, T, d), got {tuple(text_features.shape)}"
            )
        n_text = text_features.shape[1]
        heads, head_dim = self.num_heads, self.head_dim

        # logits (B*heads, N, T) = (X Wq^T + bq) * scale @ K^T, associated through the text side
        keys = self.text_proj(text_features).view(batch, n_text, heads, head_dim)
        wq = self.vision_proj.weight.view(heads, head_dim, dim)
        query_map = torch.einsum("hed,bthe->bdht", wq, keys) * self.scale  # (B, d, heads, T)
        logits = vision_features @ query_map.reshape(batch, dim, heads * n_text)
        if self.vision_proj.bias is not None:
            bias = torch.einsum("he,bthe->bht", self.vision_proj.bias.view(heads, head_dim), keys)
            logits = logits + (bias * self.scale).reshape(batch, 1, heads * n_text)
        attn = logits.view(batch, n_vision, heads, n_text).permute(0, 2, 1, 3)
        attn = attn.reshape(batch * heads, n_vision, n_text)

        # the original's normalisation, unchanged
        attn = (attn - attn.max()).clamp(min=-_CLAMP, max=_CLAMP)
        text_attn = attn.transpose(1, 2)
        text_attn = (text_attn - text_attn.max(dim=-1, keepdim=True)[0]).clamp(
            min=-_CLAMP, max=_CLAMP
        )
        if vision_attention_mask is not None:
            mask = vision_attention_mask[:, None, None, :].repeat(1, heads, 1, 1).flatten(0, 1)
            text_attn = text_attn.masked_fill(mask, float("-inf"))
        text_weights = text_attn.softmax(dim=-1)  # (B*heads, T, N)
        if text_attention_mask is not None:
            mask = text_attention_mask[:, None, None, :].repeat(1, heads, 1, 1).flatten(0, 1)
            attn = attn.masked_fill(mask, float("-inf"))
        vision_weights = attn.softmax(dim=-1)  # (B*heads, N, T)
        vision_probs = functional.dropout(vision_weights, p=self.dropout, training=self.training)
        text_probs = functional.dropout(text_weights, p=self.dropout, training=self.training)

        # image output: sum_h P_h (V_h Wo_h^T) + bo
        values = self.values_text_proj(text_features).view(batch, n_text, heads, head_dim)
        wo = self.out_vision_proj.weight.view(dim, heads, head_dim)
        value_map = torch.einsum("bthe,dhe->bhtd", values, wo)  # (B, heads, T, d)
        probs = vision_probs.view(batch, heads, n_vision, n_text).permute(0, 2, 1, 3)
        vision_out = probs.reshape(batch, n_vision, heads * n_text) @ value_map.reshape(
            batch, heads * n_text, dim
        )
        if self.out_vision_proj.bias is not None:
            vision_out = vision_out + self.out_vision_proj.bias

        # text output: (P'_h X) Wv_h^T + rowsum(P'_h) bv_h, then the text output projection
        probs = text_probs.view(batch, heads, n_text, n_vision)
        pooled = probs @ vision_features[:, None]  # (B, heads, T, d)
        wv = self.values_vision_proj.weight.view(heads, head_dim, dim)
        text_values = torch.einsum("bhtd,hed->bthe", pooled, wv)  # (B, T, heads, head_dim)
        if self.values_vision_proj.bias is not None:
            mass = probs.sum(-1).transpose(1, 2)  # (B, T, heads): 1 unless dropout is on
            text_values = text_values + mass[..., None] * self.values_vision_proj.bias.view(
                heads, head_dim
            )
        text_out = self.out_text_proj(text_values.reshape(batch, n_text, self.embed_dim))
        return (vision_out, vision_weights), (text_out, text_weights)


def _self_check(original: nn.Module) -> str | None:
    """The stock module (a float64 CPU copy) and :class:`FactoredBiAttention` on the same random
    features, with padding in both masks: every output within float64 rounding."""
    stock = copy.deepcopy(original).to("cpu", torch.float64).eval()
    factored = FactoredBiAttention(stock).eval()
    gen = torch.Generator().manual_seed(0)
    vision = torch.randn(2, 7, stock.vision_proj.in_features, generator=gen, dtype=torch.float64)
    text = torch.randn(2, 3, stock.text_proj.in_features, generator=gen, dtype=torch.float64)
    vision_mask = torch.zeros(2, 7, dtype=torch.bool)
    vision_mask[1, 5:] = True
    text_mask = torch.zeros(2, 3, dtype=torch.bool)
    text_mask[0, 2] = True
    with torch.no_grad():
        expected = stock(vision, text, vision_mask, text_mask)
        got = factored(vision, text, vision_mask, text_mask)
    return compare(got, expected, rtol=1e-9)


EQUIVALENT = Equivalent(
    name="factored image-text fusion (grounded_seg.proposers.fusion)",
    members=("__init__", "forward"),
    verified=VERIFIED_FINGERPRINTS,
    self_check=_self_check,
)


def install_factored_fusion(model: nn.Module) -> int:
    """Replace every ``GroundingDinoBiMultiHeadAttention`` in ``model`` with a
    :class:`FactoredBiAttention` holding the same projections, if the class passes
    :data:`EQUIVALENT`'s checks (else the stock modules stay, and one INFO line says why).

    Idempotent; the state dict keys and tensors are unchanged. Returns how many are installed
    after the call (6 for Grounding DINO Swin-T, one per enhancer layer; 0 after a fallback).
    """
    return replace_modules(
        model, ORIGINAL_CLASS_NAME, FactoredBiAttention, FactoredBiAttention, EQUIVALENT
    )

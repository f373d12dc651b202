"""Official SAM-HQ checkpoints (``sam_hq_vit_b.pth``, ``_l``, ``_h``) on ``SamHQModel``.

An official SAM-HQ file is a segment-anything state dict (every SAM 1 tensor, same names) plus the
HQ mask decoder's own tensors, all under ``mask_decoder.``:

=================================  ==========================================================
official                           transformers ``SamHQModel``
=================================  ==========================================================
``hf_token``                       ``hq_token`` (the HQ output token)
``hf_mlp.layers.{0,1,2}``          ``hq_mask_mlp.{proj_in,layers.0,proj_out}``
``compress_vit_feat.{0,1,3}``      ``compress_vit_{conv1,norm,conv2}`` (early ViT feature)
``embedding_encoder.{0,1,3}``      ``encoder_{conv1,norm,conv2}`` (image embedding, upscaled)
``embedding_maskfeature.{0,1,3}``  ``mask_{conv1,norm,conv2}`` (SAM's upscaled mask feature)
=================================  ==========================================================

Those tensors are what tells SAM-HQ from SAM 1 (tried first: a SAM-HQ file holds every SAM 1
tensor too). The config is SAM 1's, read from the tensors by :func:`.convert.sam_config`, plus
the ViT width the HQ path compresses (``vit_dim``). The rename rules are SAM 1's
(:data:`.keymap.SAM_RULES`) after the HQ ones below. The Light HQ-SAM (``vit_tiny``: a TinyViT
encoder) is recognised and refused: ``SamHQModel`` holds a ViT image encoder only.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..errors import InvalidWeightsError
from .families import OfficialFamily
from .keymap import SAM_RULES, Rule, one

_PATCH = "image_encoder.patch_embed.proj.weight"
_TINY_VIT = "image_encoder.patch_embed.seq."  # TinyViT's convolutional stem
_VARIANTS = {(768, 12): "vit-b", (1024, 24): "vit-l", (1280, 32): "vit-h"}

# official module (under mask_decoder.) -> its sequential indices -> the transformers names
_HQ_MODULES: dict[str, dict[str, str]] = {
    "hf_mlp.layers": {
        "0": "hq_mask_mlp.proj_in",
        "1": "hq_mask_mlp.layers.0",
        "2": "hq_mask_mlp.proj_out",
    },
    "compress_vit_feat": {
        "0": "compress_vit_conv1",
        "1": "compress_vit_norm",
        "3": "compress_vit_conv2",
    },
    "embedding_encoder": {"0": "encoder_conv1", "1": "encoder_norm", "3": "encoder_conv2"},
    "embedding_maskfeature": {"0": "mask_conv1", "1": "mask_norm", "3": "mask_conv2"},
}

# every official tensor of the HQ path: a file that has some of them must have all of them
HQ_KEYS: tuple[str, ...] = (
    "mask_decoder.hf_token.weight",
    *(
        f"mask_decoder.{module}.{index}.{param}"
        for module, layers in _HQ_MODULES.items()
        for index in layers
        for param in ("weight", "bias")
    ),
)
_HQ_PREFIX = re.compile(
    r"mask_decoder\.(hf_token|hf_mlp|compress_vit_feat|embedding_encoder|embedding_maskfeature)\."
)

HQ_RULES: tuple[Rule, ...] = (
    one(r"mask_decoder\.hf_token\.(.*)", r"mask_decoder.hq_token.\1"),
    *(
        one(rf"mask_decoder\.{re.escape(module)}\.{index}\.(weight|bias)", rf"mask_decoder.{hf}.\1")
        for module, layers in _HQ_MODULES.items()
        for index, hf in layers.items()
    ),
)
SAM_HQ_RULES: tuple[Rule, ...] = HQ_RULES + SAM_RULES


def detect(state_dict: dict[str, torch.Tensor]) -> str | None:
    """``"vit-b"``, ``"vit-l"``, ``"vit-h"`` (``"vit-<width>x<depth>"`` for other sizes) or
    ``"vit-tiny"`` (Light HQ-SAM) when the tensors hold an HQ mask decoder; ``None`` otherwise
    (a plain SAM 1 file has no ``mask_decoder.hf_*`` / ``compress_vit_feat`` ... tensors)."""
    if not any(_HQ_PREFIX.match(key) for key in state_dict):
        return None
    if _PATCH not in state_dict:
        if any(key.startswith(_TINY_VIT) for key in state_dict):
            return "vit-tiny"
        return None  # no image encoder we know: the generic "expected an official ..." error
    width = int(state_dict[_PATCH].shape[0])
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    return _VARIANTS.get((width, depth), f"vit-{width}x{depth}")


def _plain(config: Any) -> dict[str, Any]:
    """A sub-config as keyword arguments for its SAM-HQ counterpart (type tags left out)."""
    values = config.to_dict()
    for key in ("model_type", "transformers_version"):
        values.pop(key, None)
    return values


def config(state_dict: dict[str, torch.Tensor]) -> Any:
    """A ``SamHQConfig`` sized from the tensors: SAM 1's config (:func:`.convert.sam_config`)
    and the width of the ViT feature the HQ path compresses (``compress_vit_feat.0``)."""
    from transformers import SamHQConfig

    from .convert import sam_config

    if _PATCH not in state_dict:
        raise InvalidWeightsError(
            "official SAM-HQ vit-tiny (Light HQ-SAM, a TinyViT image encoder): transformers' "
            "SamHQModel holds a ViT image encoder only, so this checkpoint cannot be loaded; use "
            "sam_hq_vit_b.pth, sam_hq_vit_l.pth or sam_hq_vit_h.pth"
        )
    sam = sam_config(state_dict)
    compress = state_dict.get("mask_decoder.compress_vit_feat.0.weight")
    if compress is None:  # prepare() names every missing HQ tensor; this keeps config() total
        raise InvalidWeightsError(
            "official SAM-HQ checkpoint: expected mask_decoder.compress_vit_feat.0.weight, got none"
        )
    return SamHQConfig(
        vision_config=_plain(sam.vision_config),
        prompt_encoder_config=_plain(sam.prompt_encoder_config),
        mask_decoder_config={**_plain(sam.mask_decoder_config), "vit_dim": int(compress.shape[0])},
    )


def prepare(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check that every tensor of the HQ path is there, naming the official keys that are not
    (the generic fill check would name their transformers counterparts only)."""
    missing = [key for key in HQ_KEYS if key not in state_dict]
    if missing:
        raise InvalidWeightsError(
            f"official SAM-HQ checkpoint: {len(missing)} tensors of the HQ mask decoder are "
            f"missing ({', '.join(missing[:6])}); the file is incomplete or damaged"
        )
    return state_dict


def processor_config() -> dict[str, Any]:
    """SAM 1's preprocessing (long side 1024, ImageNet statistics, zero padding to 1024 x 1024):
    SAM-HQ's official predictor is segment-anything's, unchanged."""
    from .convert import _processor_config

    return _processor_config("sam")


SAM_HQ = OfficialFamily(
    "sam_hq",
    "SamHQModel",
    detect,
    config,
    SAM_HQ_RULES,
    processor_config,
    prepare=prepare,
)

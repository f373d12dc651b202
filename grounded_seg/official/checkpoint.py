"""Reading official ``.pth`` files and recognising which model they hold.

Every official tensor must find a place in the transformers model, and every model tensor must be
filled. The few deliberate exceptions are listed here, in one place: :data:`DROPPED` (official
tensors with no use in the transformers model) and :data:`NO_OFFICIAL_COUNTERPART` (model tensors
the official model does not have; they are set to the identity and unused in the forward pass).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..errors import InvalidWeightsError

Family = Literal["grounding_dino", "sam", "sam2", "sam_hq"]

OFFICIAL_SUFFIXES = (".pth", ".pt")

# Official tensors left out on purpose, as (pattern, reason).
DROPPED: dict[Family, tuple[tuple[str, str], ...]] = {
    "grounding_dino": (
        (r"bert\.pooler\..*", "BERT's pooler: Grounding DINO reads token features, never [CLS]"),
        (r"bert\.embeddings\.position_ids", "a buffer of 0..511 that transformers rebuilds"),
        (r".*\.attn\.relative_position_index", "Swin's index buffer, rebuilt by transformers"),
        (r".*\.attn_mask", "Swin's shifted-window mask buffer, rebuilt for each input size"),
    ),
    "sam": (),
}

# Model tensors with no official counterpart, as (pattern, reason); filled with ones / zeros.
NO_OFFICIAL_COUNTERPART: dict[Family, tuple[tuple[str, str], ...]] = {
    "grounding_dino": (
        (
            r"model\.backbone\.conv_encoder\.model\.swin\.layernorm\.(weight|bias)",
            "the Swin classifier's final LayerNorm: unused, Grounding DINO reads the per-stage "
            "norms (official norm1..3)",
        ),
    ),
    "sam": (),
}


@dataclass(frozen=True)
class CheckpointKind:
    """What an official checkpoint holds: the family and its size (``swin-t``, ``vit-h``...)."""

    family: Family
    variant: str


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise InvalidWeightsError(f"{path}: expected a state dict of tensors, got {type(obj)}")
    tensors = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InvalidWeightsError(
                f"{path}: expected a state dict of named tensors, got {key!r}: "
                f"{type(value).__name__}"
            )
        tensors[key.removeprefix("module.")] = value
    return tensors


def load_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an official ``.pth`` file, ``module.`` prefixes removed.

    Reads with ``torch.load(weights_only=True)`` (no code in the file runs); unwraps the
    ``{"model": ...}`` of GroundingDINO's releases. Raises ``FileNotFoundError`` for a missing file
    and :class:`InvalidWeightsError` for anything that is not a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError) as err:
        raise InvalidWeightsError(
            f"{path}: could not read it as a PyTorch checkpoint with weights_only=True "
            f"(truncated, not a .pth file, or holding objects other than tensors): {err}"
        ) from err
    return _unwrap(obj, path)


def detect_checkpoint(
    state_dict: dict[str, torch.Tensor], where: str = "checkpoint"
) -> CheckpointKind:
    """Recognise the official model from its tensors alone; ``InvalidWeightsError`` otherwise."""
    from .families import extra_families

    for family in extra_families():  # SAM-HQ before SAM 1: it holds every SAM 1 tensor too
        variant = family.detect(state_dict)
        if variant is not None:
            return CheckpointKind(family.family, variant)  # type: ignore[arg-type]
    if "image_encoder.patch_embed.proj.weight" in state_dict:
        width = int(state_dict["image_encoder.patch_embed.proj.weight"].shape[0])
        depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
        known = {(768, 12): "vit-b", (1024, 24): "vit-l", (1280, 32): "vit-h"}
        return CheckpointKind("sam", known.get((width, depth), f"vit-{width}x{depth}"))
    if "backbone.0.patch_embed.proj.weight" in state_dict and "transformer.tgt_embed.weight" in (
        state_dict
    ):
        width = int(state_dict["backbone.0.patch_embed.proj.weight"].shape[0])
        known = {96: "swin-t", 128: "swin-b"}
        return CheckpointKind("grounding_dino", known.get(width, f"swin-{width}"))
    sample = ", ".join(sorted(state_dict)[:4])
    hint = ""
    if any(k.startswith(("model.", "vision_encoder.")) for k in state_dict):
        hint = (
            " It looks like a transformers checkpoint: pass the folder holding it and its "
            "config.json instead."
        )
    raise InvalidWeightsError(
        f"{where}: expected an official GroundingDINO (backbone.0.*, transformer.*, bert.*), "
        f"segment-anything or SAM-HQ (image_encoder.*, prompt_encoder.*, mask_decoder.*) or "
        f"SAM 2.1 (image_encoder.trunk.*, sam_mask_decoder.*) checkpoint, got keys like "
        f"{sample}.{hint}"
    )


def is_official_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a single checkpoint file (``.pth``/``.pt``) rather than a folder."""
    p = Path(path)
    return p.suffix.lower() in OFFICIAL_SUFFIXES and not p.is_dir()


def matches(patterns: tuple[tuple[str, str], ...], key: str) -> bool:
    """Whether ``key`` matches one of ``(pattern, reason)`` in full."""
    return any(re.fullmatch(pattern, key) for pattern, _ in patterns)


def dropped_patterns(family: str) -> tuple[tuple[str, str], ...]:
    """``(pattern, reason)`` of the official tensors of ``family`` left out on purpose."""
    from .families import extra_family

    extra = extra_family(family)
    return extra.dropped if extra is not None else DROPPED[family]  # type: ignore[index]


def no_counterpart_patterns(family: str) -> tuple[tuple[str, str], ...]:
    """``(pattern, reason)`` of the model tensors of ``family`` with no official counterpart."""
    from .families import extra_family

    extra = extra_family(family)
    return extra.no_counterpart if extra is not None else NO_OFFICIAL_COUNTERPART[family]  # type: ignore[index]

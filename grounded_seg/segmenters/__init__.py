"""Mask segmenters: SAM, SAM 2.1 and SAM-HQ. Each implements :class:`MaskSegmenter`.

:func:`load_segmenter` picks the class from what the model is (its registry entry, or the
``model_type`` in its folder's ``config.json``), never from the name it was given.
"""

from __future__ import annotations

import importlib
import os

import torch

from .base import MaskSegmenter
from .sam import SamSegmenter

# family -> (module, class) of the segmenter that runs it
SEGMENTER_CLASSES: dict[str, tuple[str, str]] = {
    "sam": ("sam", "SamSegmenter"),
    "sam2": ("sam2", "Sam2Segmenter"),
    "sam_hq": ("sam_hq", "SamHQSegmenter"),
}


def segmenter_class(family: str) -> type:
    """The segmenter class for a family (``"sam"``, ``"sam2"``, ``"sam_hq"``)."""
    module, name = SEGMENTER_CLASSES[family]
    return getattr(importlib.import_module(f".{module}", __name__), name)


def load_segmenter(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    compile: bool = False,
) -> MaskSegmenter:
    """Load a segmenter by registry name, folder, official checkpoint or hub id, as the class its
    model needs. ``InvalidWeightsError`` names what a folder of another kind holds."""
    from .._loading import model_family
    from ..errors import InvalidWeightsError

    family = model_family(name_or_path, "segmenter")
    if family not in SEGMENTER_CLASSES:
        raise InvalidWeightsError(
            f"segmenter {os.fspath(name_or_path)!r}: holds a {family} model; expected a SAM, "
            "SAM 2.1 or SAM-HQ model"
        )
    cls = segmenter_class(family)
    return cls.from_pretrained(name_or_path, device=device, dtype=dtype, compile=compile)


__all__ = [
    "SEGMENTER_CLASSES",
    "MaskSegmenter",
    "SamSegmenter",
    "load_segmenter",
    "segmenter_class",
]

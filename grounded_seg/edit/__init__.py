"""``edit(image, "dog", "remove")``: act on what a prompt names, in one call.

Actions (``ACTIONS``): ``remove`` (inpainted away with OpenCV, offline, no weights), ``blur``
(privacy: faces, plates), ``cutout`` (RGBA, the background transparent), ``recolor`` (to
``color``, keeping the shading) and ``replace`` (painted as ``text`` says by a diffusers
inpainting model: ``pip install "grounded-seg[edit]"``).

The union of every detection's mask is dilated by ``dilate`` pixels first (``None``: the
action's default in ``DEFAULT_DILATION``), so the objects' edges leave no halo; pixels outside
the dilated mask are never changed. Nothing found: the image comes back unchanged, with a
warning. The input is never modified.

>>> from grounded_seg import edit                                     # doctest: +SKIP
>>> clean = edit("street.jpg", "car. person.", "remove")              # doctest: +SKIP
>>> private = edit("street.jpg", "face. license plate.", "blur")      # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import supervision as sv
import torch

from ..checks import check_count
from ..images import DEFAULT_MAX_PIXELS, ImageInput, load_image, to_input_type
from ..prompts import PromptInput
from .actions import blur, cutout, dilate, parse_colour, recolor, remove

ACTIONS = ("remove", "blur", "cutout", "recolor", "replace")
DEFAULT_DILATION = {"remove": 5, "replace": 8, "blur": 3, "cutout": 0, "recolor": 0}
"""Pixels each action grows the mask by when ``dilate`` is not given: inpainting and blurring
need the objects' soft edges inside the region (else a halo of the old colour stays);
``cutout`` and ``recolor`` follow the mask itself."""

__all__ = ["ACTIONS", "DEFAULT_DILATION", "apply_edit", "edit", "parse_colour"]


def edit(
    image: ImageInput,
    prompt: PromptInput,
    action: str,
    *,
    color: str | tuple[int, int, int] | None = None,
    text: str | None = None,
    dilate: int | None = None,
    detector: str | os.PathLike | None = None,
    segmenter: str | os.PathLike | None = None,
    proposer: str = "grounding_dino",
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    inpainter: Any = None,
    seed: int = 0,
    image_format: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ImageInput:
    """Find what ``prompt`` names (``segment()``, same model options) and apply ``action``.

    Returns the edited image as the same kind as ``image``: a PIL image for a PIL image or a
    path, a uint8 array in ``image_format`` order for an array; ``cutout`` returns RGBA (PIL
    ``RGBA``, or an ``(H, W, 4)`` array with alpha last). ``color``: for ``recolor``, a name,
    ``#rrggbb``, ``"r,g,b"`` or an RGB tuple. ``text``: for ``replace``, what to paint;
    ``inpainter``: its model (hub id or folder; default ``DEFAULT_INPAINTER``) or a loaded
    diffusers pipeline; ``seed`` makes it repeatable. Arguments are checked before any model
    loads.
    """
    from ..api import segment

    rgb = load_image(image, image_format=image_format, max_pixels=max_pixels)
    _check(action, color, text, dilate)
    detections = segment(
        rgb, prompt, proposer=proposer, detector=detector, segmenter=segmenter,
        box_threshold=box_threshold, text_threshold=text_threshold, device=device, dtype=dtype,
        max_pixels=None,
    )  # fmt: skip
    if not len(detections):
        from ..predictor import nothing_found
        from ..prompts import normalize_prompt
        from ..proposers.base import Proposals

        found = Proposals.empty(detections.metadata.get("best_score"))
        warnings.warn(
            f"{nothing_found(normalize_prompt(prompt), found, box_threshold)}: the image is "
            "returned unchanged",
            UserWarning,
            stacklevel=2,
        )
    edited = _apply(rgb, detections, action, color, text, dilate, inpainter, seed, device)
    return _as_input_kind(edited, image, image_format)


def apply_edit(
    image: ImageInput,
    masks: sv.Detections | np.ndarray,
    action: str,
    *,
    color: str | tuple[int, int, int] | None = None,
    text: str | None = None,
    dilate: int | None = None,
    inpainter: Any = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    image_format: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ImageInput:
    """:func:`edit` with the masks already known: ``masks`` is a ``Detections`` with masks of
    the image's size, or a bool array ``(H, W)`` or ``(N, H, W)``. No mask pixel: the image
    comes back unchanged (as the same kind)."""
    rgb = load_image(image, image_format=image_format, max_pixels=max_pixels)
    _check(action, color, text, dilate)
    edited = _apply(rgb, masks, action, color, text, dilate, inpainter, seed, device)
    return _as_input_kind(edited, image, image_format)


def _apply(
    rgb: np.ndarray,
    masks: sv.Detections | np.ndarray,
    action: str,
    color: Any,
    text: str | None,
    dilate: int | None,
    inpainter: Any,
    seed: int,
    device: Any,
) -> np.ndarray:
    """The action on a checked RGB uint8 ``(H, W, 3)`` image; a new array (RGBA for cutout)."""
    union = _union(masks, rgb.shape[:2])
    grown = _dilate(union, action if dilate is None else dilate)
    if not grown.any():
        return cutout(rgb, grown) if action == "cutout" else rgb.copy()
    if action == "remove":
        return remove(rgb, grown)
    if action == "blur":
        return blur(rgb, grown)
    if action == "cutout":
        return cutout(rgb, grown)
    if action == "recolor":
        return recolor(rgb, grown, color if isinstance(color, tuple) else parse_colour(color))
    from .replace import DEFAULT_INPAINTER, load_inpainter, replace

    if inpainter is None or isinstance(inpainter, (str, os.PathLike)):
        inpainter = load_inpainter(inpainter or DEFAULT_INPAINTER, device)
    return replace(rgb, grown, text, inpainter, seed=seed)


def _check(action: Any, color: Any, text: Any, dilate: Any) -> None:
    if action not in ACTIONS:
        raise ValueError(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}")
    if dilate is not None:
        check_count("dilate", dilate, low=0)
    if action == "recolor":
        if color is None:
            raise ValueError("recolor needs color= (a name, #rrggbb or r,g,b)")
        if isinstance(color, tuple):
            if len(color) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in color):
                raise ValueError(f"color: expected an (r, g, b) tuple of 0-255 ints, got {color}")
        else:
            parse_colour(color)
    elif color is not None:
        raise ValueError(f"color applies to recolor, not to {action}")
    if action == "replace":
        if not isinstance(text, str) or not text.strip():
            raise ValueError('replace needs text= (what to paint, e.g. "a wooden chair")')
    elif text is not None:
        raise ValueError(f"text applies to replace, not to {action}")


def _union(masks: sv.Detections | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if isinstance(masks, sv.Detections):
        if len(masks) == 0:
            return np.zeros(size, bool)
        if masks.mask is None:
            raise ValueError("masks: the Detections have no masks (segment() gives them)")
        masks = masks.mask
    if not isinstance(masks, np.ndarray) or masks.dtype != bool or masks.ndim not in (2, 3):
        raise TypeError(
            "masks: expected a supervision.Detections or a bool array (H, W) or (N, H, W), got "
            f"{type(masks).__name__} {getattr(masks, 'dtype', '')} {getattr(masks, 'shape', '')}"
        )
    if masks.shape[-2:] != size:
        raise ValueError(f"masks: expected the image's size {size}, got {masks.shape[-2:]}")
    return masks if masks.ndim == 2 else masks.any(axis=0)


def _dilate(mask: np.ndarray, how: str | int) -> np.ndarray:
    pixels = DEFAULT_DILATION[how] if isinstance(how, str) else int(how)
    return dilate(mask, pixels)


def _as_input_kind(edited: np.ndarray, like: ImageInput, image_format: str) -> ImageInput:
    if edited.shape[2] == 3:
        return to_input_type(edited, like, image_format)
    if isinstance(like, np.ndarray):  # RGBA -> the caller's channel order, alpha last
        colour = edited[..., 2::-1] if image_format.upper() == "BGR" else edited[..., :3]
        return np.ascontiguousarray(np.concatenate([colour, edited[..., 3:]], axis=2))
    from PIL import Image

    return Image.fromarray(edited)  # (H, W, 4) uint8: RGBA

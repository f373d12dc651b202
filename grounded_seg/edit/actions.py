"""What to do with the masked pixels: remove (inpaint), blur, cut out, recolour.

Every action takes an RGB uint8 ``(H, W, 3)`` image and a bool ``(H, W)`` mask (the union of
the objects, already dilated) and returns a new array; pixels outside the mask are never
changed (each result is composited back through the mask). OpenCV does the pixel work:
``cv2.inpaint`` (Telea's fast marching method), ``cv2.GaussianBlur``, and the CIE L*a*b*
conversion for recolouring.
"""

from __future__ import annotations

import cv2
import numpy as np

INPAINT_RADIUS = 5
"""Pixels around each masked pixel that Telea's method reads (OpenCV's ``inpaintRadius``)."""


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` grown by ``pixels`` in every direction (a disc), as a new bool array."""
    if pixels <= 0:
        return mask.copy()
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), disc).astype(bool)


def _inside(original: np.ndarray, edited: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[..., None], edited, original).astype(np.uint8)


def remove(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The masked pixels filled from their surroundings (``cv2.inpaint``, Telea)."""
    filled = cv2.inpaint(
        np.ascontiguousarray(rgb), mask.astype(np.uint8), INPAINT_RADIUS, cv2.INPAINT_TELEA
    )
    return _inside(rgb, filled, mask)


def blur(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The masked pixels blurred beyond recognition (faces, plates): a Gaussian whose sigma is
    2.5% of the image's larger side (at least 4 px), applied twice."""
    sigma = max(4.0, 0.025 * max(rgb.shape[:2]))
    blurred = cv2.GaussianBlur(rgb, (0, 0), sigma)
    blurred = cv2.GaussianBlur(blurred, (0, 0), sigma)
    return _inside(rgb, blurred, mask)


def cutout(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGBA ``(H, W, 4)``: the image, opaque (255) inside the mask and transparent (0) outside."""
    alpha = np.where(mask, 255, 0).astype(np.uint8)
    return np.concatenate([rgb, alpha[..., None]], axis=2)


def recolor(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The masked pixels in ``colour`` (RGB 0-255) with their own shading: in CIE L*a*b*, each
    takes the colour's a* and b* (hue and saturation), and the region's lightness L* is moved
    so that its mean is the colour's, each pixel keeping its difference from that mean."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    target = cv2.cvtColor(np.array([[colour]], np.uint8), cv2.COLOR_RGB2LAB)[0, 0]
    lab[..., 0] += float(target[0]) - float(lab[..., 0][mask].mean())
    lab[..., 1], lab[..., 2] = target[1], target[2]
    lab = np.clip(np.round(lab), 0, 255).astype(np.uint8)
    return _inside(rgb, cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), mask)


def parse_colour(text: str) -> tuple[int, int, int]:
    """A colour as RGB 0-255 from a name (``"red"``, any CSS/matplotlib name), ``"#rrggbb"`` or
    ``"r,g,b"``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"color: expected a name, #rrggbb or r,g,b, got {text!r}")
    parts = text.split(",")
    if len(parts) == 3:
        try:
            values = tuple(int(p) for p in parts)
        except ValueError:
            values = ()
        if len(values) == 3 and all(0 <= v <= 255 for v in values):
            return values  # type: ignore[return-value]
        raise ValueError(f"color: expected r,g,b with each in 0-255, got {text!r}")
    from matplotlib.colors import to_rgb

    try:
        red, green, blue = to_rgb(text.strip().lower())
    except ValueError:
        raise ValueError(
            f"color: expected a colour name (red, teal, ...), #rrggbb or r,g,b, got {text!r}"
        ) from None
    return round(red * 255), round(green * 255), round(blue * 255)

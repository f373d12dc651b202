"""Image preprocessing with the official implementations' exact arithmetic.

Grounding DINO (GroundingDINO's ``load_image``): resize with PIL bilinear so the short side is
``shortest`` unless the long side would exceed ``longest``; scale to [0, 1] by ``/ 255``; subtract
the mean and divide by the std, per channel, in float32. SAM (segment-anything's
``SamPredictor.set_image``): resize with PIL bilinear so the long side is ``long_side``; subtract
``255 * mean``, divide by ``255 * std``; zero-pad bottom and right to a square. The results equal
the official tensors bit for bit, so a converted official checkpoint sees exactly its own inputs.

The arithmetic runs in NumPy (the same IEEE float32 operations, so the same bits as torch): it
runs on worker threads while the models run (``label_images``), and torch operations there would
start OpenMP thread teams that compete with the models' own (measured on 2 cores: the models
slowed from 28 to 22 images/s while a thread preprocessed with torch; 28 with NumPy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise TypeError(
            "image: expected a uint8 (H, W, 3) RGB array, got "
            f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        )
    if image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image: expected shape (H, W, 3) with H, W >= 1, got {image.shape}")


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if (height, width) == image.shape[:2]:
        return image
    pil = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(pil)


def grounding_dino_size(height: int, width: int, shortest: int, longest: int) -> tuple[int, int]:
    """The ``(h, w)`` Grounding DINO resizes an ``height x width`` image to.

    The short side becomes ``shortest``, unless the long side would then exceed ``longest``: then
    the short side is ``round(longest * short / long)``. The long side is scaled in proportion and
    truncated to an integer, as the official transform does. An image so thin that its short side
    would round to 0 (where the official transform fails) becomes 1 x ``longest``.
    """
    short, long = min(height, width), max(height, width)
    if long / short * shortest > longest:
        shortest = round(longest * short / long)
        if shortest < 1:  # thinner than 2 * longest:1; the official transform fails in PIL
            return (longest, 1) if width < height else (1, longest)
    if short == shortest:
        return height, width
    if width < height:
        return int(shortest * height / width), shortest
    return shortest, int(shortest * width / height)


def grounding_dino_pixels(
    image: np.ndarray,
    shortest: int = 800,
    longest: int = 1333,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` -> normalised float32 ``(1, 3, h, w)``.

    ``(h, w)`` is :func:`grounding_dino_size`; ``mean``/``std`` are for [0, 1] pixels.
    """
    _check_rgb(image)
    height, width = grounding_dino_size(image.shape[0], image.shape[1], shortest, longest)
    pixels = _resize(image, height, width).transpose(2, 0, 1).astype(np.float32, order="C")
    pixels /= np.float32(255)
    pixels -= np.asarray(mean, np.float32)[:, None, None]
    pixels /= np.asarray(std, np.float32)[:, None, None]
    return torch.from_numpy(pixels)[None]


def sam_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """The ``(h, w)`` SAM resizes an ``height x width`` image to: long side ``long_side``,
    each side scaled by ``long_side / max(height, width)`` and rounded half up (at least 1
    pixel: segment-anything rounds an image thinner than 2 * long_side:1 to 0 and fails)."""
    scale = long_side / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def sam_pixels(
    image: np.ndarray,
    long_side: int = 1024,
    pad_to: int = 1024,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB uint8 ``(H, W, 3)`` -> float32 ``(1, 3, pad_to, pad_to)`` and the resized ``(h, w)``.

    ``mean``/``std`` are for [0, 1] pixels; they are applied to 0-255 values as ``255 * mean`` and
    ``255 * std``, as segment-anything does.
    """
    _check_rgb(image)
    height, width = sam_size(image.shape[0], image.shape[1], long_side)
    if max(height, width) > pad_to:
        raise ValueError(
            f"pad_to: expected at least the resized long side {long_side}, got {pad_to}"
        )
    resized = _resize(image, height, width).transpose(2, 0, 1)
    pixels = np.zeros((3, pad_to, pad_to), np.float32)  # zero-padded bottom and right
    mean_255 = np.asarray([255 * m for m in mean], np.float32)[:, None, None]
    std_255 = np.asarray([255 * s for s in std], np.float32)[:, None, None]
    pixels[:, :height, :width] = (resized - mean_255) / std_255
    return torch.from_numpy(pixels)[None], (height, width)

"""Loading and validation of input images.

This module is the single place where user-supplied images are turned into the
array layout used everywhere else in :mod:`grounded_seg`:

    a C-contiguous ``numpy.ndarray`` of dtype ``uint8`` and shape ``(H, W, 3)``,
    channels in **RGB** order.

Accepted inputs (see :data:`ImageInput`) are file paths (``str`` or
``os.PathLike``), :class:`PIL.Image.Image` objects and ``numpy.ndarray`` arrays.

Transparency is never kept: every image with an alpha channel is composited over
an opaque **white** background, ``out = colour * a + 255 * (1 - a)`` with
``a = alpha / 255``, rounded to the nearest integer.

The caller's objects are never modified: a new array is always returned.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
from typing import TypeAlias

import numpy as np
from PIL import Image, ImageOps

from .checks import check_limit

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageInput",
    "load_image",
    "to_input_type",
    "validate_image_format",
]

logger = logging.getLogger(__name__)

ImageInput: TypeAlias = str | os.PathLike | Image.Image | np.ndarray
"""Anything :func:`load_image` accepts: a path, a PIL image or a uint8 array."""

DEFAULT_MAX_PIXELS = 100_000_000
"""The largest image (width x height) read by default: 100 megapixels, above every camera
but medium format. A file is checked from its header before it is decoded, so a small file
that would decode to gigabytes (a "decompression bomb") is refused at once; ``max_pixels=None``
lifts the check (PIL itself still refuses more than twice ``PIL.Image.MAX_IMAGE_PIXELS``)."""

_IMAGE_FORMATS = ("RGB", "BGR")
_ACCEPTED_TYPES = "a path (str or os.PathLike), PIL.Image.Image or numpy.ndarray"

# PIL modes that PIL itself converts to RGB correctly with ``Image.convert("RGB")``.
_CONVERTIBLE_MODES = frozenset({"L", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"})
# Modes with a straight (non-premultiplied) alpha channel; converted via RGBA.
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
# Modes with a premultiplied alpha channel.
_PREMULTIPLIED_MODES = frozenset({"RGBa", "La"})
# Integer greyscale modes whose values are interpreted on the 16-bit range 0..65535.
_INT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def validate_image_format(image_format: str) -> str:
    """Validate a channel-order name and return it in canonical form.

    Args:
        image_format: ``"RGB"`` or ``"BGR"``, in any letter case.

    Returns:
        ``"RGB"`` or ``"BGR"`` (upper case).

    Raises:
        ValueError: if ``image_format`` is anything else (including a non-string).
    """
    if isinstance(image_format, str) and image_format.upper() in _IMAGE_FORMATS:
        return image_format.upper()
    raise ValueError(
        f"image_format must be one of {', '.join(repr(f) for f in _IMAGE_FORMATS)} "
        f"(case-insensitive), got {image_format!r}"
    )


def load_image(
    image: ImageInput, image_format: str = "RGB", max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Return the image as a C-contiguous uint8 array of shape (H, W, 3) in RGB order.

    Args:
        image: One of

            * a path (``str`` or ``os.PathLike``) to an image file readable by PIL.
              Only the first frame of multi-frame files is used.
            * a :class:`PIL.Image.Image`. The EXIF orientation tag, if any, is applied
              (``PIL.ImageOps.exif_transpose``), then the image is converted to RGB:

              - ``RGB``: as is.
              - ``L``, ``1``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``:
                ``Image.convert("RGB")``.
              - ``RGBA``, ``LA``, ``PA``, ``P`` with transparency, and the
                premultiplied ``RGBa`` and ``La``: composited over a white background.
              - ``P`` without transparency: its palette colours.
              - ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` and ``I`` (integer greyscale):
                the 16-bit range is scaled to 8 bits, ``round(v * 255 / 65535)``;
                for ``I`` (32-bit) values outside ``0..65535`` are clipped first.
              - ``F`` (float32 greyscale): if every value is in ``[0, 1]`` it is
                multiplied by 255 and rounded; otherwise, if every value is in
                ``[0, 255]`` it is rounded; otherwise ``ValueError``.

            * a ``numpy.ndarray`` of dtype ``uint8`` with shape ``(H, W)`` or
              ``(H, W, 1)`` (greyscale), ``(H, W, 3)`` (channels in ``image_format``
              order) or ``(H, W, 4)`` (``image_format`` order plus alpha, composited
              over white). ``H`` and ``W`` must be at least 1.

        image_format: Channel order of ``numpy.ndarray`` inputs, ``"RGB"`` or
            ``"BGR"`` (case-insensitive; ``"BGR"`` suits OpenCV arrays). It is
            validated but otherwise ignored for paths and PIL images, which are
            always RGB as decoded.
        max_pixels: The largest ``H * W`` accepted (default :data:`DEFAULT_MAX_PIXELS`,
            100 million), checked before a file or a lazily opened PIL image is
            decoded; ``None`` for no limit.

    Returns:
        A new C-contiguous ``numpy.ndarray``, dtype ``uint8``, shape ``(H, W, 3)``,
        channels in RGB order. It never shares memory with the input, and the input
        object is never modified.

    Raises:
        TypeError: ``image`` is not one of the accepted types, or is an array whose
            dtype is not ``uint8``.
        ValueError: bad ``image_format``; an array of unsupported shape; an image
            of more than ``max_pixels`` pixels; a path that is not a regular file
            (a directory, a FIFO, a device) or cannot be decoded as an image; a PIL
            image of a mode or with values that cannot be converted.
        FileNotFoundError: the path does not exist.
    """
    image_format = validate_image_format(image_format)
    max_pixels = check_limit("max_pixels", max_pixels)
    if isinstance(image, (str, os.PathLike)):
        return _load_path(image, max_pixels)
    if isinstance(image, Image.Image):
        _check_pixels(image.width, image.height, max_pixels, "the PIL image")
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            _check_pixels(image.shape[1], image.shape[0], max_pixels, "the array")
        return _array_to_rgb(image, image_format)
    raise TypeError(f"expected {_ACCEPTED_TYPES}, got {_type_name(image)}")


class ImageTooLargeError(ValueError):
    """An image of more than ``max_pixels`` pixels (see :func:`load_image`)."""


def _check_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{what} is {width} x {height} = {width * height:,} pixels, more than max_pixels="
            f"{max_pixels:,} (a guard against files that decode to gigabytes); pass a larger "
            "max_pixels to read it (None: no limit)"
        )


def to_input_type(rgb: np.ndarray, like: ImageInput, image_format: str = "RGB") -> ImageInput:
    """Convert an RGB uint8 (H, W, 3) array back to the kind of `like`.

    Used to hand results back in the same kind the user gave:

    * ``like`` is a :class:`PIL.Image.Image` -> a new PIL image of mode ``RGB``;
    * ``like`` is a ``numpy.ndarray`` -> a new C-contiguous uint8 ``(H, W, 3)`` array
      in ``image_format`` order (channels reversed for ``"BGR"``), whatever the
      number of channels of ``like``;
    * ``like`` is a path (``str`` or ``os.PathLike``) -> a new PIL image of mode
      ``RGB``.

    Args:
        rgb: uint8 array of shape ``(H, W, 3)`` in RGB order.
        like: The object whose kind to return (only its type is used).
        image_format: ``"RGB"`` or ``"BGR"`` (case-insensitive); used for arrays.

    Returns:
        A PIL RGB image or a uint8 array, as above. It never shares memory with
        ``rgb``.

    Raises:
        TypeError: ``rgb`` is not a uint8 array, or ``like`` is not an accepted type.
        ValueError: ``rgb`` is not of shape ``(H, W, 3)`` with ``H, W >= 1``, or bad
            ``image_format``.
    """
    image_format = validate_image_format(image_format)
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"rgb must be a numpy.ndarray, got {_type_name(rgb)}")
    if rgb.dtype != np.uint8:
        raise TypeError(f"rgb must have dtype uint8, got {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"rgb must have shape (H, W, 3) with H, W >= 1, got {rgb.shape}")
    if isinstance(like, np.ndarray):
        out = rgb[..., ::-1] if image_format == "BGR" else rgb
        return np.array(out, dtype=np.uint8, order="C", copy=True)
    if isinstance(like, (Image.Image, str, os.PathLike)):
        return Image.fromarray(np.ascontiguousarray(rgb))
    raise TypeError(f"like: expected {_ACCEPTED_TYPES}, got {_type_name(like)}")


# --------------------------------------------------------------------------- helpers


def _type_name(obj: object) -> str:
    cls = type(obj)
    if cls.__module__ in ("builtins", None):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_path(path: str | os.PathLike, max_pixels: int | None) -> np.ndarray:
    """Open, check the size from the header, fully decode and convert an image file; see
    :func:`load_image`."""
    path_str = os.fspath(path)
    if isinstance(path_str, bytes):  # os.PathLike returning bytes
        raise TypeError(f"expected {_ACCEPTED_TYPES} with a str path, got bytes path")
    if not os.path.exists(path_str):
        raise FileNotFoundError(errno.ENOENT, "image file not found", path_str)
    if os.path.isdir(path_str):
        raise ValueError(f"expected an image file, got a directory: {path_str!r}")
    if not stat.S_ISREG(os.stat(path_str).st_mode):  # opening a FIFO would wait for a writer
        raise ValueError(f"expected an image file, got a FIFO, socket or device: {path_str!r}")
    try:
        with Image.open(path_str) as img:
            _check_pixels(img.width, img.height, max_pixels, repr(path_str))  # header only
            img.load()
            return _pil_to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"could not read {path_str!r}: {exc} Set PIL.Image.MAX_IMAGE_PIXELS to read it"
        ) from exc
    except (PermissionError, ImageTooLargeError):
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        # UnidentifiedImageError and "image file is truncated" are OSErrors; some
        # decoders report corrupt data as SyntaxError or ValueError.
        raise ValueError(f"could not read {path_str!r} as an image: {exc}") from exc


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any PIL image to a uint8 (H, W, 3) RGB array without modifying it."""
    try:
        img.load()
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"could not read the PIL image data: {exc}") from exc
    try:
        # Returns a new image (a copy when there is nothing to do).
        img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error) as exc:
        # Malformed EXIF must not make an otherwise readable image unusable.
        logger.warning("ignoring unreadable EXIF orientation: %s", exc)

    mode = img.mode
    if mode == "RGB":
        out = np.asarray(img, dtype=np.uint8)
    elif mode == "P":
        if img.has_transparency_data:
            out = _composite_over_white(np.asarray(img.convert("RGBA")))
        else:
            out = np.asarray(img.convert("RGB"))
    elif mode in _ALPHA_MODES:
        out = _composite_over_white(np.asarray(img.convert("RGBA")))
    elif mode in _PREMULTIPLIED_MODES:
        out = _composite_premultiplied_over_white(np.asarray(img))
    elif mode in _INT_MODES:
        out = _grey_to_rgb(_scale_16bit(np.asarray(img)))
    elif mode == "F":
        out = _grey_to_rgb(_scale_float(np.asarray(img)))
    elif mode in _CONVERTIBLE_MODES:
        out = np.asarray(img.convert("RGB"))
    else:
        try:
            out = np.asarray(img.convert("RGB"))
        except ValueError as exc:
            raise ValueError(f"cannot convert PIL image of mode {mode!r} to RGB: {exc}") from exc
    return np.array(out, dtype=np.uint8, order="C", copy=True)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """Map integers on 0..65535 (others clipped) to uint8, ``round(v * 255 / 65535)``."""
    v = np.clip(values.astype(np.int64), 0, 65535)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _scale_float(values: np.ndarray) -> np.ndarray:
    """Map float greyscale in [0, 1] (scaled by 255) or [0, 255] (as is) to uint8."""
    v = values.astype(np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("PIL image of mode 'F' contains NaN or infinite values")
    lo, hi = float(v.min()), float(v.max())
    if lo >= 0.0 and hi <= 1.0:
        v = v * 255.0
    elif lo < 0.0 or hi > 255.0:
        raise ValueError(
            "PIL image of mode 'F' must have all values in [0, 1] or all in [0, 255], "
            f"got range [{lo}, {hi}]"
        )
    return np.rint(v).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """(H, W) -> new (H, W, 3) by repeating the channel."""
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """Straight-alpha (H, W, 4) RGBA uint8 -> (H, W, 3) RGB over white, rounded."""
    colour = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    blended = colour * alpha + 255 * (255 - alpha)
    return ((blended + 127) // 255).astype(np.uint8)


def _composite_premultiplied_over_white(data: np.ndarray) -> np.ndarray:
    """Premultiplied (H, W, 2) ``La`` or (H, W, 4) ``RGBa`` -> (H, W, 3) RGB over white.

    With premultiplied colour ``c' = c * a / 255`` the result is ``c' + 255 - a``.
    """
    colour = data[:, :, :-1].astype(np.int32)
    alpha = data[:, :, -1:].astype(np.int32)
    out = np.clip(colour + 255 - alpha, 0, 255).astype(np.uint8)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return out


def _array_to_rgb(arr: np.ndarray, image_format: str) -> np.ndarray:
    """Validate a uint8 array and convert it to a new (H, W, 3) RGB array."""
    if arr.dtype != np.uint8:
        raise TypeError(
            f"expected a numpy.ndarray of dtype uint8, got dtype {arr.dtype}; convert it "
            "first, e.g. (img * 255).round().astype(np.uint8) for floats in [0, 1], or "
            "np.clip(img, 0, 255).astype(np.uint8) for integers"
        )
    expected = "(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) with H, W >= 1"
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an image array of shape {expected}, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"expected an image array of shape {expected}, got zero-size shape {arr.shape}"
        )

    if arr.ndim == 2:
        out = _grey_to_rgb(arr)
    elif arr.shape[2] == 1:
        out = np.repeat(arr, 3, axis=2)
    else:
        colour = arr[:, :, 2::-1] if image_format == "BGR" else arr[:, :, :3]
        if arr.shape[2] == 4:
            out = _composite_over_white(np.concatenate([colour, arr[:, :, 3:4]], axis=2))
        else:
            out = colour
    # Always a fresh C-contiguous copy, never a view of the caller's array.
    return np.array(out, dtype=np.uint8, order="C", copy=True)

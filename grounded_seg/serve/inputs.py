"""A ``POST /v1/segment`` request into checked values: the body read within its limit, the fields
validated with the library's own messages, the image decoded only after its header passed.

Every refusal is a :class:`RequestError` carrying the HTTP status the client gets: 413 for too
many bytes or pixels, 415 for a body that is neither multipart nor JSON, 422 for a field or an
image the library refuses. Nothing here can name a file on the server's disk or a model: the
image arrives as bytes and is opened from memory, in a few plain raster formats only.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..checks import check_limit, check_threshold
from ..images import ImageTooLargeError, load_image
from ..prompts import Prompt, normalize_prompt
from .settings import ServeSettings

# The formats the service opens. PIL reads many more, some through external programs (EPS runs
# Ghostscript): a request must not reach those.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
FIELDS = ("image", "prompt", "box_threshold", "text_threshold", "max_detections")


class RequestError(Exception):
    """A request the service refuses: ``status`` (4xx/5xx), a message for the client, headers."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class SegmentRequest:
    """A checked request: the image file's bytes, the prompt and the answer's settings."""

    image: bytes
    prompt: Prompt
    box_threshold: float
    text_threshold: float
    max_detections: int | None

    @property
    def key(self) -> tuple:
        """Requests with equal keys (and images of one size) may share a model call."""
        return (
            tuple(self.prompt.classes),
            self.prompt.caption,
            self.box_threshold,
            self.text_threshold,
            self.max_detections,
        )


async def read_body(headers: Mapping[str, str], chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes: from the
    declared ``Content-Length`` before reading, or while reading a chunked body."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, _too_many_bytes(int(declared), limit, "the request body"))
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestError(413, _too_many_bytes(size, limit, "the request body"))
        parts.append(chunk)
    return b"".join(parts)


def _too_many_bytes(size: int, limit: int, what: str) -> str:
    return (
        f"{what} is more than {limit:,} bytes (got {size:,}); the service takes images of up "
        f"to {limit / 2**20:.3g} MiB (--max-upload-mb)"
    )


def media_type(headers: Mapping[str, str]) -> str:
    """The request's content type without parameters, lower case ("" when none)."""
    return headers.get("content-type", "").split(";")[0].strip().lower()


def parse_json(body: bytes, settings: ServeSettings) -> SegmentRequest:
    """A JSON body ``{"image": BASE64, "prompt": TEXT, "box_threshold": 0.35, ...}``."""
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(422, f"the body is not valid JSON: {err}") from None
    if not isinstance(fields, dict):
        raise RequestError(422, f"expected a JSON object, got {type(fields).__name__}")
    encoded = fields.get("image")
    if not isinstance(encoded, str):
        raise RequestError(
            422, f"image: expected the image file as a base64 string, got {_kind(encoded)}"
        )
    if encoded.startswith("data:") and "," in encoded:  # a data URL, as browsers make them
        encoded = encoded.split(",", 1)[1]
    if len(encoded) > settings.max_upload_bytes * 4 // 3 + 4:
        size = len(encoded) * 3 // 4
        raise RequestError(413, _too_many_bytes(size, settings.max_upload_bytes, "the image"))
    try:
        image = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            422, "image: expected the image file encoded as base64, got other text"
        ) from None
    return _checked(fields, image, settings, from_text=False)


def parse_form(form: Mapping[str, Any], settings: ServeSettings) -> SegmentRequest:
    """A multipart form: an ``image`` file part and text fields (numbers as text)."""
    upload = form.get("image")
    read = getattr(upload, "file", None)
    if read is None:
        raise RequestError(422, f"image: expected a file part named 'image', got {_kind(upload)}")
    image = read.read(settings.max_upload_bytes + 1)
    if len(image) > settings.max_upload_bytes:
        raise RequestError(413, _too_many_bytes(len(image), settings.max_upload_bytes, "the image"))
    return _checked(dict(form), image, settings, from_text=True)


def _checked(
    fields: dict[str, Any], image: bytes, settings: ServeSettings, from_text: bool
) -> SegmentRequest:
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise RequestError(
            422,
            f"unknown field(s) {', '.join(repr(f) for f in unknown)}: expected "
            f"{', '.join(FIELDS)}; the models are the ones the service was started with "
            "(GET /v1/models)",
        )
    if not image:
        raise RequestError(422, "image: the file is empty")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str):
        raise RequestError(422, f"prompt: expected text, got {_kind(prompt)}")
    try:
        normalized = normalize_prompt(prompt)
        box = check_threshold("box_threshold", _number(fields, "box_threshold", 0.35, from_text))
        text = check_threshold("text_threshold", _number(fields, "text_threshold", 0.25, from_text))
        most = fields.get("max_detections", 100)
        if from_text and isinstance(most, str):
            most = _int_text("max_detections", most)
        most = check_limit("max_detections", most)
    except (TypeError, ValueError) as err:
        raise RequestError(422, str(err)) from None
    return SegmentRequest(image, normalized, box, text, most)


def _number(fields: dict[str, Any], name: str, default: float, from_text: bool) -> Any:
    value = fields.get(name, default)
    if from_text and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}") from None
    return value


def _int_text(name: str, value: str) -> int | None:
    if value.strip().lower() in ("", "none"):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}") from None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return "text" if value else "an empty string"
    return type(value).__name__


def decode_image(data: bytes, max_pixels: int | None) -> np.ndarray:
    """The uploaded file as an RGB uint8 ``(H, W, 3)`` array, as :func:`load_image` makes it
    (EXIF orientation applied, alpha over white). Width x height is checked from the header
    first: more than ``max_pixels`` (or more than PIL's own bomb limit) is a 413, and nothing
    is decoded; a file that is not a PNG, JPEG, WebP, BMP, GIF or TIFF image, or a damaged one,
    is a 422."""
    try:
        with warnings.catch_warnings():  # PIL warns on large headers; the check below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as opened:
                return load_image(opened, max_pixels=max_pixels)
    except ImageTooLargeError as err:
        raise RequestError(413, _cli_free(str(err))) from None
    except Image.DecompressionBombError as err:
        raise RequestError(413, f"the image is too large to decode: {err}") from None
    except Image.UnidentifiedImageError:
        raise RequestError(
            422,
            f"image: not an image file the service reads ({', '.join(IMAGE_FORMATS)}), "
            f"or a damaged one ({len(data):,} bytes starting {data[:8]!r})",
        ) from None
    except ValueError as err:  # the library's message: truncated data, an unusable mode
        message = str(err).replace("could not read the PIL image data", "damaged image data")
        raise RequestError(422, f"image: {message}") from None
    except (OSError, SyntaxError, EOFError) as err:
        raise RequestError(422, f"image: could not read the file: {err}") from None


def _cli_free(message: str) -> str:
    """The library's size message, with the service's option instead of the Python argument."""
    return (
        message.replace("the PIL image", "the image")
        .replace(
            "; pass a larger max_pixels to read it (None: no limit)",
            "; the service was started with --max-pixels",
        )
        .replace("max_pixels=", "--max-pixels ")
    )

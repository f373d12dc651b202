"""A segmentation answer as the service returns it: JSON with COCO RLE masks, or a PNG."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import supervision as sv
from PIL import Image

from ..export import detections_to_json
from ..predictor import nothing_found
from ..prompts import Prompt
from ..proposers.base import Proposals
from ..visualize import annotate, class_colour


def answer_json(
    detections: sv.Detections, image: np.ndarray, prompt: Prompt, timings: dict[str, float],
    batch_size: int,
) -> dict[str, Any]:  # fmt: skip
    """The JSON answer of ``POST /v1/segment``.

    ``detections``: one row per detection, best first: ``box_xyxy`` (pixels of the uploaded
    image, x then y, top-left origin), ``confidence``, ``class_id`` (index into
    ``prompt.classes``), ``class_name``, ``phrase``, ``mask_score``, ``mask_area`` (pixels),
    ``mask_rle`` (COCO uncompressed RLE, column-major, ``size`` ``[H, W]``: readable by
    ``pycocotools.mask.frPyObjects`` or ``grounded_seg.export.rle_decode``) and ``color`` (the
    class's drawing colour, ``#rrggbb``). ``timings_ms``: read, decode, queue, model, total.
    """
    rows = detections_to_json(detections, rle=True)
    for row in rows:
        row["color"] = class_colour(row["class_name"]).as_hex()
    height, width = image.shape[:2]
    best = detections.metadata.get("best_score")
    empty = None
    if not rows:
        empty = _empty_reason(detections, prompt)
    return {
        "image": {"width": int(width), "height": int(height)},
        "prompt": {"caption": prompt.caption, "classes": list(prompt.classes)},
        "detections": rows,
        "nothing_found": empty,
        "best_score": None if best is None else round(float(best), 4),
        "batch_size": batch_size,
        "timings_ms": {k: round(v, 2) for k, v in timings.items()},
    }


def _empty_reason(detections: sv.Detections, prompt: Prompt) -> str:
    """The library's sentence on an empty result (best score against the threshold)."""
    meta = detections.metadata
    proposals = dataclasses.replace(
        Proposals.empty(meta.get("best_score")), unknown_words=tuple(meta.get("unknown_words", ()))
    )
    return nothing_found(prompt, proposals, float(meta.get("box_threshold", 0.0)))


def answer_png(detections: sv.Detections, image: np.ndarray) -> bytes:
    """The uploaded image with masks, boxes and labels drawn (``grounded_seg.annotate``), PNG."""
    return png_bytes(np.asarray(annotate(image, detections)))


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 ``(H, W, 3)`` array as a PNG file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()

"""Detections to files: JSON rows with COCO RLE masks, per-detection mask PNGs and a label map.

What Grounded-Segment-Anything users expect from a run: one grey PNG per mask, a combined label
map (``mask.png``: 0 background, detection ``i`` drawn with value ``i + 1``, best on top) and,
in the JSON, each mask as COCO run-length encoding (uncompressed: ``counts`` is a list, readable
by ``pycocotools.mask.frPyObjects`` and by :func:`rle_decode`, no pycocotools needed to write it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from .outputs import Writer, bytes_writer, image_writer

LABEL_MAP = "mask.png"
_OWNED = re.compile(r"^(\d{3,}_[a-z0-9-]+\.png|mask\.png)$")  # the files a run writes there


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of a bool ``(H, W)`` mask: run lengths in column-major order,
    starting with a run of zeros (possibly empty), and ``size`` ``[H, W]``."""
    flat = np.asarray(mask, bool).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """The bool ``(H, W)`` mask of an uncompressed RLE (the inverse of :func:`rle_encode`)."""
    height, width = rle["size"]
    values = np.zeros(len(rle["counts"]), bool)
    values[1::2] = True
    flat = np.repeat(values, rle["counts"])
    if flat.size != height * width:
        raise ValueError(f"RLE: counts sum to {flat.size}, expected {height} x {width}")
    return flat.reshape((height, width), order="F")


def detections_to_json(
    detections: sv.Detections, mask_files: Sequence[Path] = (), rle: bool = False
) -> list[dict]:
    """One JSON-ready dict per detection: instance id (its value in the label map), box (xyxy
    pixels), scores, class, mask area and, with ``rle``, the mask as COCO uncompressed RLE."""
    rows = []
    for i in range(len(detections)):
        row = {
            "instance_id": i + 1,
            "box_xyxy": [round(float(v), 2) for v in detections.xyxy[i]],
            "confidence": round(float(detections.confidence[i]), 4),
            "class_id": int(detections.class_id[i]),
            "class_name": str(detections.data["class_name"][i]),
            "phrase": str(detections.data["phrase"][i]),
            "mask_score": round(float(detections.data["mask_score"][i]), 4),
            "mask_area": int(detections.mask[i].sum()),
        }
        if mask_files:
            row["mask_file"] = str(mask_files[i])
        if rle:
            row["mask_rle"] = rle_encode(detections.mask[i])
        rows.append(row)
    return rows


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "object"


def mask_paths(masks_dir: Path, detections: sv.Detections) -> list[Path]:
    """``masks_dir/000_black-cat.png``, ... : one file name per detection, in order."""
    names = detections.data.get("class_name", [])
    return [masks_dir / f"{i:03d}_{_slug(str(names[i]))}.png" for i in range(len(detections))]


def mask_writers(detections: sv.Detections, paths: Sequence[Path]) -> list[tuple[Path, Writer]]:
    """A writer per mask: a grey PNG, 255 inside the mask and 0 outside."""
    return [
        (path, image_writer(mask.astype(np.uint8) * 255, "PNG"))
        for path, mask in zip(paths, detections.mask, strict=True)
    ]


def label_map(detections: sv.Detections) -> np.ndarray:
    """``(H, W)`` instance ids: 0 background, detection ``i`` as ``i + 1`` where its mask is and
    no better detection's is (uint8 up to 255 detections, uint16 beyond)."""
    count = len(detections)
    if detections.mask is None:
        raise ValueError("detections: expected masks (N, H, W) for a label map, got none")
    height, width = detections.mask.shape[1:]
    out = np.zeros((height, width), np.uint8 if count <= 255 else np.uint16)
    for i in range(count - 1, -1, -1):  # the best (first) last, so it ends on top
        out[detections.mask[i]] = i + 1
    return out


def owned_files(folder: Path) -> list[Path]:
    """The files in ``folder`` a run of ``--masks-dir`` writes (``000_cat.png``, ``mask.png``);
    nothing else there is ever touched."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and _OWNED.match(p.name))


def json_writer(content: Any) -> Writer:
    return bytes_writer((json.dumps(content, indent=2) + "\n").encode("utf-8"))

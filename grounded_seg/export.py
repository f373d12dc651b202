"""Detections to files: JSON-ready rows and per-detection mask PNGs (the CLI's outputs)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from .outputs import Writer, bytes_writer, image_writer


def detections_to_json(detections: sv.Detections, mask_files: Sequence[Path] = ()) -> list[dict]:
    """One JSON-ready dict per detection: box (xyxy pixels), scores, class and mask area."""
    rows = []
    for i in range(len(detections)):
        row = {
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


def json_writer(content: Any) -> Writer:
    return bytes_writer((json.dumps(content, indent=2) + "\n").encode("utf-8"))

"""A run's results as it goes: one small JSON record per finished batch, written atomically.

Why records and not the final files: a run of hours must survive being killed at any moment.
Each batch's result lands in ``records/<k // 1000>/<k>.json`` by temp file + rename, so a batch
is either recorded whole or not at all; ``--resume`` redoes exactly the batches without a
record, and the final files are always assembled from the records in image order, so a resumed
run writes the same bytes as an uninterrupted one. One file per batch (not an appended log)
also works unchanged where several processes (Ray actors) write at once.

An image record: ``index``, ``name``, ``width``, ``height`` and ``detections`` (``box`` xyxy
pixels, ``score``, ``class_id`` in the data set's classes, ``class_name``, ``phrase``,
``mask_score``, ``area`` pixels, ``rle`` COCO compressed RLE of the mask); or ``index``,
``name`` and ``error`` (why it could not be labelled).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from ..outputs import atomic_write, bytes_writer
from .ontology import Ontology

RECORDS = "records"
RUN_FILE = "run.json"


def detection_rows(detections: sv.Detections, ontology: Ontology) -> list[dict[str, Any]]:
    """One record row per detection, best first; classes mapped through ``ontology``."""
    rows = []
    for i in range(len(detections)):
        mask = detections.mask[i]
        class_id = ontology.class_of_phrase[int(detections.class_id[i])]
        rows.append(
            {
                "box": [round(float(v), 3) for v in detections.xyxy[i]],
                "score": round(float(detections.confidence[i]), 5),
                "class_id": class_id,
                "class_name": ontology.classes[class_id],
                "phrase": str(detections.data["phrase"][i]),
                "mask_score": round(float(detections.data["mask_score"][i]), 5),
                "area": int(mask.sum()),
                # supervision's COCO RLE, the same string pycocotools.mask.encode makes
                "rle": sv.mask_to_rle(mask, compressed=True),
            }
        )
    return rows


def record_mask(row: dict[str, Any], height: int, width: int) -> np.ndarray:
    """The bool ``(height, width)`` mask of a detection row."""
    return sv.rle_to_mask(row["rle"], (width, height)).astype(bool)


def record_detections(image: dict[str, Any]) -> sv.Detections:
    """An image record's detections as ``supervision.Detections`` (masks decoded)."""
    rows = image.get("detections", [])
    height, width = image["height"], image["width"]
    if not rows:
        empty = sv.Detections.empty()
        empty.mask = np.zeros((0, height, width), bool)
        return empty
    return sv.Detections(
        xyxy=np.array([r["box"] for r in rows], np.float32),
        mask=np.stack([record_mask(r, height, width) for r in rows]),
        confidence=np.array([r["score"] for r in rows], np.float32),
        class_id=np.array([r["class_id"] for r in rows], np.int64),
        data={
            "class_name": np.array([r["class_name"] for r in rows], dtype=str),
            "phrase": np.array([r["phrase"] for r in rows], dtype=str),
            "mask_score": np.array([r["mask_score"] for r in rows], np.float32),
        },
    )


def batch_path(root: Path, batch: int) -> Path:
    return root / RECORDS / f"{batch // 1000:06d}" / f"{batch:09d}.json"


def write_batch(root: Path, batch: int, images: Sequence[dict[str, Any]]) -> Path:
    """Record batch ``batch`` atomically (a record already there is replaced: same content)."""
    path = batch_path(root, batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = json.dumps({"batch": batch, "images": list(images)}, separators=(",", ":"))
    return atomic_write(path, bytes_writer(content.encode("utf-8")), overwrite=True)


def done_batches(root: Path) -> set[int]:
    """The batches recorded under ``root`` (a half-written temporary file is not a record)."""
    folder = root / RECORDS
    if not folder.is_dir():
        return set()
    return {
        int(p.stem)
        for sub in folder.iterdir()
        if sub.is_dir()
        for p in sub.glob("*.json")
        if p.stem.isdigit()
    }


def read_images(root: Path) -> Iterator[dict[str, Any]]:
    """Every recorded image in batch order (the run's plan: images of one size together, by
    name within a size), one batch file in memory at a time."""
    for batch in sorted(done_batches(root)):
        path = batch_path(root, batch)
        yield from json.loads(path.read_text(encoding="utf-8"))["images"]


def settings_digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def write_run(root: Path, settings: dict[str, Any]) -> None:
    """The settings a run's records were made with (``--resume`` checks them)."""
    (root / RECORDS).mkdir(parents=True, exist_ok=True)
    content = json.dumps(settings, indent=2, sort_keys=True) + "\n"
    atomic_write(root / RECORDS / RUN_FILE, bytes_writer(content.encode()), overwrite=True)


def read_run(root: Path) -> dict[str, Any] | None:
    path = root / RECORDS / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a run file ({err}); start again with --overwrite") from err


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The settings that differ, as ``name: old -> new`` lines."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def file_digest(paths: Sequence[os.PathLike | str]) -> str:
    """A digest of the input list (names and order), so a resume sees the same images."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.fsencode(path) + b"\0")
    return digest.hexdigest()[:16]

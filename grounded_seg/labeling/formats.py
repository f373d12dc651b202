"""The data set's final files, assembled from a run's records: COCO, YOLO segmentation, masks.

Why not ``supervision.DetectionDataset.as_coco`` / ``as_yolo`` whole: they take every image's
``Detections`` (full-size masks) in memory at once, which a folder of 10^4 to 10^7 images does
not fit; ``as_coco`` also writes polygons, not RLE, and no scores. So the files are streamed
here from the records, with supervision's own pieces where they do the job: its COCO RLE
(``mask_to_rle``, the same string as ``pycocotools``) and its YOLO polygon lines
(``detections_to_yolo_annotations``). Every file is written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import yaml

from ..export import label_map
from ..outputs import atomic_write, bytes_writer, image_writer
from .records import read_images, record_detections

FORMATS = ("coco", "yolo", "masks")
COCO_FILE = "annotations.json"
YOLO_FILE = "data.yaml"
MASKS_FILE = "masks.json"
IMAGES, LABELS, MASKS = "images", "labels", "masks"


def _labelled(root: Path) -> Callable[[], Iterator[dict[str, Any]]]:
    """The recorded images that were labelled (failed ones are listed in failed.txt)."""

    def images() -> Iterator[dict[str, Any]]:
        return (image for image in read_images(root) if "error" not in image)

    return images


def write_coco(root: Path, classes: Sequence[str], info: dict[str, Any]) -> Path:
    """``annotations.json``: ``images`` (``id`` = input index + 1, ``file_name`` relative to
    ``images/``, ``width``, ``height``), ``categories`` (``id`` = class index + 1), and
    ``annotations`` (``bbox`` ``[x, y, w, h]`` pixels, ``area`` mask pixels, ``segmentation``
    COCO RLE with string counts, ``score``, ``iscrowd`` 0; also ``phrase`` and ``mask_score``).
    Images go in the run's batch order; the bytes depend only on the records."""
    images = _labelled(root)

    def write(handle: IO[bytes]) -> None:
        def put(text: str) -> None:
            handle.write(text.encode("utf-8"))

        categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
        put('{"info": ' + json.dumps(info, sort_keys=True))
        put(',\n"categories": ' + json.dumps(categories))
        put(',\n"images": [')
        for n, image in enumerate(images()):
            entry = {
                "id": image["index"] + 1,
                "file_name": image["name"],
                "width": image["width"],
                "height": image["height"],
            }
            put(("\n" if n == 0 else ",\n") + json.dumps(entry))
        put('],\n"annotations": [')
        next_id = 1
        for image in images():
            for row in image["detections"]:
                x1, y1, x2, y2 = row["box"]
                size = [image["height"], image["width"]]
                entry = {
                    "id": next_id,
                    "image_id": image["index"] + 1,
                    "category_id": row["class_id"] + 1,
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "area": row["area"],
                    "segmentation": {"size": size, "counts": row["rle"]},
                    "score": row["score"],
                    "iscrowd": 0,
                    "phrase": row["phrase"],
                    "mask_score": row["mask_score"],
                }
                put(("\n" if next_id == 1 else ",\n") + json.dumps(entry))
                next_id += 1
        put("]}\n")

    return atomic_write(root / COCO_FILE, write, overwrite=True)


def _stem_path(name: str, suffix: str) -> PurePosixPath:
    return PurePosixPath(name).with_suffix(suffix)


def write_yolo(root: Path, classes: Sequence[str]) -> Path:
    """``labels/<name>.txt`` per image (YOLO segmentation: ``class x1 y1 x2 y2 ...`` polygon
    vertices normalised to [0, 1], one line per connected region, by supervision; an image
    with nothing found gets an empty file) and ``data.yaml`` (``train``, ``val``, ``nc``,
    ``names``) as Ultralytics reads it."""
    import supervision as sv

    for image in _labelled(root)():
        detections = record_detections(image)
        # every contour point kept (supervision's default drops 75% of them: IoU 0.84 with
        # the mask for a 30 px object); straight runs are still merged by OpenCV
        lines = sv.dataset.formats.yolo.detections_to_yolo_annotations(
            detections, (image["height"], image["width"], 3), approximation_percentage=0.0
        )
        target = root / LABELS / _stem_path(image["name"], ".txt")
        target.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(line + "\n" for line in lines)
        atomic_write(target, bytes_writer(text.encode("utf-8")), overwrite=True)
    # no "path": Ultralytics then resolves train/val against this file's folder (a relative
    # "path" would be taken relative to its global datasets folder instead)
    data = {"train": IMAGES, "val": IMAGES, "nc": len(classes), "names": list(classes)}
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return atomic_write(root / YOLO_FILE, bytes_writer(text.encode("utf-8")), overwrite=True)


def write_masks(root: Path, classes: Sequence[str]) -> Path:
    """``masks/<name>.png`` per image: instance ids (0 background, detection ``i`` as
    ``i + 1``, the best on top; 8-bit, 16-bit beyond 255 detections) and ``masks.json``:
    ``classes`` and, per image, ``file_name``, ``mask_file``, ``width``, ``height`` and its
    ``instances`` (``id``, ``class_id``, ``class_name``, ``phrase``, ``score``,
    ``mask_score``, ``box_xyxy``, ``area``)."""
    entries = []
    for image in _labelled(root)():
        detections = record_detections(image)
        mask_file = (PurePosixPath(MASKS) / _stem_path(image["name"], ".png")).as_posix()
        target = root / mask_file
        target.parent.mkdir(parents=True, exist_ok=True)
        ids = (
            label_map(detections)
            if len(detections)
            else np.zeros((image["height"], image["width"]), np.uint8)
        )
        atomic_write(target, image_writer(ids, "PNG"), overwrite=True)
        instances = [
            {
                "id": i + 1,
                "class_id": row["class_id"],
                "class_name": row["class_name"],
                "phrase": row["phrase"],
                "score": row["score"],
                "mask_score": row["mask_score"],
                "box_xyxy": row["box"],
                "area": row["area"],
            }
            for i, row in enumerate(image["detections"])
        ]
        entries.append(
            {
                "file_name": image["name"],
                "mask_file": mask_file,
                "width": image["width"],
                "height": image["height"],
                "instances": instances,
            }
        )
    content = json.dumps({"classes": list(classes), "images": entries}, indent=1) + "\n"
    return atomic_write(root / MASKS_FILE, bytes_writer(content.encode("utf-8")), overwrite=True)


def write_format(root: Path, format: str, classes: Sequence[str], info: dict[str, Any]) -> Path:
    """Write ``format``'s files from the records under ``root``; returns the main file."""
    if format == "coco":
        return write_coco(root, classes, info)
    if format == "yolo":
        return write_yolo(root, classes)
    if format == "masks":
        return write_masks(root, classes)
    raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")

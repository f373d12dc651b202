"""A COCO data set read and checked before any model runs: :func:`load_coco_dataset`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..prompts import normalize_prompt

logger = logging.getLogger(__name__)

_INSTALL_HINT = 'pip install pycocotools (or, in the checkout, pip install -e ".[eval]")'


def import_pycocotools() -> tuple[Any, Any, Any]:
    """``(COCO, COCOeval, pycocotools.mask)``; ``ImportError`` saying how to install them."""
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return COCO, COCOeval, mask_utils


def _load_dataset(annotation_file: Path) -> dict[str, Any]:
    """Read and check a COCO annotation file; fills the ``iscrowd``/``area`` COCOeval needs."""
    if not annotation_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {annotation_file}")
    try:
        data = json.loads(annotation_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        message = f"{annotation_file}: not a COCO annotation file (bad JSON: {err})"
        raise ValueError(message) from err
    if not isinstance(data, dict):
        raise ValueError(f"{annotation_file}: not a COCO annotation file (expected a JSON object)")
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise ValueError(
            f"{annotation_file}: not a COCO annotation file (no {', '.join(map(repr, missing))})"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise ValueError(f"{annotation_file}: {key!r} must be a list")
    if not data["categories"]:
        raise ValueError(f"{annotation_file}: no categories, nothing to prompt for")
    for key, needed in (
        ("images", ("id", "file_name")),
        ("categories", ("id", "name")),
        ("annotations", ("image_id", "category_id", "bbox")),
    ):
        for index, entry in enumerate(data[key]):
            absent = [name for name in needed if not isinstance(entry, dict) or name not in entry]
            if absent:
                raise ValueError(f"{annotation_file}: {key}[{index}] has no {', '.join(absent)}")
    image_ids = [image["id"] for image in data["images"]]
    category_ids = [category["id"] for category in data["categories"]]
    for key, ids in (("image", image_ids), ("category", category_ids)):
        if len(set(ids)) != len(ids):
            raise ValueError(f"{annotation_file}: repeated {key} ids")
    known_images, known_categories = set(image_ids), set(category_ids)
    for index, ann in enumerate(data["annotations"]):
        if ann["image_id"] not in known_images or ann["category_id"] not in known_categories:
            raise ValueError(
                f"{annotation_file}: annotations[{index}] refers to an unknown image or category"
            )
        ann.setdefault("id", index + 1)
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    return data


@dataclass(frozen=True)
class CocoDataset:
    """A checked COCO data set, ready to evaluate (made by :func:`load_coco_dataset`).

    ``classes``: the category names ordered by category id, normalised as a prompt;
    ``category_ids[i]`` is the id of ``classes[i]``. ``images`` / ``paths``: the image entries
    to evaluate and their files (all present). ``has_masks``: every annotation has a
    ``segmentation``, so masks can be scored.
    """

    annotation_file: Path
    image_dir: Path
    data: dict[str, Any] = field(repr=False)
    classes: tuple[str, ...]
    category_ids: tuple[int, ...]
    images: tuple[dict[str, Any], ...] = field(repr=False)
    paths: tuple[Path, ...] = field(repr=False)
    has_masks: bool


def load_coco_dataset(
    annotation_file: str | Path,
    image_dir: str | Path | None = None,
    *,
    max_images: int | None = None,
) -> CocoDataset:
    """Read and check a COCO data set without running any model.

    ``annotation_file``: COCO JSON with ``images`` (``id``, ``file_name``), ``annotations``
    (``bbox`` ``[x, y, w, h]`` pixels; ``segmentation`` polygons or RLE for mask scores) and
    ``categories`` (``id``, ``name``). ``image_dir``: the folder ``file_name`` is relative to
    (default: ``images/`` next to the annotation file). ``max_images``: keep only the first N
    images of the file.

    Raises ``FileNotFoundError`` for a missing annotation file or image (every kept image is
    checked), ``ValueError`` for a file that is not COCO or whose category names cannot be a
    prompt, and ``ImportError`` without pycocotools (checked here, before any model loads).
    """
    import_pycocotools()
    annotation_file = Path(annotation_file)
    if max_images is not None and (
        isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1
    ):
        raise ValueError(f"max_images: expected an int >= 1 or None, got {max_images!r}")
    data = _load_dataset(annotation_file)
    folder = Path(image_dir) if image_dir is not None else annotation_file.parent / "images"
    categories = sorted(data["categories"], key=lambda c: c["id"])
    names = [str(c["name"]) for c in categories]
    try:
        prompt = normalize_prompt(names)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{annotation_file}: category names cannot be a prompt: {err}") from err
    has_masks = all("segmentation" in ann for ann in data["annotations"])
    if not has_masks:
        logger.warning("%s: annotations without segmentation; masks not scored", annotation_file)
    images = data["images"][:max_images] if max_images is not None else data["images"]
    paths = [folder / str(image["file_name"]) for image in images]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path} (from {annotation_file})")
    return CocoDataset(
        annotation_file=annotation_file,
        image_dir=folder,
        data=data,
        classes=prompt.classes,
        category_ids=tuple(int(c["id"]) for c in categories),
        images=tuple(images),
        paths=tuple(paths),
        has_masks=has_masks,
    )

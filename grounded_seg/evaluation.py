"""COCO evaluation: run a :class:`GroundedSAM` over a COCO data set and score it with ``COCOeval``.

>>> from grounded_seg import GroundedSAM                                   # doctest: +SKIP
>>> from grounded_seg.evaluation import evaluate_coco                      # doctest: +SKIP
>>> report = evaluate_coco(GroundedSAM(), "val/annotations.json")          # doctest: +SKIP
>>> print(report.format_table())                                           # doctest: +SKIP

The prompt is the data set's category names, in category-id order, one ``predict`` per image;
a detection's ``class_id`` is the index of its category in that list. Boxes are scored as COCO
``bbox`` results and masks as compressed-RLE ``segm`` results, both with the detection's
``confidence`` as score. Needs ``pycocotools`` (``pip install pycocotools``, or the checkout's
``pip install -e ".[eval]"``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checks import check_threshold
from .images import load_image
from .predictor import GroundedSAM
from .progress import progress_bar
from .prompts import normalize_prompt

logger = logging.getLogger(__name__)

STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)
"""The 12 numbers of ``COCOeval.stats``, in order (AP averaged over IoU 0.50:0.05:0.95)."""

_INSTALL_HINT = 'pip install pycocotools (or, in the checkout, pip install -e ".[eval]")'


@dataclass(frozen=True)
class ClassAP:
    """AP@[.50:.95] of one category (all areas, 100 detections per image).

    ``name``: the category's name as prompted (normalised by ``normalize_prompt``).
    ``box_ap`` / ``mask_ap`` are in [0, 1], ``None`` when the evaluated images hold no
    ground truth of the category (or, for masks, when the data set has no masks).
    ``num_gt``: non-crowd ground-truth instances in the evaluated images; ``num_detections``:
    detections labelled with the category.
    """

    category_id: int
    name: str
    num_gt: int
    num_detections: int
    box_ap: float | None
    mask_ap: float | None


@dataclass
class EvaluationReport:
    """Result of :func:`evaluate_coco`.

    ``box_stats`` / ``mask_stats``: the 12 ``COCOeval.stats`` keyed by :data:`STAT_NAMES`, each
    in [0, 1], or ``None`` where COCO defines none (no ground truth in that area range). Mask
    metrics are all ``None`` when the ground truth has no ``segmentation``. ``seconds`` is the
    wall-clock time of the whole run (images, models, ``COCOeval``), ``predict_seconds`` that
    of loading images and predicting only.
    """

    annotation_file: str
    image_dir: str
    classes: list[str]
    num_images: int
    num_detections: int
    seconds: float
    predict_seconds: float
    box_threshold: float
    text_threshold: float
    box_stats: dict[str, float | None]
    mask_stats: dict[str, float | None]
    per_class: list[ClassAP] = field(default_factory=list)

    @property
    def box_ap(self) -> float | None:
        """Box AP@[.50:.95], in [0, 1]."""
        return self.box_stats["AP"]

    @property
    def box_ap50(self) -> float | None:
        """Box AP at IoU 0.50, in [0, 1]."""
        return self.box_stats["AP50"]

    @property
    def box_ap75(self) -> float | None:
        """Box AP at IoU 0.75, in [0, 1]."""
        return self.box_stats["AP75"]

    @property
    def mask_ap(self) -> float | None:
        """Mask AP@[.50:.95], in [0, 1]."""
        return self.mask_stats["AP"]

    @property
    def mask_ap50(self) -> float | None:
        """Mask AP at IoU 0.50, in [0, 1]."""
        return self.mask_stats["AP50"]

    @property
    def mask_ap75(self) -> float | None:
        """Mask AP at IoU 0.75, in [0, 1]."""
        return self.mask_stats["AP75"]

    @property
    def seconds_per_image(self) -> float:
        """Mean seconds of loading and predicting per image (0 with no images)."""
        return self.predict_seconds / self.num_images if self.num_images else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: every field, plus the six headline APs at the top level."""
        result = asdict(self)
        headline = {
            "box_ap": self.box_ap,
            "box_ap50": self.box_ap50,
            "box_ap75": self.box_ap75,
            "mask_ap": self.mask_ap,
            "mask_ap50": self.mask_ap50,
            "mask_ap75": self.mask_ap75,
            "seconds_per_image": self.seconds_per_image,
        }
        return {**headline, **result}

    def format_table(self) -> str:
        """A plain-text table: AP / AP50 / AP75 for boxes and masks, then AP per class."""

        def cell(value: float | None) -> str:
            return "-" if value is None else f"{100 * value:.1f}"

        width = max([len("class"), *(len(c.name) for c in self.per_class)])
        lines = [
            f"{self.num_images} image(s), {self.num_detections} detection(s), "
            f"{self.seconds:.1f} s ({self.seconds_per_image:.3f} s/image predicting); "
            f"box_threshold {self.box_threshold:g}, AP in %",
            "",
            f"{'':<6} {'AP':>6} {'AP50':>6} {'AP75':>6}",
            f"{'box':<6} {cell(self.box_ap):>6} {cell(self.box_ap50):>6} {cell(self.box_ap75):>6}",
            f"{'mask':<6} {cell(self.mask_ap):>6} {cell(self.mask_ap50):>6} "
            f"{cell(self.mask_ap75):>6}",
        ]
        if self.per_class:
            lines += [
                "",
                f"{'class':<{width}} {'gt':>6} {'dets':>6} {'box AP':>7} {'mask AP':>8}",
            ]
            lines += [
                f"{c.name:<{width}} {c.num_gt:>6} {c.num_detections:>6} {cell(c.box_ap):>7} "
                f"{cell(c.mask_ap):>8}"
                for c in self.per_class
            ]
        return "\n".join(lines)


def _import_pycocotools() -> tuple[Any, Any, Any]:
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


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    return {
        name: (None if value < 0 or math.isnan(value) else float(value))
        for name, value in zip(STAT_NAMES, values, strict=True)
    }


def _per_category_ap(coco_eval: Any) -> dict[int, float | None]:
    """AP@[.50:.95] per category id from ``eval["precision"]`` (area all, last maxDets)."""
    precision = np.asarray(coco_eval.eval["precision"])  # (T, R, K, A, M); -1 = undefined
    result: dict[int, float | None] = {}
    for k, category_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, k, 0, -1]
        valid = values[(values > -1) & ~np.isnan(values)]
        result[int(category_id)] = float(valid.mean()) if valid.size else None
    return result


def _run_cocoeval(
    coco_cls: Any,
    coco_eval_cls: Any,
    coco_gt: Any,
    results: list[dict[str, Any]],
    iou_type: str,
    image_ids: list[int],
) -> tuple[dict[str, float | None], dict[int, float | None]]:
    """``COCOeval`` of ``results`` on ``image_ids``; its console output goes to the debug log."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes cannot take an empty list; no detections is a valid (all-zero) result
            coco_dt = coco_cls()
            coco_dt.dataset = {
                "images": list(coco_gt.dataset["images"]),
                "categories": list(coco_gt.dataset["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        coco_eval = coco_eval_cls(coco_gt, coco_dt, iou_type)
        coco_eval.params.imgIds = list(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.debug("COCOeval %s:\n%s", iou_type, buffer.getvalue())
    return _stats(coco_eval.stats), _per_category_ap(coco_eval)


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
    _import_pycocotools()
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


def evaluate_coco(
    predictor: GroundedSAM,
    annotation_file: str | Path | CocoDataset,
    image_dir: str | Path | None = None,
    *,
    box_threshold: float = 0.0,
    text_threshold: float = 0.25,
    max_images: int | None = None,
    progress: bool = True,
    max_detections: int | None = 100,
) -> EvaluationReport:
    """Run ``predictor`` on the images of a COCO data set and score boxes and masks.

    ``annotation_file``, ``image_dir``, ``max_images``: as in :func:`load_coco_dataset`
    (``annotation_file`` may also be its result, with ``image_dir`` and ``max_images`` left
    ``None``); images left out by ``max_images`` are left out of the scores too. The prompt is
    the category names ordered by category id, one ``predict`` per image. ``box_threshold`` /
    ``text_threshold`` go to ``predict``; the default box threshold 0 keeps every box, as AP
    wants the whole score range; ``max_detections`` per image, 100 as COCO's ``maxDets`` (the
    scores read no more). ``progress``: a progress bar on stderr, and a log line at INFO about
    ten times per run.

    Raises what :func:`load_coco_dataset` raises (every image is checked before any
    prediction), and ``ValueError`` for an image whose size differs from its annotation.
    """
    start = time.perf_counter()
    coco_cls, coco_eval_cls, mask_utils = _import_pycocotools()
    box_threshold = check_threshold("box_threshold", box_threshold)
    text_threshold = check_threshold("text_threshold", text_threshold)
    if isinstance(annotation_file, CocoDataset):
        if image_dir is not None or max_images is not None:
            raise ValueError("image_dir and max_images go to load_coco_dataset with a CocoDataset")
        dataset = annotation_file
    else:
        dataset = load_coco_dataset(annotation_file, image_dir, max_images=max_images)
    data, images, paths = dataset.data, dataset.images, dataset.paths
    category_ids, has_masks = list(dataset.category_ids), dataset.has_masks
    prompt = normalize_prompt(list(dataset.classes))

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = coco_cls()
        coco_gt.dataset = data
        coco_gt.createIndex()

    box_results: list[dict[str, Any]] = []
    mask_results: list[dict[str, Any]] = []
    detections_per_category = dict.fromkeys(category_ids, 0)
    every = max(1, len(images) // 10)
    predict_start = time.perf_counter()
    pairs = progress_bar(zip(images, paths, strict=True), len(images), "eval", progress)
    for done, (image, path) in enumerate(pairs, start=1):
        rgb = load_image(path)
        height, width = rgb.shape[:2]
        expected = (image.get("height", height), image.get("width", width))
        if has_masks and expected != (height, width):
            raise ValueError(
                f"{path}: image is {height} x {width}, the annotation file says "
                f"{expected[0]} x {expected[1]}"
            )
        predictor.set_image(rgb)
        detections = predictor.predict(prompt, box_threshold, text_threshold, max_detections)
        predictor.reset_image()
        if len(detections):
            cats = [category_ids[int(i)] for i in detections.class_id]
            scores = [float(s) for s in detections.confidence]
            for category_id in cats:
                detections_per_category[category_id] += 1
            for (x1, y1, x2, y2), category_id, score in zip(
                detections.xyxy.tolist(), cats, scores, strict=True
            ):
                box_results.append(
                    {
                        "image_id": image["id"],
                        "category_id": category_id,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": score,
                    }
                )
            if has_masks:
                stacked = np.asfortranarray(detections.mask.transpose(1, 2, 0).astype(np.uint8))
                for rle, category_id, score in zip(
                    mask_utils.encode(stacked), cats, scores, strict=True
                ):
                    rle["counts"] = rle["counts"].decode("ascii")
                    mask_results.append(
                        {
                            "image_id": image["id"],
                            "category_id": category_id,
                            "segmentation": rle,
                            "score": score,
                        }
                    )
        if progress and (done % every == 0 or done == len(images)):
            elapsed = time.perf_counter() - predict_start
            logger.info(
                "%d/%d images, %d detections, %.2f s/image, %.0f s left",
                done,
                len(images),
                len(box_results),
                elapsed / done,
                elapsed / done * (len(images) - done),
            )
    predict_seconds = time.perf_counter() - predict_start

    image_ids = [image["id"] for image in images]
    box_stats, box_per_class = _run_cocoeval(
        coco_cls, coco_eval_cls, coco_gt, box_results, "bbox", image_ids
    )
    if has_masks:
        mask_stats, mask_per_class = _run_cocoeval(
            coco_cls, coco_eval_cls, coco_gt, mask_results, "segm", image_ids
        )
    else:
        mask_stats, mask_per_class = dict.fromkeys(STAT_NAMES), {}
    wanted = set(image_ids)
    gt_counts = dict.fromkeys(category_ids, 0)
    for ann in data["annotations"]:
        if ann["image_id"] in wanted and not ann.get("iscrowd", 0):
            gt_counts[ann["category_id"]] += 1
    per_class = [
        ClassAP(
            category_id=category_id,
            name=name,
            num_gt=gt_counts[category_id],
            num_detections=detections_per_category[category_id],
            box_ap=box_per_class.get(category_id),
            mask_ap=mask_per_class.get(category_id),
        )
        for category_id, name in zip(category_ids, dataset.classes, strict=True)
    ]
    return EvaluationReport(
        annotation_file=str(dataset.annotation_file),
        image_dir=str(dataset.image_dir),
        classes=list(prompt.classes),
        num_images=len(images),
        num_detections=len(box_results),
        seconds=time.perf_counter() - start,
        predict_seconds=predict_seconds,
        box_threshold=box_threshold,
        text_threshold=text_threshold,
        box_stats=box_stats,
        mask_stats=mask_stats,
        per_class=per_class,
    )

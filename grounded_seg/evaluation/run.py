"""``evaluate_coco``: a :class:`GroundedSAM` run over a COCO data set, scored with ``COCOeval``."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

from ..checks import check_threshold
from ..images import load_image
from ..predictor import GroundedSAM
from ..progress import progress_bar
from ..prompts import normalize_prompt
from .dataset import CocoDataset, import_pycocotools, load_coco_dataset
from .report import STAT_NAMES, ClassAP, EvaluationReport
from .scoring import coco_results, run_cocoeval

logger = logging.getLogger(__name__)


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
    coco_cls, coco_eval_cls, mask_utils = import_pycocotools()
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
        predictor._set_rgb(rgb)  # decoded and checked by load_image just above
        detections = predictor.predict(prompt, box_threshold, text_threshold, max_detections)
        predictor.reset_image()
        boxes, masks = coco_results(detections, image["id"], category_ids, mask_utils, has_masks)
        for result in boxes:
            detections_per_category[result["category_id"]] += 1
        box_results += boxes
        mask_results += masks
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
    box_stats, box_per_class = run_cocoeval(
        coco_cls, coco_eval_cls, coco_gt, box_results, "bbox", image_ids
    )
    if has_masks:
        mask_stats, mask_per_class = run_cocoeval(
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

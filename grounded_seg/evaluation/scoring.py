"""COCO scoring: one image's detections as COCO results, and ``COCOeval`` over them."""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import supervision as sv

from .report import STAT_NAMES

logger = logging.getLogger(__name__)


def coco_results(
    detections: sv.Detections,
    image_id: Any,
    category_ids: Sequence[int],
    mask_utils: Any,
    with_masks: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One image's detections as COCO ``bbox`` and ``segm`` results (``[]`` for masks unless
    ``with_masks``): ``class_id`` indexes ``category_ids``, boxes are ``[x, y, w, h]`` pixels,
    masks compressed RLE (``pycocotools.mask``), the score the detection's ``confidence``."""
    if not len(detections):
        return [], []
    cats = [category_ids[int(i)] for i in detections.class_id]
    scores = [float(s) for s in detections.confidence]
    boxes = [
        {
            "image_id": image_id,
            "category_id": category_id,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score,
        }
        for (x1, y1, x2, y2), category_id, score in zip(
            detections.xyxy.tolist(), cats, scores, strict=True
        )
    ]
    masks: list[dict[str, Any]] = []
    if with_masks:
        stacked = np.asfortranarray(detections.mask.transpose(1, 2, 0).astype(np.uint8))
        for rle, category_id, score in zip(mask_utils.encode(stacked), cats, scores, strict=True):
            rle["counts"] = rle["counts"].decode("ascii")
            masks.append(
                {
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": rle,
                    "score": score,
                }
            )
    return boxes, masks


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    """``COCOeval.stats`` keyed by :data:`STAT_NAMES`; its -1 (undefined) as ``None``."""
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


def run_cocoeval(
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

"""Tracking scores with TrackEval (the HOTA authors' reference code): HOTA, IDF1, MOTA, ID
switches, from per-frame ids and boxes, similarity = box IoU as in the MOT challenge 2D task.

``pip install "grounded-seg[video]"`` brings it (so does the ``test`` extra). motmetrics is
not used: its 1.4 release calls ``np.asfarray``, which numpy 2 removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TrackScores:
    """HOTA (its mean over IoU thresholds 0.05..0.95), IDF1 and MOTA (IoU >= 0.5), ID switches,
    and the counts behind them, all as TrackEval computes them."""

    hota: float
    idf1: float
    mota: float
    id_switches: int
    frames: int
    gt_objects: int
    gt_detections: int
    tracker_detections: int


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, 4)`` x ``(M, 4)`` xyxy boxes -> ``(N, M)`` IoU."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def score_tracks(
    gt_ids: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    ids: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
) -> TrackScores:
    """Score a tracker's per-frame ``ids`` (N_t,) and ``boxes`` (N_t, 4) xyxy against the
    ground truth's, frame by frame (equal numbers of frames)."""
    try:
        from trackeval.metrics import CLEAR, HOTA, Identity
    except ImportError:
        raise ImportError(
            'scoring tracks needs TrackEval: pip install "grounded-seg[video]"'
        ) from None

    if len(gt_ids) != len(ids):
        raise ValueError(
            f"expected as many frames as the ground truth ({len(gt_ids)}), got {len(ids)}"
        )
    gt_map = {v: k for k, v in enumerate(sorted({int(i) for f in gt_ids for i in f}))}
    tr_map = {v: k for k, v in enumerate(sorted({int(i) for f in ids for i in f}))}
    data = {
        "num_timesteps": len(gt_ids),
        "num_gt_ids": len(gt_map),
        "num_tracker_ids": len(tr_map),
        "num_gt_dets": int(sum(len(f) for f in gt_ids)),
        "num_tracker_dets": int(sum(len(f) for f in ids)),
        "gt_ids": [np.array([gt_map[int(i)] for i in f], int) for f in gt_ids],
        "tracker_ids": [np.array([tr_map[int(i)] for i in f], int) for f in ids],
        "similarity_scores": [box_iou(g, t) for g, t in zip(gt_boxes, boxes, strict=True)],
    }
    quiet = {"PRINT_CONFIG": False}
    hota = HOTA(quiet).eval_sequence(data)
    clear = CLEAR(quiet).eval_sequence(data)
    identity = Identity(quiet).eval_sequence(data)
    return TrackScores(
        hota=float(np.mean(hota["HOTA"])),
        idf1=float(identity["IDF1"]),
        mota=float(clear["MOTA"]),
        id_switches=int(clear["IDSW"]),
        frames=len(gt_ids),
        gt_objects=len(gt_map),
        gt_detections=data["num_gt_dets"],
        tracker_detections=data["num_tracker_dets"],
    )

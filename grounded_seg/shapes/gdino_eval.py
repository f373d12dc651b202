"""How shapes-gdino is measured: COCO AP over held-out scenes and the single-phrase rates, all
through the public ``GroundedSAM`` API."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .gdino_data import IMAGE_SIZE
from .world import PHRASES, make_scene


def single_phrase_rates(predictor: Any, seeds: Sequence[int]) -> dict[str, float]:
    """For each scene: one present phrase (a detection of it must overlap a true one with box
    IoU >= 0.5, and no detection may carry another phrase) and one absent phrase (nothing may be
    returned). Returns ``{"present_hit": ..., "absent_empty": ...}`` over ``seeds``."""
    from ..boxes import box_iou

    hit, empty = [], []
    for seed in seeds:
        scene = make_scene(int(seed), IMAGE_SIZE)
        predictor.set_image(scene.image)
        phrase = scene.phrases[int(seed) % len(scene.phrases)]
        det = predictor.predict(phrase)
        truth = np.array([o.box for o in scene.objects if o.phrase == phrase], np.float32)
        ok = len(det) > 0 and set(det.data["class_name"].tolist()) <= {phrase}
        if ok:
            iou = box_iou(torch.from_numpy(det.xyxy), torch.from_numpy(truth))
            ok = bool((iou >= 0.5).any())
        hit.append(ok)
        absent = [p for p in PHRASES if p not in scene.phrases]
        empty.append(len(predictor.predict(absent[int(seed) % len(absent)])) == 0)
    return {"present_hit": float(np.mean(hit)), "absent_empty": float(np.mean(empty))}


def evaluate_shapes_gdino(predictor: Any, seeds: range, workdir: Path) -> dict[str, float]:
    """COCO box / mask AP50 over ``seeds`` (prompt: all 20 phrases) and the single-phrase rates,
    all through the public ``GroundedSAM`` API."""
    from ..evaluation import evaluate_coco
    from .coco import export_coco

    folder = workdir / f"coco-{seeds.start}-{seeds.stop}"
    annotations = folder / "annotations.json"
    if not annotations.is_file():
        annotations = export_coco(seeds, folder)
    report = evaluate_coco(predictor, annotations, progress=False)
    return {
        "box_ap50": round(float(report.box_ap50), 4),
        "mask_ap50": round(float(report.mask_ap50), 4),
        "box_ap": round(float(report.box_ap), 4),
        **{k: round(v, 4) for k, v in single_phrase_rates(predictor, seeds).items()},
    }

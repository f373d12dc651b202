"""Choose Grounding DINO's within-pass NMS threshold on held-out shapes scenes.

Grounding DINO's decoder often returns one object twice with nearly the same box (two "red star"
boxes with IoU 0.86). The official post-processing keeps both. This script measures, for each
candidate threshold (``None`` = the official, un-suppressed output), on scenes the tests never
use (seeds ``HELD_OUT_SEEDS.start + 2000`` onwards; the tests use +300..+308, +5000.., +6000..,
+7000.., +9000..):

- box and mask AP50 over all 20 phrases (the ``grounded-seg eval`` prompt, box threshold 0);
- at the default box threshold 0.35, with one-phrase prompts for present and absent phrases:
  true positives, false positives, duplicates (a second detection of an object already found),
  precision, recall and F1.

    python benchmarks/nms_threshold.py --scenes 200
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from grounded_seg import GroundedSAM
from grounded_seg.boxes import box_iou
from grounded_seg.evaluation import evaluate_coco
from grounded_seg.proposers.grounding_dino import GroundingDinoProposer
from grounded_seg.segmenters.sam import SamSegmenter
from grounded_seg.shapes import HELD_OUT_SEEDS, PHRASES, export_coco, make_scene

CANDIDATES = (None, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
TUNING_START = HELD_OUT_SEEDS.start + 2000


def count_matches(det, scene, phrase: str) -> tuple[int, int, int]:
    """(true positives, false positives, duplicates) of ``det`` for one phrase (IoU >= 0.5)."""
    truth = [o.box for o in scene.objects if o.phrase == phrase]
    if not len(det):
        return 0, 0, 0
    if not truth:
        return 0, len(det), 0
    iou = box_iou(torch.from_numpy(det.xyxy), torch.from_numpy(np.array(truth, np.float32)))
    found: set[int] = set()
    tp = fp = duplicates = 0
    for row in iou:  # detections come best first
        best = int(row.argmax())
        if float(row[best]) < 0.5:
            fp += 1
        elif best in found:
            duplicates += 1
        else:
            found.add(best)
            tp += 1
    return tp, fp, duplicates


def measure(gs: GroundedSAM, seeds: range, annotations: Path) -> dict[str, float]:
    report = evaluate_coco(gs, annotations, progress=False)
    tp = fp = duplicates = objects = 0
    for seed in seeds:
        scene = make_scene(seed)
        gs.set_image(scene.image)
        absent = next(p for p in PHRASES[seed % 20 :] + PHRASES if p not in scene.phrases)
        for phrase in (*dict.fromkeys(scene.phrases), absent):
            a, b, c = count_matches(gs.predict(phrase), scene, phrase)
            tp, fp, duplicates = tp + a, fp + b, duplicates + c
            objects += sum(o.phrase == phrase for o in scene.objects)
    precision = tp / max(1, tp + fp + duplicates)
    recall = tp / max(1, objects)
    return {
        "box_ap50": report.box_ap50,
        "mask_ap50": report.mask_ap50,
        "tp": tp,
        "fp": fp,
        "duplicates": duplicates,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(1e-9, precision + recall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    seeds = range(TUNING_START, TUNING_START + args.scenes)
    proposer = GroundingDinoProposer.from_pretrained("shapes-gdino", device="cpu")
    segmenter = SamSegmenter.from_pretrained("shapes-sam", device="cpu")
    gs = GroundedSAM(detector=proposer, segmenter=segmenter)
    print(f"seeds {seeds.start}..{seeds.stop - 1}, box threshold 0.35 for the counts")
    print(
        "| nms_threshold | box AP50 | mask AP50 | TP | FP | duplicates | precision | recall | F1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        annotations = export_coco(seeds, tmp)
        for threshold in CANDIDATES:
            start = time.perf_counter()
            proposer.nms_threshold = threshold
            m = measure(gs, seeds, annotations)
            print(
                f"| {threshold} | {m['box_ap50']:.4f} | {m['mask_ap50']:.4f} | {m['tp']} | "
                f"{m['fp']} | {m['duplicates']} | {m['precision']:.4f} | {m['recall']:.4f} | "
                f"{m['f1']:.4f} |  ({time.perf_counter() - start:.0f} s)"
            )


if __name__ == "__main__":
    main()

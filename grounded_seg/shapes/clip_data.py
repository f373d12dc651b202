"""The shapes-CLIP recipe's data: crops of the shapes world's objects (ground-truth boxes
jittered, and SAM's own automatic-mode candidates) and of background, captioned as the CLIP route
reads them (see :mod:`grounded_seg.shapes.train_clip`). Each step's pairs are a pure function of
``(seed, step)`` and the candidate pool."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..proposers.clip import DEFAULT_BACKGROUND_TEXTS, crop_regions
from .world import PHRASES, TRAIN_SEEDS, Scene, make_scene

TEMPLATE = "a photo of a {}."
"""The CLIP route's default text template (``ClipProposer(template=...)``)."""
BACKGROUND_TEXTS: tuple[str, ...] = tuple(DEFAULT_BACKGROUND_TEXTS)
CAPTIONS: tuple[str, ...] = tuple(TEMPLATE.format(p) for p in PHRASES) + BACKGROUND_TEXTS
"""The 23 training captions: the 20 phrases in the route's template, then the background texts."""
CROP_MARGIN = 0.1  # the route's default crop margin
BOX_JITTER = 0.1
"""Each side of an object's box moves by up to this fraction of the box's size before cropping:
the CLIP route crops SAM's candidate boxes, which are never exactly the true box (a tiny SAM's
point masks round off a star's tips, for one)."""


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator, amount: float, size: int):
    """``(N, 4)`` xyxy boxes with each side moved by up to ``amount`` x the box's width/height,
    clipped to the image and at least 2 pixels wide and high."""
    boxes = np.asarray(boxes, np.float64)
    extent = np.repeat(boxes[:, 2:] - boxes[:, :2], 2, axis=1)[:, [0, 2, 1, 3]]
    moved = np.clip(boxes + rng.uniform(-amount, amount, boxes.shape) * extent, 0, size)
    moved[:, 2:] = np.maximum(moved[:, 2:], moved[:, :2] + 2)
    return np.clip(moved, 0, size).astype(np.float32)


MAX_BACKGROUND_OVERLAP = 0.03  # a background crop holds at most 3% of any shape's pixels


def background_boxes(
    scene: Scene,
    rng: np.random.Generator,
    count: int = 1,
    *,
    margin: float = CROP_MARGIN,
    max_overlap: float = MAX_BACKGROUND_OVERLAP,
    tries: int = 100,
) -> np.ndarray:
    """Up to ``count`` random xyxy boxes of an object's size whose crops touch no shape.

    Sides are drawn like the shapes' boxes (14-40% of the image side, aspect ratio within about
    1.35:1); a box is kept when its crop (the box grown by ``margin``, as :func:`crop_regions`
    cuts it) holds at most ``max_overlap`` of any shape's pixels. Fewer boxes come back when the
    scene is too crowded after ``tries`` draws. Returns ``(K, 4)`` float32, ``K <= count``.
    """
    height, width = scene.image.shape[:2]
    side = min(height, width)
    masks = [o.mask for o in scene.objects]
    areas = [max(1, int(m.sum())) for m in masks]
    boxes: list[list[float]] = []
    for _ in range(tries):
        if len(boxes) == count:
            break
        size = rng.uniform(0.14, 0.40) * side
        aspect = math.exp(rng.uniform(-0.3, 0.3))
        w, h = min(width, size * math.sqrt(aspect)), min(height, size / math.sqrt(aspect))
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        dx, dy = w * margin, h * margin
        left, top = max(0, math.floor(x1 - dx)), max(0, math.floor(y1 - dy))
        right, bottom = min(width, math.ceil(x1 + w + dx)), min(height, math.ceil(y1 + h + dy))
        if all(
            m[top:bottom, left:right].sum() <= max_overlap * a
            for m, a in zip(masks, areas, strict=True)
        ):
            boxes.append([x1, y1, x1 + w, y1 + h])
    return np.array(boxes, np.float32).reshape(-1, 4)


MATCH_IOU = 0.5
"""A SAM candidate is an object's when their masks overlap with IoU >= this (else background)."""


@dataclass
class CandidatePool:
    """Crops of SAM automatic-mode candidates (the CLIP route's own regions) and their captions.

    ``crops``: RGB uint8 crops (``crop_regions``, margin 0.1, of the candidates' boxes);
    ``labels``: the phrase id of the object each candidate matches (mask IoU >= :data:`MATCH_IOU`),
    or -1 for a candidate that matches none (captioned with a background text).
    """

    crops: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def objects(self) -> np.ndarray:
        """Indices of the candidates that match an object."""
        return np.flatnonzero(np.array(self.labels, np.int64) >= 0)

    @property
    def backgrounds(self) -> np.ndarray:
        """Indices of the candidates that match no object."""
        return np.flatnonzero(np.array(self.labels, np.int64) < 0)


def match_candidates(candidate_masks: np.ndarray, scene: Scene) -> list[int]:
    """For each candidate mask ``(N, H, W)``, the index of the scene's object whose mask it
    overlaps with IoU >= :data:`MATCH_IOU` (the best such), or -1."""
    truth = scene.masks.reshape(len(scene.objects), -1)
    matches = []
    for mask in candidate_masks.reshape(len(candidate_masks), -1):
        inter = (truth & mask).sum(1)
        union = (truth | mask).sum(1)
        iou = inter / np.maximum(union, 1)
        best = int(np.argmax(iou)) if len(iou) else -1
        matches.append(best if best >= 0 and iou[best] >= MATCH_IOU else -1)
    return matches


def load_candidate_segmenter(sam: str | os.PathLike, device: Any = None) -> Any:
    """The SAM whose automatic mode makes the candidates (float32, eval mode)."""
    from ..segmenters.sam import SamSegmenter

    return SamSegmenter.from_pretrained(sam, device=device or "cpu", dtype=torch.float32)


def candidate_pool(segmenter: Any, seeds: Sequence[int]) -> CandidatePool:
    """SAM's candidates on the scenes of ``seeds``, exactly as the CLIP route makes them (its
    automatic mode with the segmenter's calibrated settings, ``crop_regions`` margin 0.1), each
    captioned by :func:`match_candidates`. Deterministic for a given SAM and thread count."""
    from ..segmenters.sam_auto import AutoMaskConfig, generate_candidates

    config = AutoMaskConfig().resolved(getattr(segmenter, "auto_mask", None))
    pool = CandidatePool()
    for seed in seeds:
        scene = make_scene(int(seed))
        found = generate_candidates(segmenter, segmenter.encode_image(scene.image), config)
        if not len(found):
            continue
        pool.crops.extend(crop_regions(scene.image, found.xyxy, CROP_MARGIN))
        pool.labels.extend(
            scene.objects[m].class_id if m >= 0 else -1
            for m in match_candidates(found.masks, scene)
        )
    return pool


def pool_seeds(seed: int, count: int) -> list[int]:
    """The :data:`TRAIN_SEEDS` scenes of the candidate pool, a pure function of ``seed``."""
    rng = np.random.default_rng([seed, 0x5A3])
    if not count:
        return []
    return [TRAIN_SEEDS[i] for i in rng.choice(len(TRAIN_SEEDS), size=count, replace=False)]


def step_pairs(
    seed: int,
    step: int,
    batch_size: int,
    pool: CandidatePool | None = None,
    candidate_share: float = 0.75,
) -> tuple[list[np.ndarray], list[int], list[list[int]]]:
    """The training pairs of one step, a pure function of ``(seed, step)`` (and the pool).

    With a ``pool``, ``round(candidate_share * batch_size)`` of the object crops are SAM candidates
    drawn from it (without replacement), captioned with their object's phrase. Scenes drawn from
    :data:`TRAIN_SEEDS` give the other object crops (ground-truth boxes jittered by
    :data:`BOX_JITTER`; all objects of each scene, in order, the last scene cut short); batch
    ``j`` holds the ``j``-th crop of each phrase that has one; each batch of at least one object
    then gets one background crop captioned by a random background text (with probability
    ``candidate_share`` an unmatched pool candidate, when the pool has one, else a random box that
    touches no shape), and batches of a single pair are dropped.

    Returns:
        ``(crops, captions, batches)``: RGB uint8 crops, the index into :data:`CAPTIONS` of each
        crop's caption, and the batches (lists of crop indices, each with distinct captions).
    """
    rng = np.random.default_rng([seed, step])
    crops: list[np.ndarray] = []
    captions: list[int] = []
    by_caption: dict[int, list[int]] = {}
    scenes_used: list[Scene] = []
    if pool is not None and candidate_share > 0 and len(pool.objects):
        from_pool = min(round(candidate_share * batch_size), len(pool.objects))
        for index in rng.choice(pool.objects, size=from_pool, replace=False).tolist():
            by_caption.setdefault(pool.labels[index], []).append(len(crops))
            crops.append(pool.crops[index])
            captions.append(pool.labels[index])
    while len(crops) < batch_size:
        scene = make_scene(int(rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop)))
        scenes_used.append(scene)
        size = scene.image.shape[0]
        jittered = jitter_boxes(scene.boxes, rng, BOX_JITTER, size)
        for obj, crop in zip(
            scene.objects, crop_regions(scene.image, jittered, CROP_MARGIN), strict=True
        ):
            if len(crops) == batch_size:
                break
            by_caption.setdefault(obj.class_id, []).append(len(crops))
            crops.append(crop)
            captions.append(obj.class_id)
    depth = max(len(v) for v in by_caption.values())
    batches = [[v[j] for v in by_caption.values() if len(v) > j] for j in range(depth)]
    n_phrases = len(PHRASES)
    pool_backgrounds = pool.backgrounds if pool is not None else np.zeros(0, np.int64)
    for batch in batches:
        if len(pool_backgrounds) and rng.uniform() < candidate_share:
            batch.append(len(crops))
            crops.append(pool.crops[int(rng.choice(pool_backgrounds))])  # type: ignore[union-attr]
            captions.append(n_phrases + int(rng.integers(len(BACKGROUND_TEXTS))))
            continue
        if not scenes_used:
            scenes_used.append(make_scene(int(rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop))))
        for _ in range(10):  # a scene with room for a background box (most have)
            scene = scenes_used[int(rng.integers(len(scenes_used)))]
            box = background_boxes(scene, rng, 1)
            if len(box):
                batch.append(len(crops))
                crops.extend(crop_regions(scene.image, box, CROP_MARGIN))
                captions.append(n_phrases + int(rng.integers(len(BACKGROUND_TEXTS))))
                break
    return crops, captions, [b for b in batches if len(b) >= 2]


def eval_crops(seeds: Sequence[int]) -> tuple[list[np.ndarray], list[int], list[np.ndarray]]:
    """Ground-truth crops of the scenes of ``seeds``, their phrase ids, and one background crop
    per scene (its box drawn by ``default_rng([seed, 1])``: fixed for a seed)."""
    crops: list[np.ndarray] = []
    labels: list[int] = []
    backgrounds: list[np.ndarray] = []
    for seed in seeds:
        scene = make_scene(int(seed))
        crops.extend(crop_regions(scene.image, scene.boxes, CROP_MARGIN))
        labels.extend(o.class_id for o in scene.objects)
        box = background_boxes(scene, np.random.default_rng([int(seed), 1]), 1)
        backgrounds.extend(crop_regions(scene.image, box, CROP_MARGIN))
    return crops, labels, backgrounds

"""Train a small CLIP from scratch on the shapes world, for the CLIP box-proposer route.

The model learns exactly what the CLIP route (:mod:`grounded_seg.proposers.clip`) asks of it: a
crop of a candidate box (``crop_regions`` with margin 0.1) against the texts
``"a photo of a {phrase}."`` of the prompt's classes plus the background texts
(``DEFAULT_BACKGROUND_TEXTS``), scored by ``softmax(exp(logit_scale) * cos)``.

Training data comes from :data:`TRAIN_SEEDS` scenes, as a pure function of ``(seed, step)``.
Before the first step, SAM's automatic mode (the route's own candidates: the bundled shapes-sam
with its calibrated settings) runs on ``candidate_scenes`` training scenes; each candidate whose
mask overlaps a true object with IoU >= 0.5 is captioned with that object's phrase, the others
with a background text (:func:`candidate_pool`). A tiny SAM's candidates are not the true boxes
(its point masks round off a star's tips), so the model must learn to read its crops too. Each
step takes ``candidate_share`` of its ``batch_size`` object crops from that pool and draws scenes
for the rest (ground-truth boxes jittered by :data:`BOX_JITTER`, captioned
``"a photo of a {phrase}."``), deals them into caption-distinct batches (batch
``j`` holds the ``j``-th crop of every phrase that has one, so no batch holds a caption twice) and
adds to each batch one background crop (an unmatched pool candidate with probability
``candidate_share``, else a random box of an object's size that touches no shape, captioned with
one of the background texts). The step's loss is the pair-weighted mean of
:func:`grounded_seg.clip.contrastive_loss` over its batches; AdamW with a linear warm-up and a
cosine decay; ``logit_scale`` is clamped to at most ``log(100)`` after every step.

>>> from grounded_seg.shapes.train_clip import train_shapes_clip          # doctest: +SKIP
>>> report = train_shapes_clip("weights/shapes/clip")                    # doctest: +SKIP
>>> report["metrics"]["zero_shot_accuracy"]                               # doctest: +SKIP

or ``python -m grounded_seg.shapes.train_clip weights/shapes/clip``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import load_checkpoint, save_checkpoint
from ..clip import MAX_LOGIT_SCALE, contrastive_loss, projected_features
from ..devices import resolve_device
from ..progress import eta
from ..proposers.clip import DEFAULT_BACKGROUND_TEXTS, ClipScorer, crop_regions
from .clip_tokenizer import BOS_TOKEN, EOS_TOKEN, build_vocab_and_merges, write_clip_tokenizer
from .world import HELD_OUT_SEEDS, PHRASES, TRAIN_SEEDS, Scene, make_scene

logger = logging.getLogger(__name__)

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


MAX_TEXT_LEN = 32  # tokens, <|startoftext|> and <|endoftext|> included
MAX_BACKGROUND_OVERLAP = 0.03  # a background crop holds at most 3% of any shape's pixels

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.pt"
LOG_FILE = "train_log.json"
CARD_FILE = "MODEL_CARD.md"
MODEL_FILE = "model.safetensors"


# --------------------------------------------------------------------------- the model


def shapes_clip_config(
    image_size: int = 48,
    *,
    width: int = 128,
    layers: int = 4,
    patch_size: int = 8,
    text_width: int = 64,
    text_layers: int = 2,
    projection_dim: int = 64,
    heads: int = 4,
) -> Any:
    """A small ``CLIPConfig`` for the shapes world (vocabulary of :mod:`.clip_tokenizer`).

    The vision tower is a ViT of ``layers`` layers of width ``width`` over ``patch_size`` patches
    of ``image_size`` pixels; the text tower has ``text_layers`` layers of width ``text_width``;
    both project to ``projection_dim``. MLPs are 4x wide (as CLIP's); attention heads of the text
    tower: ``max(1, text_width // 32)``.
    """
    from transformers import CLIPConfig

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if width % heads:
        raise ValueError(f"width {width} is not a multiple of heads {heads}")
    vocab, _ = build_vocab_and_merges()
    text = dict(
        vocab_size=len(vocab),
        hidden_size=text_width,
        intermediate_size=4 * text_width,
        num_hidden_layers=text_layers,
        num_attention_heads=max(1, text_width // 32),
        max_position_embeddings=MAX_TEXT_LEN,
        projection_dim=projection_dim,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    vision = dict(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def image_processor_for(image_size: int) -> Any:
    """The route's preprocessing at ``image_size``: shortest edge resized, centre crop, CLIP's
    mean and std (``CLIPImageProcessorPil``, which needs no torchvision)."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )


# --------------------------------------------------------------------------- the data


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


def evaluate_scorer(scorer: ClipScorer, seeds: Sequence[int]) -> dict[str, Any]:
    """Zero-shot accuracy and background rejection of a CLIP on the scenes of ``seeds``.

    * ``zero_shot_accuracy``: fraction of ground-truth crops whose best text among the 20
      ``"a photo of a {phrase}."`` is their own phrase (``colour_accuracy``/``shape_accuracy``:
      the same, counting only the colour or the shape word);
    * ``background_rejection``: fraction of background crops whose best text among the 20
      phrases plus the background texts is a background text (what the route drops);
    * ``objects_kept``: fraction of object crops whose best text among the same 23 is a phrase.
    """
    crops, labels, backgrounds = eval_crops(seeds)
    texts = scorer.embed_texts(list(CAPTIONS))
    objects = scorer.embed_images(crops)
    truth = torch.tensor(labels)
    zero_shot = (objects @ texts[: len(PHRASES)].T).argmax(dim=-1)
    colours = [p.split()[0] for p in PHRASES]
    shapes = [p.split()[1] for p in PHRASES]
    kept = (objects @ texts.T).argmax(dim=-1) < len(PHRASES)
    result: dict[str, Any] = {
        "scenes": len(seeds),
        "objects": len(crops),
        "zero_shot_accuracy": float((zero_shot == truth).float().mean()),
        "colour_accuracy": float(
            np.mean(
                [colours[p] == colours[t] for p, t in zip(zero_shot.tolist(), labels, strict=True)]
            )
        ),
        "shape_accuracy": float(
            np.mean(
                [shapes[p] == shapes[t] for p, t in zip(zero_shot.tolist(), labels, strict=True)]
            )
        ),
        "objects_kept": float(kept.float().mean()),
        "background_crops": len(backgrounds),
        "background_rejection": math.nan,
        "logit_scale": scorer.logit_scale,
    }
    if backgrounds:
        best = (scorer.embed_images(backgrounds) @ texts.T).argmax(dim=-1)
        result["background_rejection"] = float((best >= len(PHRASES)).float().mean())
    return result


def evaluate_on_candidates(scorer: ClipScorer, pool: CandidatePool) -> dict[str, Any]:
    """How a CLIP reads SAM's own candidates (a :func:`candidate_pool` of held-out scenes).

    * ``candidate_accuracy``: fraction of candidates that match an object whose best text among
      the 20 phrases is that object's phrase;
    * ``candidates_kept``: fraction of those whose best text of the 23 is a phrase;
    * ``candidate_background_rejection``: fraction of unmatched candidates whose best text of the
      23 is a background text (``nan`` when there are none).
    """
    texts = scorer.embed_texts(list(CAPTIONS))
    result: dict[str, Any] = {
        "candidates": len(pool),
        "candidate_accuracy": math.nan,
        "candidates_kept": math.nan,
        "background_candidates": len(pool.backgrounds),
        "candidate_background_rejection": math.nan,
    }
    if not len(pool):
        return result
    similarity = scorer.embed_images(pool.crops) @ texts.T
    best = similarity.argmax(dim=-1)
    phrase_best = similarity[:, : len(PHRASES)].argmax(dim=-1)
    labels = torch.tensor(pool.labels)
    objects = labels >= 0
    if bool(objects.any()):
        right = phrase_best[objects] == labels[objects]
        result["candidate_accuracy"] = float(right.float().mean())
        result["candidates_kept"] = float((best[objects] < len(PHRASES)).float().mean())
    if bool((~objects).any()):
        rejected = best[~objects] >= len(PHRASES)
        result["candidate_background_rejection"] = float(rejected.float().mean())
    return result


def _sam_identity(sam: str | os.PathLike) -> dict[str, str]:
    """The candidate SAM's name and the sha256 of its weights (for the model card)."""
    import hashlib

    from ..registry import resolve_model

    source = resolve_model(sam, "segmenter")
    identity = {"name": str(sam)}
    weights = source.local_dir / "model.safetensors" if source.local_dir else None
    if weights is not None and weights.is_file():
        identity["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    return identity


def evaluate_shapes_clip(
    model_dir: str | os.PathLike, seeds: Sequence[int] = HELD_OUT_SEEDS[:200], device: Any = None
) -> dict[str, Any]:
    """:func:`evaluate_scorer` of a CLIP folder loaded strictly, as the CLIP route loads it."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from .._loading import load_pretrained

    model, parts = load_pretrained(
        model_dir,
        "detector",
        "clip",
        CLIPModel,
        {"tokenizer": AutoTokenizer, "image_processor": AutoImageProcessor},
        device or "cpu",
    )
    return evaluate_scorer(
        ClipScorer(model.eval(), parts["tokenizer"], parts["image_processor"]), seeds
    )


# --------------------------------------------------------------------------- training


def _learning_rate(step: int, steps: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``steps`` (1-based)."""
    if step <= warmup:
        return base * step / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> Any:
    """AdamW; as in CLIP, weight decay on matrices only (not on gains, biases, logit_scale)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=learning_rate,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def _is_finished(out: Path) -> bool:
    return (out / MODEL_FILE).is_file() and (out / LOG_FILE).is_file()


def _save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, folder / CHECKPOINT_FILE)


def _command(out_dir: Path, settings: dict[str, Any]) -> str:
    args = ["python", "-m", "grounded_seg.shapes.train_clip", str(out_dir)]
    for name in _CLI_SETTINGS:
        args += [f"--{name.replace('_', '-')}", str(settings[name])]
    return shlex.join(args)


_CLI_SETTINGS = (
    "steps",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "seed",
    "image_size",
    "width",
    "layers",
    "patch_size",
    "text_width",
    "text_layers",
    "projection_dim",
    "sam",
    "candidate_scenes",
    "candidate_share",
    "threads",
)


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")


def train_shapes_clip(
    out_dir: str | os.PathLike,
    *,
    steps: int = 5000,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    weight_decay: float = 0.1,
    warmup_steps: int | None = None,
    seed: int = 0,
    image_size: int = 48,
    width: int = 128,
    layers: int = 4,
    patch_size: int = 8,
    text_width: int = 64,
    text_layers: int = 2,
    projection_dim: int = 64,
    sam: str = "shapes-sam",
    candidate_scenes: int = 1000,
    candidate_share: float = 0.75,
    device: str | torch.device | None = None,
    threads: int | None = 1,
    resume: bool = True,
    overwrite: bool = False,
    log_every: int = 50,
    checkpoint_every: int = 500,
    eval_every: int | None = 250,
    eval_scenes: int = 200,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train a CLIP from scratch on the shapes world; save it where the CLIP route can load it.

    Args:
        out_dir: the output folder: ``save_pretrained`` model, tokenizer and image processor,
            ``train_log.json`` and ``MODEL_CARD.md``; ``out_dir/checkpoint/`` while training.
        steps: optimiser steps. batch_size: object crops per step (>= 2), dealt into batches of
            distinct captions, each with one background crop added (see the module doc).
        learning_rate: peak AdamW step size, after ``warmup_steps`` (``None``: 5% of ``steps``,
            at most 500) of linear warm-up; cosine decay to 0 at ``steps``.
        weight_decay: AdamW decoupled weight decay, on weight matrices only.
        seed: fixes the initial weights and every step's data: the same arguments (and thread
            count, on the CPU) give the same model bit for bit.
        image_size, width, layers, patch_size, text_width, text_layers, projection_dim: the model
            (see :func:`shapes_clip_config`).
        sam: the SAM (registry name or folder) whose automatic mode makes the candidate crops.
        candidate_scenes: :data:`TRAIN_SEEDS` scenes (drawn by :func:`pool_seeds`) whose SAM
            candidates form the pool of :func:`candidate_pool` (0: no pool, no SAM needed).
        candidate_share: the fraction of each step's object crops drawn from that pool (the
            rest are jittered ground-truth boxes); also the chance that a batch's background crop
            is an unmatched candidate.
        device: ``None``/``"auto"`` (CUDA, MPS, then CPU) or an explicit device.
        threads: ``torch.set_num_threads`` during the call (restored after); ``None`` leaves it.
        resume: continue from ``out_dir/checkpoint/`` when one is there (it must have been made
            with the same settings); ``False`` starts again from step 0.
        overwrite: allow replacing a finished model in ``out_dir`` (refused otherwise).
        log_every: log (``logging``, INFO) and record the mean loss every this many steps.
        checkpoint_every: save model, optimiser, step and RNG state every this many steps.
        eval_every: measure held-out zero-shot accuracy on 50 scenes every this many steps
            (``None``: never; recorded in ``train_log.json``; it does not change training).
        eval_scenes: held-out scenes (the first of :data:`HELD_OUT_SEEDS`) of the final evaluation.
        stop_after: stop once this step is done, leaving a checkpoint to resume from (for
            training in slices); the report then has ``"finished": False`` and nothing else is
            written.

    Returns:
        The report (also the ``"report"`` of ``train_log.json``): settings, parameter count,
        wall time, final loss, the held-out metrics of :func:`evaluate_scorer`, the command.

    Raises:
        FileExistsError: ``out_dir`` holds a finished model and ``overwrite`` is False, or it is
            a non-empty folder that is not a training output.
        ValueError: bad arguments, or a checkpoint made with other settings.
    """
    from transformers import CLIPModel, CLIPProcessor

    started = time.perf_counter()
    for name, value, low in (
        ("steps", steps, 1),
        ("batch_size", batch_size, 2),
        ("seed", seed, 0),
        ("image_size", image_size, 8),
        ("log_every", log_every, 1),
        ("checkpoint_every", checkpoint_every, 1),
        ("eval_scenes", eval_scenes, 1),
        ("candidate_scenes", candidate_scenes, 0),
    ):
        _check_int(name, value, low)
    for name, value in (("learning_rate", learning_rate), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    share_ok = isinstance(candidate_share, (int, float)) and not isinstance(candidate_share, bool)
    if not share_ok or not 0.0 <= candidate_share <= 1.0:
        raise ValueError(f"candidate_share: expected a number in [0, 1], got {candidate_share!r}")
    if warmup_steps is None:
        warmup_steps = min(500, max(1, steps // 20))
    _check_int("warmup_steps", warmup_steps, 1)
    if threads is not None:
        _check_int("threads", threads, 1)
    if eval_every is not None:
        _check_int("eval_every", eval_every, 1)
    if stop_after is not None:
        _check_int("stop_after", stop_after, 1)

    out = Path(out_dir).expanduser()
    checkpoint_dir = out / CHECKPOINT_DIR
    checkpoint_file = checkpoint_dir / CHECKPOINT_FILE
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {out} exists and is not a folder")
    if _is_finished(out) and not overwrite:
        raise FileExistsError(
            f"out_dir {out} already holds a finished model ({MODEL_FILE}, {LOG_FILE}); pass "
            "overwrite=True (--overwrite) to replace it, or choose another folder"
        )
    if out.is_dir() and any(out.iterdir()) and not (_is_finished(out) or checkpoint_dir.is_dir()):
        raise FileExistsError(
            f"out_dir {out} is not empty and holds no training output of train_shapes_clip; "
            "choose an empty or new folder"
        )

    settings: dict[str, Any] = {
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": float(learning_rate),
        "weight_decay": float(weight_decay),
        "warmup_steps": warmup_steps,
        "seed": seed,
        "image_size": image_size,
        "width": width,
        "layers": layers,
        "patch_size": patch_size,
        "text_width": text_width,
        "text_layers": text_layers,
        "projection_dim": projection_dim,
        "sam": str(sam),
        "candidate_scenes": candidate_scenes,
        "candidate_share": float(candidate_share),
        "threads": threads,
    }
    config = shapes_clip_config(
        image_size,
        width=width,
        layers=layers,
        patch_size=patch_size,
        text_width=text_width,
        text_layers=text_layers,
        projection_dim=projection_dim,
    )
    torch_device = resolve_device(device)
    image_processor = image_processor_for(image_size)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    fork_devices = [torch_device] if torch_device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices), tempfile.TemporaryDirectory() as tmp:
            tokenizer = write_clip_tokenizer(tmp)
            torch.manual_seed(seed)
            model = CLIPModel(config).to(torch_device)
            n_params = sum(p.numel() for p in model.parameters())
            optimizer = _optimizer(model, learning_rate, weight_decay)
            tokens = tokenizer(list(CAPTIONS), padding=True, return_tensors="pt").to(torch_device)

            step, log, evals, running, elapsed = 0, [], [], [0.0, 0], 0.0
            if resume and checkpoint_file.is_file():
                state = load_checkpoint(checkpoint_file, start_over="pass resume=False (--restart)")
                if state["settings"] != settings:
                    changed = {
                        k: (state["settings"].get(k), v)
                        for k, v in settings.items()
                        if state["settings"].get(k) != v
                    }
                    raise ValueError(
                        f"the checkpoint in {checkpoint_dir} was made with other settings "
                        f"(checkpoint, now): {changed}; use the same ones, or resume=False"
                    )
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                torch.set_rng_state(state["torch_rng"])
                step, log, evals = state["step"], state["log"], state["evals"]
                running, elapsed = state["running"], state["elapsed"]
                logger.info("resuming from %s at step %d of %d", checkpoint_file, step, steps)
            else:
                logger.info(
                    "training a %d-parameter CLIP for %d steps on %s (%s threads)",
                    n_params,
                    steps,
                    torch_device,
                    torch.get_num_threads(),
                )
            pool, segmenter, pool_seconds = None, None, 0.0
            if candidate_scenes:
                pool_start = time.perf_counter()
                segmenter = load_candidate_segmenter(sam, torch_device)
                pool = candidate_pool(segmenter, pool_seeds(seed, candidate_scenes))
                pool_seconds = time.perf_counter() - pool_start
                logger.info(
                    "candidate pool: %d SAM candidates (%d background) from %d scenes in %.0f s",
                    len(pool),
                    len(pool.backgrounds),
                    candidate_scenes,
                    pool_seconds,
                )
            session_start = time.perf_counter() - elapsed
            scorer = ClipScorer(model, tokenizer, image_processor)
            last = min(steps, stop_after) if stop_after is not None else steps
            model.train()
            while step < last:
                step += 1
                crops, captions, batches = step_pairs(seed, step, batch_size, pool, candidate_share)
                pixels = image_processor(images=crops, return_tensors="pt")["pixel_values"]
                image_emb = projected_features(
                    model.get_image_features(pixel_values=pixels.to(torch_device))
                )
                text_emb = projected_features(
                    model.get_text_features(
                        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                    )
                )
                caption_index = torch.tensor(captions, device=torch_device)
                pairs = sum(len(b) for b in batches)
                loss = sum(
                    contrastive_loss(image_emb[b], text_emb[caption_index[b]], model.logit_scale)
                    * (len(b) / pairs)
                    for b in batches
                )
                for group in optimizer.param_groups:
                    group["lr"] = _learning_rate(step, steps, learning_rate, warmup_steps)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(max=MAX_LOGIT_SCALE)
                running = [running[0] + float(loss.detach()), running[1] + 1]
                if step % log_every == 0 or step == steps:
                    seconds = time.perf_counter() - session_start
                    mean = running[0] / running[1]
                    log.append({"step": step, "loss": round(mean, 5), "seconds": round(seconds, 1)})
                    running = [0.0, 0]
                    logger.info(
                        "step %d/%d: loss %.4f, lr %.2e, logit scale %.1f, %.0f s, %s",
                        step,
                        steps,
                        mean,
                        optimizer.param_groups[0]["lr"],
                        float(model.logit_scale.detach().exp()),
                        seconds,
                        eta(seconds, step, steps),
                    )
                if eval_every is not None and step % eval_every == 0 and step < steps:
                    model.eval()
                    quick = evaluate_scorer(scorer, HELD_OUT_SEEDS[:50])
                    model.train()
                    evals.append(
                        {
                            "step": step,
                            "zero_shot_accuracy": round(quick["zero_shot_accuracy"], 4),
                            "seconds": round(time.perf_counter() - session_start, 1),
                        }
                    )
                    logger.info(
                        "step %d: held-out zero-shot accuracy %.3f (50 scenes)",
                        step,
                        quick["zero_shot_accuracy"],
                    )
                if step % checkpoint_every == 0 or step == last < steps:
                    _save_checkpoint(
                        checkpoint_dir,
                        {
                            "step": step,
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "torch_rng": torch.get_rng_state(),
                            "settings": settings,
                            "log": log,
                            "evals": evals,
                            "running": running,
                            "elapsed": time.perf_counter() - session_start,
                        },
                    )
            train_seconds = time.perf_counter() - session_start
            report: dict[str, Any] = {
                "finished": step >= steps,
                "step": step,
                "settings": settings,
                "parameters": n_params,
                "final_loss": log[-1]["loss"] if log else math.nan,
                "train_seconds": round(train_seconds, 1),
                "device": str(torch_device),
                "threads": torch.get_num_threads(),
                "command": _command(out, settings),
                "out_dir": str(out),
            }
            if step < steps:
                logger.info("stopped at step %d of %d; the checkpoint is in %s", step, steps, out)
                return report
            model.eval()
            eval_seeds = HELD_OUT_SEEDS[:eval_scenes]
            report["metrics"] = evaluate_scorer(scorer, eval_seeds)
            if segmenter is not None:
                report["metrics"].update(
                    evaluate_on_candidates(scorer, candidate_pool(segmenter, eval_seeds))
                )
                report["sam"] = _sam_identity(sam)
                report["pool"] = {
                    "scenes": candidate_scenes,
                    "candidates": len(pool),  # type: ignore[arg-type]
                    "background_candidates": len(pool.backgrounds),  # type: ignore[union-attr]
                    "seconds": round(pool_seconds, 1),
                }
            report["eval_seeds"] = f"HELD_OUT_SEEDS[:{eval_scenes}]"
            out.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(out)
            tokenizer = write_clip_tokenizer(out)
            CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
            report["model_bytes"] = (out / MODEL_FILE).stat().st_size
            report["seconds"] = round(time.perf_counter() - started + elapsed, 1)
            report["versions"] = _versions()
            (out / LOG_FILE).write_text(
                json.dumps({"report": report, "loss": log, "evals": evals}, indent=1) + "\n",
                encoding="utf-8",
            )
            (out / CARD_FILE).write_text(_model_card(report, config, log, evals), encoding="utf-8")
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    finally:
        torch.set_num_threads(old_threads)
    metrics = report["metrics"]
    logger.info(
        "held-out zero-shot accuracy %.3f, background rejection %.3f, objects kept %.3f; "
        "saved to %s",
        metrics["zero_shot_accuracy"],
        metrics["background_rejection"],
        metrics["objects_kept"],
        out,
    )
    return report


def _versions() -> dict[str, str]:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def _curve_rows(
    log: list[dict[str, Any]], evals: list[dict[str, Any]], final: float, scenes: int
) -> str:
    """Rows of the loss curve at the first logged step, each step with a held-out accuracy, and
    the last step (with the final accuracy, on ``scenes`` scenes)."""
    accuracy = {e["step"]: f"{e['zero_shot_accuracy']:.3f} (50 scenes)" for e in evals}
    if log:
        accuracy[log[-1]["step"]] = f"{final:.3f} (final, {scenes} scenes)"
    rows = []
    for i, entry in enumerate(log):
        if i == 0 or entry["step"] in accuracy:
            minutes, shown = entry["seconds"] / 60, accuracy.get(entry["step"], "")
            rows.append(f"| {entry['step']} | {minutes:.1f} | {entry['loss']:.4f} | {shown} |")
    return "\n".join(rows)


def _model_card(
    report: dict[str, Any], config: Any, log: list[dict[str, Any]], evals: list[dict[str, Any]]
) -> str:
    s, m = report["settings"], report["metrics"]
    vision, text = config.vision_config, config.text_config
    curve = _curve_rows(log, evals, m["zero_shot_accuracy"], m["scenes"])
    backgrounds = ", ".join(f'"{t}"' for t in BACKGROUND_TEXTS)
    rejected = "background crops rejected (their best text of the 23 is a background text)"
    return f"""# shapes CLIP

A small CLIP trained from scratch on the shapes world (`grounded_seg.shapes`) by
`grounded_seg.shapes.train_clip.train_shapes_clip`, for the CLIP box-proposer route
(`proposer="clip"`): crops of candidate boxes (margin 0.1) against `"a photo of a {{phrase}}."`
and the background texts {backgrounds}.

## Model

- `CLIPModel`, {report["parameters"]:,} parameters, float32
  ({report["model_bytes"]:,} bytes of `model.safetensors`).
- Vision: a ViT over {vision.image_size} x {vision.image_size} pixels in patches of \
{vision.patch_size}, {vision.num_hidden_layers} layers of width {vision.hidden_size} \
({vision.num_attention_heads} heads, MLP {vision.intermediate_size}).
- Text: {text.num_hidden_layers} layers of width {text.hidden_size} \
({text.num_attention_heads} heads, MLP {text.intermediate_size}), at most \
{text.max_position_embeddings} tokens of a {text.vocab_size}-token byte-level BPE
  (`grounded_seg.shapes.clip_tokenizer`: each word of the shapes world and of the route's texts
  is one token).
- Joint space: {config.projection_dim} dimensions; learned temperature \
exp(logit_scale) = {m["logit_scale"]:.1f} (clamped at 100 during training).
- Preprocessing: `CLIPImageProcessorPil`, shortest edge {s["image_size"]}, centre crop \
{s["image_size"]} x {s["image_size"]}, CLIP's mean and std.

## Data

From `TRAIN_SEEDS` (seeds 0 to 999,999) as a pure function of (seed, step), seed = {s["seed"]}.
{_pool_text(report)}Each step holds {s["batch_size"]} object crops (`crop_regions`, margin 0.1):
a share of {s["candidate_share"]} drawn from that pool, the rest ground-truth boxes of scenes
drawn for the step (each box side first moved by up to {BOX_JITTER:.0%} of the box's size),
captioned `"a photo of a {{phrase}}."`; it deals them into batches of distinct captions and adds
one background crop to each batch (with probability {s["candidate_share"]} an unmatched pool
candidate, else a random box of an object's size whose crop holds at most
{MAX_BACKGROUND_OVERLAP:.0%} of any shape's pixels), captioned with a random background text.
Loss: `grounded_seg.clip.contrastive_loss` (the pair-weighted mean over the step's batches).

## Training

- {s["steps"]} steps, AdamW (betas 0.9/0.98, weight decay {s["weight_decay"]} on matrices), peak \
learning rate {s["learning_rate"]}, {s["warmup_steps"]} warm-up steps, cosine decay to 0.
- Final training loss (mean over the last {_last_span(log)} steps): {report["final_loss"]:.4f}.
- Wall time: {report["train_seconds"] / 60:.1f} min of training, {report["seconds"] / 60:.1f} \
min in all, on {report["device"]} ({platform.machine()}) with {report["threads"]} thread(s).
- Versions: {", ".join(f"{k} {v}" for k, v in report["versions"].items())}.

Reproduce (the same seed and thread count give the same weights, bit for bit):

```bash
{report["command"]}
```

## Held-out results

On the ground-truth boxes of the {m["scenes"]} scenes `{report["eval_seeds"]}`
({m["objects"]} objects) and one background crop per scene ({m["background_crops"]}):

| metric | value |
| --- | --- |
| zero-shot accuracy over the 20 phrases (argmax over their texts) | {m["zero_shot_accuracy"]:.3f} |
| colour right | {m["colour_accuracy"]:.3f} |
| shape right | {m["shape_accuracy"]:.3f} |
| {rejected} | {m["background_rejection"]:.3f} |
| object crops kept (their best text of the 23 is a phrase) | {m["objects_kept"]:.3f} |
{_candidate_rows(m)}
## Training curve

Mean training loss since the previous logged step, and zero-shot accuracy on held-out scenes
(`HELD_OUT_SEEDS[:50]` during training, which it does not steer). Every point is in
`train_log.json`.

| step | minutes | training loss | held-out zero-shot accuracy |
| --- | --- | --- | --- |
{curve}
"""


def _pool_text(report: dict[str, Any]) -> str:
    """The model card's sentence on the candidate pool ("" without one)."""
    pool = report.get("pool")
    if not pool:
        return ""
    sam = report.get("sam", {})
    digest = f", `model.safetensors` sha256 `{sam['sha256'][:16]}…`" if "sha256" in sam else ""
    return (
        f"First, SAM's automatic mode (`{sam.get('name')}`{digest},\nwith its `grounded_seg.json` "
        f"settings, exactly as the CLIP route runs it) made {pool['candidates']:,} candidates on "
        f"{pool['scenes']:,} training\nscenes (`pool_seeds`) in {pool['seconds']:.0f} s; each "
        f"candidate whose mask overlaps a true object\nwith IoU >= {MATCH_IOU} is captioned with "
        f"that object's phrase, the {pool['background_candidates']} others with a\nbackground "
        "text. A tiny SAM's candidates are not the true boxes (its point masks round off a\n"
        "star's tips), so the model learns to read its crops too.\n"
    )


def _candidate_rows(m: dict[str, Any]) -> str:
    """Rows of the metrics on SAM's held-out candidates ("" when they were not measured)."""
    if "candidate_accuracy" not in m:
        return ""
    return (
        f"| SAM's candidates on these scenes that match an object ({m['candidates']}): "
        "phrase right "
        f"| {m['candidate_accuracy']:.3f} |\n"
        f"| SAM's candidates that match an object: kept | {m['candidates_kept']:.3f} |\n"
        f"| SAM's candidates that match no object ({m['background_candidates']}): rejected "
        f"| {m['candidate_background_rejection']:.3f} |\n"
    )


def _last_span(log: list[dict[str, Any]]) -> int:
    if len(log) < 2:
        return log[-1]["step"] if log else 0
    return log[-1]["step"] - log[-2]["step"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m grounded_seg.shapes.train_clip OUT_DIR [--steps N ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m grounded_seg.shapes.train_clip",
        description="Train a CLIP from scratch on the shapes world (see train_shapes_clip).",
    )
    parser.add_argument("out_dir")
    for name, parameter in inspect.signature(train_shapes_clip).parameters.items():
        if name in ("out_dir", "device", "resume", "overwrite"):
            continue
        kind = type(parameter.default) if isinstance(parameter.default, (float, str)) else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=parameter.default)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-resume", dest="resume", action="store_false")
    parser.add_argument("--overwrite", action="store_true")
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = train_shapes_clip(args.pop("out_dir"), **args)
    logger.info("%s", json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

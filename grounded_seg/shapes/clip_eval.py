"""How a shapes CLIP is measured: zero-shot accuracy and background rejection on held-out
ground-truth crops, and how it reads SAM's own candidates."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..proposers.clip import ClipScorer
from .clip_data import CAPTIONS, CandidatePool, eval_crops
from .world import HELD_OUT_SEEDS, PHRASES


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


def sam_identity(sam: str | os.PathLike) -> dict[str, str]:
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

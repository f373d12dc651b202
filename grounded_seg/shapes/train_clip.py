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
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..clip import MAX_LOGIT_SCALE
from ..devices import resolve_device
from ..proposers.clip import ClipScorer
from ..training import adamw_decaying_matrices, environment, run_training, write_run
from .clip_card import model_card
from .clip_data import (
    BACKGROUND_TEXTS,
    BOX_JITTER,
    CAPTIONS,
    CROP_MARGIN,
    MATCH_IOU,
    MAX_BACKGROUND_OVERLAP,
    TEMPLATE,
    CandidatePool,
    background_boxes,
    candidate_pool,
    eval_crops,
    jitter_boxes,
    load_candidate_segmenter,
    match_candidates,
    pool_seeds,
    step_pairs,
)
from .clip_eval import evaluate_on_candidates, evaluate_scorer, evaluate_shapes_clip, sam_identity
from .clip_model import MAX_TEXT_LEN, image_processor_for, pairs_loss, shapes_clip_config
from .clip_tokenizer import write_clip_tokenizer
from .world import HELD_OUT_SEEDS

__all__ = [
    "BACKGROUND_TEXTS",
    "BOX_JITTER",
    "CAPTIONS",
    "CHECKPOINT_DIR",
    "CHECKPOINT_FILE",
    "CROP_MARGIN",
    "LOG_FILE",
    "MATCH_IOU",
    "MAX_BACKGROUND_OVERLAP",
    "MAX_TEXT_LEN",
    "TEMPLATE",
    "CandidatePool",
    "background_boxes",
    "candidate_pool",
    "eval_crops",
    "evaluate_on_candidates",
    "evaluate_scorer",
    "evaluate_shapes_clip",
    "image_processor_for",
    "jitter_boxes",
    "load_candidate_segmenter",
    "match_candidates",
    "pool_seeds",
    "shapes_clip_config",
    "step_pairs",
    "train_shapes_clip",
]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.pt"
LOG_FILE = "train_log.json"
CARD_FILE = "MODEL_CARD.md"
MODEL_FILE = "model.safetensors"


# --------------------------------------------------------------------------- training


def _learning_rate(step: int, steps: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``steps`` (1-based)."""
    if step <= warmup:
        return base * step / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def _is_finished(out: Path) -> bool:
    return (out / MODEL_FILE).is_file() and (out / LOG_FILE).is_file()


def _command(out_dir: Path, settings: dict[str, Any]) -> str:
    args = ["python", "-m", "grounded_seg.shapes.train_clip", str(out_dir)]
    for name in _CLI_SETTINGS:
        args += [f"--{name.replace('_', '-')}", str(settings[name])]
    return shlex.join(args)


_MODEL_SETTINGS = (
    *("image_size", "width", "layers", "patch_size"),
    *("text_width", "text_layers", "projection_dim"),
)
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
    config = shapes_clip_config(**{k: settings[k] for k in _MODEL_SETTINGS})
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
            optimizer = adamw_decaying_matrices(
                model, learning_rate, weight_decay, betas=(0.9, 0.98), eps=1e-6
            )
            tokens = tokenizer(list(CAPTIONS), padding=True, return_tensors="pt").to(torch_device)
            logger.info("training a %d-parameter CLIP for %d steps on %s (%s threads)",
                        n_params, steps, torch_device, torch.get_num_threads())  # fmt: skip
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
            scorer = ClipScorer(model, tokenizer, image_processor)

            def loss_of(pairs: tuple, step: int) -> tuple[torch.Tensor, dict[str, float]]:
                return pairs_loss(model, image_processor, tokens, pairs), {}

            def clamp(step: int, parts: dict[str, float]) -> None:
                with torch.no_grad():
                    model.logit_scale.clamp_(max=MAX_LOGIT_SCALE)

            def quick_evaluation(step: int) -> dict[str, float]:
                quick = evaluate_scorer(scorer, HELD_OUT_SEEDS[:50])
                return {"zero_shot_accuracy": round(quick["zero_shot_accuracy"], 4)}

            loop_start = time.perf_counter()
            result = run_training(
                model,
                loss_of,
                optimizer,
                batches=lambda step: step_pairs(seed, step + 1, batch_size, pool, candidate_share),
                steps=steps,
                learning_rate=lambda step: _learning_rate(
                    step + 1, steps, learning_rate, warmup_steps
                ),
                after_step=clamp,
                log_every=log_every,
                digits=5,
                evaluate=quick_evaluation,
                evaluate_every=eval_every,
                evaluate_at_end=False,
                checkpoint=checkpoint_file,
                checkpoint_every=checkpoint_every,
                settings=settings,
                resume=resume,
                stop_at=stop_after,
                logger=logger,
            )
            earlier = result.seconds - (time.perf_counter() - loop_start)  # earlier runs' share
            log = result.curve
            report: dict[str, Any] = {
                "finished": result.finished,
                "step": result.step,
                "settings": settings,
                "parameters": n_params,
                "final_loss": log[-1]["loss"] if log else math.nan,
                "train_seconds": result.seconds,
                "device": str(torch_device),
                "threads": torch.get_num_threads(),
                "command": _command(out, settings),
                "out_dir": str(out),
            }
            if not result.finished:
                logger.info("stopped at step %d of %d; the checkpoint is in %s",
                            result.step, steps, out)  # fmt: skip
                return report
            eval_seeds = HELD_OUT_SEEDS[:eval_scenes]
            report["metrics"] = evaluate_scorer(scorer, eval_seeds)
            if segmenter is not None and pool is not None:
                report["metrics"].update(
                    evaluate_on_candidates(scorer, candidate_pool(segmenter, eval_seeds))
                )
                report["sam"] = sam_identity(sam)
                report["pool"] = {
                    "scenes": candidate_scenes,
                    "candidates": len(pool),
                    "background_candidates": len(pool.backgrounds),
                    "seconds": round(pool_seconds, 1),
                }
            report["eval_seeds"] = f"HELD_OUT_SEEDS[:{eval_scenes}]"
            out.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(out)
            tokenizer = write_clip_tokenizer(out)
            CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
            report["model_bytes"] = (out / MODEL_FILE).stat().st_size
            report["seconds"] = round(time.perf_counter() - started + earlier, 1)
            env = environment(torch_device)
            report["versions"] = {k: env[k] for k in ("python", "torch", "transformers", "numpy")}
            evals = [
                {k: row[k] for k in ("step", "zero_shot_accuracy", "seconds")}
                for row in log
                if "zero_shot_accuracy" in row
            ]
            write_run(
                out,
                {"report": report, "loss": log, "evals": evals},
                model_card(report, config, log, evals),
                log_name=LOG_FILE,
                card_name=CARD_FILE,
            )
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

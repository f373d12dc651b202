"""Training and fine-tuning Grounding DINO (``transformers.GroundingDinoForObjectDetection``).

:func:`train_grounding_dino` is the recipe on the training core (:mod:`grounded_seg.training`):
batch ``i`` is a pure function of ``i`` (built by a callable, in worker processes if asked), so a
run stopped after a checkpoint resumes to the same result. :func:`fine_tune_grounding_dino`
applies it to a user's COCO-format data set: each sample's caption lists the image's categories
plus negatives (categories it does not hold), shuffled, within the text encoder's window.

>>> from grounded_seg.gdino import fine_tune_grounding_dino                # doctest: +SKIP
>>> report = fine_tune_grounding_dino(
...     "grounding-dino-tiny", "data/train.json", "gdino-mine/", steps=2000)  # doctest: +SKIP
>>> GroundedSAM(detector="gdino-mine/")                                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..images import load_image
from ..training import run_training, write_json
from .data import GroundingCollator, GroundingSample, batch_to
from .loss import grounding_losses

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
REPORT_FILE = "fine_tune_report.json"


@dataclass
class TrainConfig:
    """How to train. Learning rates per parameter: ``learning_rate``, times
    ``backbone_lr_scale`` for the image and text backbones (the official recipe uses 0.1 when
    fine-tuning pretrained backbones). AdamW; linear warm-up over ``warmup_steps`` then cosine
    decay to zero at ``steps``; gradients clipped to ``grad_clip`` (L2 norm)."""

    steps: int = 1000
    batch_size: int = 4
    learning_rate: float = 1e-4
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 0.1
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 250
    workers: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        for name in ("warmup_steps", "workers", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        for name in ("learning_rate", "backbone_lr_scale", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if self.learning_rate == 0:
            raise ValueError("learning_rate: expected a number > 0, got 0")


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the backbones at ``backbone_lr_scale`` and no decay on gains and biases."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        backbone = ".backbone." in f".{name}" or ".text_backbone." in f".{name}"
        groups.setdefault((backbone, param.ndim >= 2), []).append(param)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": config.learning_rate * (config.backbone_lr_scale if backbone else 1.0),
                "weight_decay": config.weight_decay if matrix else 0.0,
            }
            for (backbone, matrix), params in sorted(groups.items())
        ]
    )


def _schedule(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps))

    return factor


def _resume_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with the run resuming it (how often to log and save,
    and the number of workers, may change: the batches do not depend on them)."""
    settings = dataclasses.asdict(config)
    for free in ("log_every", "checkpoint_every", "workers"):
        settings.pop(free)
    return settings


def train_grounding_dino(
    model: torch.nn.Module,
    make_batch: Callable[[int], dict[str, Any]],
    config: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    evaluate: Callable[[int], dict[str, float]] | None = None,
    evaluate_every: int | None = None,
    stop_at: int | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place for ``config.steps`` steps, with Grounding DINO's optimiser
    (:func:`_optimizer`), schedule and losses on :func:`grounded_seg.training.run_training`.

    Returns ``{"curve", "seconds", "resumed_at"}``: the logged rows, the training time (all runs
    of a resumed schedule together) and the steps at which earlier runs were resumed.

    ``stop_at``: end this run after that step (checkpoint written; the returned dict then also
    holds ``"stopped_at"``), to split a long schedule over several runs.

    ``make_batch(step)`` returns a :class:`~grounded_seg.gdino.GroundingCollator` batch (on the
    CPU); it must depend on ``step`` alone. With ``checkpoint_dir``, the model, optimiser, RNG
    state, step and curve are saved there every ``checkpoint_every`` steps and, with ``resume``, a
    run continues from what it finds (a checkpoint of another ``config`` or other ``settings`` is
    refused). ``evaluate(step)``, called every ``evaluate_every`` steps and at the end (model in
    eval mode), adds its metrics to the curve.
    """
    device = next(model.parameters()).device
    optimizer = _optimizer(model, config)

    def loss_of(batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return grounding_losses(model, batch_to(batch, device))

    result = run_training(
        model,
        loss_of,
        optimizer,
        batches=make_batch,
        steps=config.steps,
        workers=config.workers,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config)),
        grad_clip=config.grad_clip,
        log_every=config.log_every,
        evaluate=evaluate,
        evaluate_every=evaluate_every,
        checkpoint=Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None,
        checkpoint_every=config.checkpoint_every,
        settings={**_resume_settings(config), **(settings or {})},
        resume=resume,
        stop_at=stop_at,
        logger=logger,
    )
    report = {"curve": result.curve, "seconds": result.seconds, "resumed_at": result.resumed_at}
    if not result.finished:
        report["stopped_at"] = result.step
    return report


# --- a user's COCO data set -------------------------------------------------------------------


class CocoSamples:
    """Training samples from a COCO data set; ``batch(step)`` is a pure function of ``step``.

    Each sample is a random image; its caption lists the image's categories and up to
    ``negatives`` others, shuffled, as many as fit ``max_text_len`` tokens (categories of the
    image that do not fit are left out with their boxes: the prompt does not name them).
    """

    def __init__(
        self,
        dataset: Any,
        collator: GroundingCollator,
        batch_size: int,
        negatives: int,
        seed: int,
    ) -> None:
        self.dataset, self.collator = dataset, collator
        self.batch_size, self.negatives, self.seed = batch_size, negatives, seed
        index = {cid: i for i, cid in enumerate(dataset.category_ids)}
        per_image: dict[int, list[tuple[list[float], int]]] = {}
        for ann in dataset.data["annotations"]:
            if ann.get("iscrowd", 0) or ann["category_id"] not in index:
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w > 0 and h > 0:
                per_image.setdefault(ann["image_id"], []).append(
                    ([x, y, x + w, y + h], index[ann["category_id"]])
                )
        self.objects = [per_image.get(image["id"], []) for image in dataset.images]
        tokenizer = collator.tokenizer
        self.cost = [
            len(tokenizer(name, add_special_tokens=False, split_special_tokens=True)["input_ids"])
            + 1
            for name in dataset.classes
        ]
        budget = collator.max_text_len - 2  # [CLS] and [SEP]
        too_long = [n for n, c in zip(dataset.classes, self.cost, strict=True) if c > budget]
        if too_long:
            raise ValueError(
                f"categories {too_long!r} take more than the model's {budget} caption tokens; "
                "shorten their names"
            )

    def sample(self, rng: np.random.Generator) -> GroundingSample:
        i = int(rng.integers(len(self.dataset.paths)))
        image = load_image(self.dataset.paths[i])
        objects = self.objects[i]
        present = sorted({label for _, label in objects})
        absent = [c for c in range(len(self.dataset.classes)) if c not in set(present)]
        chosen = list(rng.permutation(present)) + list(
            rng.permutation(absent)[: self.negatives] if absent else []
        )
        budget, kept = self.collator.max_text_len - 2, []
        for c in chosen:
            if self.cost[c] <= budget:
                kept.append(int(c))
                budget -= self.cost[c]
        if not kept:  # an image without annotations and negatives=0: name one absent class
            kept = [int(rng.integers(len(self.dataset.classes)))]
        kept = [int(c) for c in rng.permutation(kept)]
        where = {c: k for k, c in enumerate(kept)}
        height, width = image.shape[:2]
        limit = [width, height, width, height]
        boxes = [np.clip(box, 0, limit) for box, c in objects if c in where]
        labels = [where[c] for _, c in objects if c in where]
        boxes_array = np.array(boxes, np.float32).reshape(-1, 4)
        ok = (boxes_array[:, 2] > boxes_array[:, 0]) & (boxes_array[:, 3] > boxes_array[:, 1])
        return GroundingSample(
            image,
            tuple(self.dataset.classes[c] for c in kept),
            boxes_array[ok],
            np.array(labels, np.int64)[ok],
        )

    def batch(self, step: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, step])
        return self.collator([self.sample(rng) for _ in range(self.batch_size)])


def _check_output_dir(output_dir: Path, source_dir: Path | None, overwrite: bool) -> None:
    if source_dir is not None and output_dir.resolve() == source_dir.resolve():
        raise ValueError(
            f"output_dir {output_dir} is the folder of the model being fine-tuned; choose another "
            "folder (the input is never overwritten)"
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"output_dir {output_dir} exists and is not a folder")
    if (output_dir / "model.safetensors").exists() and not overwrite:
        raise FileExistsError(f"{output_dir} holds a model already; pass overwrite=True to replace")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        known = {CHECKPOINT_FILE}
        if any(p.name not in known for p in output_dir.iterdir()):
            raise FileExistsError(
                f"output_dir {output_dir} is not empty; choose an empty or new folder"
            )


def save_grounding_dino(model: Any, tokenizer: Any, image_processor: Any, folder: Path) -> None:
    """Write the model (safetensors), tokenizer and image processor in the transformers layout
    that ``GroundedSAM(detector=folder)`` loads."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)


def fine_tune_grounding_dino(
    model: str | Path,
    annotation_file: str | Path,
    output_dir: str | Path,
    *,
    image_dir: str | Path | None = None,
    config: TrainConfig | None = None,
    negatives: int = 8,
    device: str | torch.device | None = None,
    resume: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tune a Grounding DINO (registry name or folder) on a COCO-format data set.

    ``annotation_file``: COCO JSON (``images``, ``annotations`` with ``bbox`` ``[x, y, w, h]``
    pixels, ``categories``); images in ``image_dir`` (default ``images/`` beside it). The result
    is written to ``output_dir`` (model, tokenizer, image processor, ``fine_tune_report.json``),
    never over the input model. Interrupted runs resume from ``output_dir/checkpoint.pt``.
    Returns the report (config, curve, seconds).
    """
    from .._loading import load_pretrained
    from ..evaluation import load_coco_dataset
    from ..registry import resolve_model

    config = config or TrainConfig()
    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
        raise ValueError(f"negatives: expected an int >= 0, got {negatives!r}")
    output = Path(output_dir)
    source = resolve_model(model, "detector")
    _check_output_dir(output, source.local_dir, overwrite)
    dataset = load_coco_dataset(annotation_file, image_dir)
    if not dataset.data["annotations"]:
        raise ValueError(f"{annotation_file}: no annotations to train on")
    network, parts = load_pretrained(
        model,
        "detector",
        "grounding-dino",
        "GroundingDinoForObjectDetection",
        {"tokenizer": "AutoTokenizer", "image_processor": "AutoImageProcessor"},
        device,
    )
    network.config.auxiliary_loss = True
    collator = GroundingCollator(
        parts["tokenizer"], parts["image_processor"], network.config.max_text_len
    )
    samples = CocoSamples(dataset, collator, config.batch_size, negatives, config.seed)
    output.mkdir(parents=True, exist_ok=True)
    result = train_grounding_dino(
        network, samples.batch, config, checkpoint_dir=output, resume=resume
    )
    save_grounding_dino(network, parts["tokenizer"], parts["image_processor"], output)
    report = {
        "model": str(model),
        "annotation_file": str(annotation_file),
        "images": len(dataset.paths),
        "classes": list(dataset.classes),
        "negatives": negatives,
        "device": str(next(network.parameters()).device),
        "config": dataclasses.asdict(config),
        **result,
    }
    write_json(output / REPORT_FILE, report)
    (output / CHECKPOINT_FILE).unlink(missing_ok=True)
    logger.info("fine-tuned %s for %d steps in %.0f s", model, config.steps, result["seconds"])
    return report

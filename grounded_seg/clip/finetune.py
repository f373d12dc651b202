"""Fine-tuning a CLIP checkpoint on a user's own image-caption pairs with the contrastive loss.

>>> from grounded_seg.clip import fine_tune_clip                          # doctest: +SKIP
>>> report = fine_tune_clip("clip-vit-base-patch32", "my_photos/", "clip-mine/")  # doctest: +SKIP
>>> report.val_accuracy_before, report.val_accuracy_after                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from .._loading import load_component, load_config, load_model
from ..devices import resolve_device
from ..images import load_image
from ..registry import ModelSource, resolve_model
from ..training import adamw_decaying_matrices, run_training, write_json
from .data import ImageCaptionFolder, caption_batches, caption_key
from .loss import MAX_LOGIT_SCALE, contrastive_loss

logger = logging.getLogger(__name__)

REPORT_FILE = "fine_tune_report.json"
_ROLE = "clip model"


@dataclass
class FineTuneReport:
    """What :func:`fine_tune_clip` did and measured; also written to ``fine_tune_report.json``.

    Losses are :func:`contrastive_loss` values in nats, averaged over pairs. The held-out loss is
    computed on fixed caption-distinct batches of the held-out pairs, so before and after are
    comparable. Zero-shot accuracy is the fraction of held-out images whose own caption has the
    highest cosine similarity among the ``n_val_captions`` distinct held-out captions (chance:
    ``1 / n_val_captions``).
    """

    model: str  # the checkpoint fine-tuned (as passed)
    output_dir: str
    device: str
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    seed: int
    n_train: int  # training pairs
    n_val: int  # held-out pairs
    n_val_captions: int  # distinct held-out captions (the classes of the zero-shot accuracy)
    train_losses: list[float] = field(default_factory=list)  # mean training loss of each epoch
    val_loss_before: float = math.nan
    val_loss_after: float = math.nan
    val_accuracy_before: float = math.nan  # in [0, 1]
    val_accuracy_after: float = math.nan
    logit_scale_before: float = math.nan  # exp(logit_scale): the temperature scale
    logit_scale_after: float = math.nan
    seconds: float = 0.0  # wall time of the whole call

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> FineTuneReport:
        """Read a report written by :func:`fine_tune_clip` (a file or its output folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / REPORT_FILE
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def projected_features(output: Any) -> torch.Tensor:
    """The projected embeddings from ``get_image_features``/``get_text_features``.

    transformers 4 returns the ``(N, D)`` tensor; transformers 5 returns a
    ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds the projection (a tuple, with the
    pooled output second, when ``return_dict=False``).
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor):
        return output[1]
    raise TypeError(f"cannot find the projected features in a {type(output).__name__}")


class _Encoder:
    """Runs the CLIP towers on lists of images and captions (preprocessing included)."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, device: torch.device):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = device
        self.max_text_len = int(model.config.text_config.max_position_embeddings)

    def images(self, images: list[np.ndarray]) -> torch.Tensor:
        """``(N, D)`` projected image embeddings of RGB uint8 images."""
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return projected_features(
            self.model.get_image_features(pixel_values=pixels.to(self.device))
        )

    def texts(self, captions: list[str]) -> torch.Tensor:
        """``(N, D)`` projected caption embeddings (captions truncated to the text window)."""
        tokens = self.tokenizer(
            captions,
            padding=True,
            truncation=True,
            max_length=self.max_text_len,
            return_tensors="pt",
            split_special_tokens=True,  # as inference reads user text (see ClipScorer)
        )
        return projected_features(
            self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
        )

    def batch_loss(self, data: ImageCaptionFolder, indices: list[int]) -> torch.Tensor:
        images = [load_image(data.files[i]) for i in indices]
        image_emb = self.images(images)
        text_emb = self.texts([data.captions[i] for i in indices])
        return contrastive_loss(image_emb, text_emb, self.model.logit_scale)


@torch.no_grad()
def _evaluate(
    encoder: _Encoder,
    data: ImageCaptionFolder,
    val_indices: list[int],
    val_batches: list[list[int]],
    batch_size: int,
) -> tuple[float, float]:
    """Held-out (loss, zero-shot accuracy); see :class:`FineTuneReport`."""
    encoder.model.eval()
    total, count = 0.0, 0
    for batch in val_batches:
        total += float(encoder.batch_loss(data, batch)) * len(batch)
        count += len(batch)
    loss = total / count if count else math.nan
    keys = [caption_key(data.captions[i]) for i in val_indices]
    distinct = list(dict.fromkeys(keys))
    texts = {caption_key(data.captions[i]): data.captions[i] for i in reversed(val_indices)}
    text_emb = torch.cat(
        [
            encoder.texts([texts[k] for k in distinct[start : start + batch_size]])
            for start in range(0, len(distinct), batch_size)
        ]
    )
    image_emb = torch.cat(
        [
            encoder.images(
                [load_image(data.files[i]) for i in val_indices[start : start + batch_size]]
            )
            for start in range(0, len(val_indices), batch_size)
        ]
    )
    similarity = functional.normalize(image_emb, dim=-1) @ functional.normalize(text_emb, dim=-1).T
    predicted = similarity.argmax(dim=-1).cpu()
    truth = torch.tensor([distinct.index(k) for k in keys])
    return loss, float((predicted == truth).float().mean())


def _check_output_dir(output_dir: Path, source: ModelSource) -> None:
    """Refuse the input checkpoint folder and any non-empty folder that is not a previous output."""
    if source.local_dir is not None and output_dir.resolve() == source.local_dir.resolve():
        raise ValueError(
            f"output_dir {output_dir} is the folder of the checkpoint being fine-tuned; "
            "choose another folder (the input is never overwritten)"
        )
    if output_dir.exists():
        if not output_dir.is_dir():
            raise NotADirectoryError(f"output_dir {output_dir} exists and is not a folder")
        if any(output_dir.iterdir()) and not (output_dir / REPORT_FILE).is_file():
            raise FileExistsError(
                f"output_dir {output_dir} is not empty and holds no {REPORT_FILE} (it is not the "
                "output of an earlier fine_tune_clip); choose an empty or new folder"
            )


def _split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Shuffle ``range(n)`` by ``seed``; the first ``round(n * val_fraction)`` are held out."""
    n_val = round(n * val_fraction)
    if n_val < 2 or n - n_val < 2:
        raise ValueError(
            f"val_fraction={val_fraction} of {n} pairs leaves {n - n_val} for training and {n_val}"
            " held out: expected at least 2 of each (add pairs or change val_fraction)"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def _training_plan(
    data: ImageCaptionFolder,
    train_indices: list[int],
    files: list[str],
    epochs: int,
    batch_size: int,
    seed: int,
) -> list[tuple[int, list[int]]]:
    """Every step's ``(epoch, batch)``: epoch ``e`` deals the training pairs into
    :func:`caption_batches` shuffled by ``seed + 1 + e`` (positions in ``train_indices``)."""
    captions = [data.captions[i] for i in train_indices]
    groups = [files[i] for i in train_indices]
    plan = []
    for epoch in range(epochs):
        batches = caption_batches(captions, batch_size, seed=seed + 1 + epoch, groups=groups)
        if not batches:  # e.g. only one image, captioned several ways
            raise ValueError(
                "the training pairs form no batch of 2 pairs with different captions and "
                "different image files; add pairs"
            )
        plan += [(epoch, batch) for batch in batches]
    return plan


def _check_number(name: str, value: Any, low: float, *, integer: bool, open_low: bool) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low)
    if not ok:
        what = "an int" if integer else "a number"
        bound = f"> {low}" if open_low else f">= {low}"
        raise ValueError(f"{name}: expected {what} {bound}, got {value!r}")


def fine_tune_clip(
    model: str | os.PathLike,
    data: str | os.PathLike | ImageCaptionFolder,
    output_dir: str | os.PathLike,
    *,
    epochs: int = 5,
    batch_size: int = 32,
    learning_rate: float = 1e-5,
    weight_decay: float = 0.1,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str | torch.device | None = None,
    log_every: int = 10,
) -> FineTuneReport:
    """Fine-tune a CLIP checkpoint contrastively on image-caption pairs; save it and a report.

    Args:
        model: a CLIP registry name (``"clip-vit-base-patch32"``, ``"clip-vit-large-patch14"``)
            or a local CLIP folder; loaded strictly (every weight present and used).
        data: an :class:`ImageCaptionFolder` or the folder to read one from.
        output_dir: where the fine-tuned model, its tokenizer and image processor are saved
            (``save_pretrained``), with ``fine_tune_report.json``. It must be new, empty, or the
            output of an earlier call (which is overwritten); never the input checkpoint folder.
        epochs: passes over the training pairs.
        batch_size: pairs per step (>= 2). Each batch holds distinct captions (see
            :func:`caption_batches`), so with ``K`` distinct captions a batch holds at most ``K``.
        learning_rate: AdamW step size (1e-5 suits a pretrained CLIP; a small randomly initialised
            model needs ~1e-3).
        weight_decay: AdamW decoupled weight decay, applied to weight matrices only.
        val_fraction: share of the pairs held out (split shuffled by ``seed``); at least 2 pairs
            must land on each side.
        seed: an int >= 0; fixes the split, the batch order (epoch ``e`` shuffles with
            ``seed + 1 + e``) and any dropout; torch's global RNG state is restored afterwards.
        device: ``None``/``"auto"`` (CUDA, MPS, then CPU), or an explicit device. Training is in
            float32.
        log_every: log the mean training loss since the last log every this many steps
            (``logging`` at INFO).

    Each step minimises ``contrastive_loss(get_image_features, get_text_features, logit_scale)``
    and then clamps ``logit_scale`` to at most ``log(100)``, as CLIP does. Before and after
    training the held-out loss and zero-shot accuracy are measured (see :class:`FineTuneReport`).

    Returns:
        The :class:`FineTuneReport` (also in ``output_dir/fine_tune_report.json``).

    Raises:
        ValueError: bad arguments, a model that is not CLIP, too few pairs to split, or
            ``output_dir`` being the input checkpoint folder.
        FileExistsError: ``output_dir`` is non-empty and not an earlier output.
        grounded_seg.WeightsNotFoundError / InvalidWeightsError: the checkpoint cannot be loaded.
    """
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    started = time.perf_counter()
    _check_number("epochs", epochs, 1, integer=True, open_low=False)
    _check_number("batch_size", batch_size, 2, integer=True, open_low=False)
    _check_number("learning_rate", learning_rate, 0.0, integer=False, open_low=True)
    _check_number("weight_decay", weight_decay, 0.0, integer=False, open_low=False)
    _check_number("val_fraction", val_fraction, 0.0, integer=False, open_low=True)
    if val_fraction >= 1:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction!r}")
    _check_number("seed", seed, 0, integer=True, open_low=False)
    _check_number("log_every", log_every, 1, integer=True, open_low=False)
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError(f"output_dir: expected a folder path, got {type(output_dir).__name__}")

    source = resolve_model(model, "detector")
    out = Path(output_dir).expanduser()
    _check_output_dir(out, source)
    dataset = data if isinstance(data, ImageCaptionFolder) else ImageCaptionFolder(data)
    train_indices, val_indices = _split(len(dataset), val_fraction, seed)
    for part, indices in (("training", train_indices), ("held-out", val_indices)):
        if len({caption_key(dataset.captions[i]) for i in indices}) < 2:
            raise ValueError(
                f"the {len(indices)} {part} pairs have a single distinct caption: contrastive "
                "training and zero-shot accuracy need at least 2 different captions on each side"
            )

    torch_device = resolve_device(device)
    config = load_config(source, "clip", _ROLE)
    clip = load_model(source, CLIPModel, config, _ROLE, torch_device)
    tokenizer = load_component(source, AutoTokenizer, _ROLE, "tokenizer")
    image_processor = load_component(source, AutoImageProcessor, _ROLE, "image processor")
    encoder = _Encoder(clip, tokenizer, image_processor, torch_device)

    files = [str(dataset.files[i]) for i in range(len(dataset))]
    val_batches = [
        [val_indices[j] for j in batch]
        for batch in caption_batches(
            [dataset.captions[i] for i in val_indices],
            batch_size,
            seed=seed,
            groups=[files[i] for i in val_indices],
        )
    ]
    n_val_captions = len({caption_key(dataset.captions[i]) for i in val_indices})
    plan = _training_plan(dataset, train_indices, files, epochs, batch_size, seed)
    report = FineTuneReport(
        model=os.fspath(model),
        output_dir=str(out),
        device=str(torch_device),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=float(learning_rate),
        weight_decay=float(weight_decay),
        seed=seed,
        n_train=len(train_indices),
        n_val=len(val_indices),
        n_val_captions=n_val_captions,
    )
    logger.info(
        "fine-tuning %s on %d pairs (%d held out, %d distinct held-out captions) on %s",
        report.model,
        report.n_train,
        report.n_val,
        n_val_captions,
        torch_device,
    )

    fork_devices = [torch_device] if torch_device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        report.logit_scale_before = float(clip.logit_scale.detach().exp())
        report.val_loss_before, report.val_accuracy_before = _evaluate(
            encoder, dataset, val_indices, val_batches, batch_size
        )
        logger.info(
            "before: held-out loss %.4f, zero-shot accuracy %.3f (chance %.3f)",
            report.val_loss_before,
            report.val_accuracy_before,
            1 / n_val_captions,
        )
        totals = [[0.0, 0] for _ in range(epochs)]  # loss x pairs, pairs

        def loss_of(item: tuple[int, list[int]], step: int) -> tuple[torch.Tensor, dict]:
            return encoder.batch_loss(dataset, [train_indices[j] for j in item[1]]), {}

        def after_step(step: int, parts: dict[str, float]) -> None:
            with torch.no_grad():
                clip.logit_scale.clamp_(max=MAX_LOGIT_SCALE)
            epoch, batch = plan[step]
            totals[epoch][0] += parts["loss"] * len(batch)
            totals[epoch][1] += len(batch)
            if step + 1 == len(plan) or plan[step + 1][0] != epoch:
                report.train_losses.append(totals[epoch][0] / totals[epoch][1])
                logger.info("epoch %d/%d: mean training loss %.4f", epoch + 1, epochs,
                            report.train_losses[-1])  # fmt: skip

        run_training(
            clip,
            loss_of,
            adamw_decaying_matrices(clip, learning_rate, weight_decay),
            batches=plan.__getitem__,
            steps=len(plan),
            after_step=after_step,
            log_every=log_every,
            logger=logger,
        )
        report.val_loss_after, report.val_accuracy_after = _evaluate(
            encoder, dataset, val_indices, val_batches, batch_size
        )
        report.logit_scale_after = float(clip.logit_scale.detach().exp())
    logger.info(
        "after: held-out loss %.4f, zero-shot accuracy %.3f",
        report.val_loss_after,
        report.val_accuracy_after,
    )

    clip.eval()
    out.mkdir(parents=True, exist_ok=True)
    clip.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    report.seconds = time.perf_counter() - started
    write_json(out / REPORT_FILE, report.to_dict())
    logger.info("saved the fine-tuned model and %s to %s", REPORT_FILE, out)
    return report

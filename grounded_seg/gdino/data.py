"""Grounding DINO training samples and their batches, built exactly as inference builds inputs.

A sample is one image, the classes its caption lists (in caption order) and its boxes, each
labelled with the index of its class in that list. Classes without a box in the image are
negatives ("distractors"): the model learns to return nothing for them.

The caption is :func:`grounded_seg.prompts.build_caption`'s (``"red circle. blue star."``), the
image goes through the model's own image processor, so training sees what inference sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..prompts import build_caption

DELIMITER_IDS = (101, 102, 1012, 1029, 0)
"""Token ids that end a phrase for Grounding DINO: [CLS], [SEP], ".", "?" and [PAD]."""


@dataclass(frozen=True)
class GroundingSample:
    """One training example.

    ``image``: RGB uint8 ``(H, W, 3)``. ``classes``: the caption's classes in order, each once.
    ``boxes``: ``(N, 4)`` float xyxy pixels of ``image``. ``labels``: ``(N,)`` int, the index in
    ``classes`` of each box's class.
    """

    image: np.ndarray
    classes: tuple[str, ...]
    boxes: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        image = self.image
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
            raise TypeError(f"image: expected a uint8 (H, W, 3) array, got {_describe(image)}")
        if image.shape[2] != 3:
            raise ValueError(f"image: expected 3 channels (RGB), got shape {image.shape}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes: expected distinct class names, got {self.classes!r}")
        boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        labels = np.asarray(self.labels, np.int64).reshape(-1)
        if len(boxes) != len(labels):
            raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(f"labels: expected indices in [0, {len(self.classes)}), got {labels}")
        height, width = image.shape[:2]
        if len(boxes) and (
            not np.isfinite(boxes).all()
            or (boxes[:, 2:] <= boxes[:, :2]).any()
            or (boxes < 0).any()
            or (boxes[:, [0, 2]] > width).any()
            or (boxes[:, [1, 3]] > height).any()
        ):
            raise ValueError(
                f"boxes: expected xyxy pixels inside the {width}x{height} image with x2 > x1 and "
                f"y2 > y1, got {boxes.tolist()}"
            )
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", labels)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


def phrase_count(input_ids: Sequence[int]) -> int:
    """How many phrases Grounding DINO's loss sees in one caption: runs of tokens between
    delimiters (:data:`DELIMITER_IDS`)."""
    count, inside = 0, False
    for token in input_ids:
        if int(token) in DELIMITER_IDS:
            inside = False
        elif not inside:
            count, inside = count + 1, True
    return count


def normalized_cxcywh(boxes: np.ndarray, height: int, width: int) -> torch.Tensor:
    """``(N, 4)`` xyxy pixels -> ``(N, 4)`` (cx, cy, w, h) as fractions of the image's size."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    x1, y1, x2, y2 = (boxes / scale).unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


class GroundingCollator:
    """Turn samples into one model batch: ``pixel_values`` ``(B, 3, h, w)``, ``pixel_mask``,
    ``input_ids`` / ``attention_mask`` / ``token_type_ids`` ``(B, T)`` (padded to the longest
    caption) and ``labels``, one dict per image with ``class_labels`` ``(N,)`` and ``boxes``
    ``(N, 4)`` normalised (cx, cy, w, h) of the image (the model's loss format).

    Raises ``ValueError`` when a caption exceeds ``max_text_len`` tokens or does not tokenise into
    one phrase per class (a class name holding "." or "?" would split).
    """

    def __init__(self, tokenizer: Any, image_processor: Any, max_text_len: int) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_text_len = int(max_text_len)

    def __call__(self, samples: Sequence[GroundingSample]) -> dict[str, Any]:
        if not samples:
            raise ValueError("expected at least one sample, got an empty batch")
        captions = [build_caption(sample.classes)[0] for sample in samples]
        # class names are plain text, as at inference: "[SEP]" in a name is not the token
        text = self.tokenizer(
            captions, padding="longest", return_tensors="pt", split_special_tokens=True
        )
        if text["input_ids"].shape[1] > self.max_text_len:
            raise ValueError(
                f"a caption tokenised to {text['input_ids'].shape[1]} tokens, more than the "
                f"model's max_text_len {self.max_text_len}: list fewer classes per sample"
            )
        for caption, ids, sample in zip(captions, text["input_ids"], samples, strict=True):
            found = phrase_count(ids.tolist())
            if found != len(sample.classes):
                raise ValueError(
                    f"caption {caption!r} tokenises into {found} phrases for "
                    f"{len(sample.classes)} classes; class names must not hold '.' or '?'"
                )
        pixels = self.image_processor(images=[s.image for s in samples], return_tensors="pt")
        labels = [
            {
                "class_labels": torch.from_numpy(sample.labels),
                "boxes": normalized_cxcywh(sample.boxes, *sample.image.shape[:2]),
            }
            for sample in samples
        ]
        batch = {
            "pixel_values": pixels["pixel_values"],
            "pixel_mask": pixels["pixel_mask"],
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "labels": labels,
        }
        if "token_type_ids" in text:
            batch["token_type_ids"] = text["token_type_ids"]
        return batch


def batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with every tensor (labels included) on ``device``."""
    moved = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    moved["labels"] = [{k: v.to(device) for k, v in item.items()} for item in batch["labels"]]
    return moved

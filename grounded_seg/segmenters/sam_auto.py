"""SAM's automatic mode: a grid of point prompts -> deduplicated candidate masks and boxes.

The steps follow segment-anything's ``SamAutomaticMaskGenerator``: one point prompt per grid cell,
three masks per point, keep masks whose predicted IoU and stability score pass their thresholds,
then box NMS. Filtering and NMS run on the low-resolution logits (cheap); only the survivors are
resized to the original image. With ``min_mask_region_area``, small disconnected islands are
dropped from each mask and small holes filled (segment-anything's ``min_mask_region_area``
post-processing), so a few stray pixels no longer stretch a candidate's box. The image embedding
is the segmenter's own (computed once).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..boxes import class_aware_nms
from .sam import SamImageState, SamSegmenter, scale_boxes

AUTO_MASK_DEFAULTS: dict[str, float | int] = {
    "points_per_side": 16,  # 16 x 16 = 256 point prompts (segment-anything: 32)
    "points_per_batch": 64,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "min_area_fraction": 0.0,  # drop masks smaller than this fraction of the image
    "min_mask_region_area": 0,  # islands and holes below this many pixels are removed
}
"""segment-anything's automatic-mode defaults (but 16 points a side)."""


@dataclass(frozen=True)
class AutoMaskConfig:
    """Settings of the automatic mode; a field left ``None`` is not set here.

    Only the fields given override: :meth:`resolved` fills the others from a model's calibrated
    settings (``grounded_seg.json`` beside a small SAM such as shapes-sam), then from
    :data:`AUTO_MASK_DEFAULTS`. So ``AutoMaskConfig(points_per_side=32)`` asks for a denser grid
    and keeps the model's calibrated filters.
    """

    points_per_side: int | None = None
    points_per_batch: int | None = None
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    stability_score_offset: float | None = None
    box_nms_thresh: float | None = None
    min_area_fraction: float | None = None
    min_mask_region_area: int | None = None

    def __post_init__(self) -> None:
        for name in ("points_per_side", "points_per_batch"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        area = self.min_mask_region_area
        if area is not None and (isinstance(area, bool) or not isinstance(area, int) or area < 0):
            raise ValueError(f"min_mask_region_area: expected an int >= 0, got {area!r}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "stability_score_offset",
                     "box_nms_thresh", "min_area_fraction"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise TypeError(f"{name}: expected a number, got {value!r}")

    def given(self) -> dict[str, float | int]:
        """The fields set here (not ``None``)."""
        return {k: v for k, v in vars(self).items() if v is not None}

    def resolved(self, calibrated: dict | None = None) -> AutoMaskConfig:
        """Every field set: this config's, else ``calibrated``'s, else the defaults."""
        unknown = set(calibrated or {}) - set(AUTO_MASK_DEFAULTS)
        if unknown:
            raise ValueError(f"auto_mask settings: unknown fields {sorted(unknown)}")
        return AutoMaskConfig(**{**AUTO_MASK_DEFAULTS, **(calibrated or {}), **self.given()})


@dataclass
class MaskCandidates:
    """Candidate regions of one image, best predicted IoU first.

    ``xyxy`` ``(N, 4)`` float32 pixels of the original image (the masks' tight boxes);
    ``masks`` ``(N, H, W)`` bool at the original size; ``scores`` ``(N,)`` SAM's predicted IoU;
    ``stability`` ``(N,)`` the stability score.
    """

    xyxy: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    stability: np.ndarray

    def __len__(self) -> int:
        return len(self.xyxy)


def point_grid(points_per_side: int, height: int, width: int) -> np.ndarray:
    """``(n*n, 2)`` (x, y) pixel points at the centres of an ``n x n`` grid over the image."""
    offset = 1.0 / (2 * points_per_side)
    ticks = np.linspace(offset, 1 - offset, points_per_side)
    xs, ys = np.meshgrid(ticks * width, ticks * height)
    return np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)


def stability_score(logits: torch.Tensor, offset: float, threshold: float = 0.0) -> torch.Tensor:
    """IoU of the masks thresholded at ``threshold + offset`` and ``threshold - offset``.

    ``logits`` ``(N, h, w)``; the first mask is inside the second, so IoU is the area ratio.
    """
    high = (logits > threshold + offset).flatten(1).sum(-1).float()
    low = (logits > threshold - offset).flatten(1).sum(-1).float()
    return torch.where(low > 0, high / low.clamp(min=1), torch.zeros_like(low))


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes ``(N, 4)`` of bool masks ``(N, h, w)``, in mask pixels (x2, y2 exclusive).

    An empty mask gets ``[0, 0, 0, 0]``.
    """
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    arange_h, arange_w = torch.arange(h), torch.arange(w)
    y1 = torch.where(rows, arange_h, h).min(dim=1).values
    y2 = torch.where(rows, arange_h + 1, 0).max(dim=1).values
    x1 = torch.where(cols, arange_w, w).min(dim=1).values
    x2 = torch.where(cols, arange_w + 1, 0).max(dim=1).values
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(masks.flatten(1).any(1)[:, None], boxes, torch.zeros_like(boxes))


def remove_small_regions(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """``mask`` (H, W) bool without its islands and holes smaller than ``min_area`` pixels.

    Islands are 8-connected regions of the mask, holes 4-connected regions of its complement that
    do not touch the image border. The largest island is always kept, so a mask never empties
    (segment-anything would drop the mask instead). Returns ``(mask, changed)``.
    """
    if min_area <= 0 or not mask.any():
        return mask, False
    changed = False
    holes = ~mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(holes.astype(np.uint8), None, 4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    small = [
        i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] < min_area and i not in border
    ]
    if small:
        mask = mask | np.isin(labels, small)
        changed = True
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), None, 8)
    if count > 2:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = [i + 1 for i, a in enumerate(areas) if a >= min_area or i == int(np.argmax(areas))]
        if len(keep) < count - 1:
            mask = np.isin(labels, keep)
            changed = True
    return mask, changed


@torch.inference_mode()
def generate_candidates(
    segmenter: SamSegmenter, state: SamImageState, config: AutoMaskConfig | None = None
) -> MaskCandidates:
    """Run SAM's automatic mode on the image behind ``state`` (its embedding is reused); fields
    of ``config`` left unset take the segmenter's calibrated settings, then the defaults."""
    config = (config or AutoMaskConfig()).resolved(getattr(segmenter, "auto_mask", None))
    height, width = state.original_size
    embeddings = segmenter.image_embeddings(state)
    points = point_grid(config.points_per_side, height, width)
    scaled = scale_boxes(np.tile(points, 2), state.original_size, state.reshaped_size)[:, :2]

    logits_kept, scores_kept, stability_kept = [], [], []
    for start in range(0, len(scaled), config.points_per_batch):
        batch = torch.from_numpy(scaled[start : start + config.points_per_batch])
        with segmenter.autocast():
            outputs = segmenter.model(
                image_embeddings=embeddings,
                input_points=batch[None, :, None, :].to(segmenter.device, segmenter.dtype),
                input_labels=torch.ones(
                    1, len(batch), 1, dtype=torch.long, device=segmenter.device
                ),
                multimask_output=True,
            )
        logits = outputs.pred_masks[0].float().flatten(0, 1)  # (P * 3, h, w)
        iou = outputs.iou_scores[0].float().flatten()  # (P * 3,)
        stability = stability_score(logits, config.stability_score_offset)
        keep = (iou > config.pred_iou_thresh) & (stability > config.stability_score_thresh)
        keep &= (logits > 0).flatten(1).any(1)
        logits_kept.append(logits[keep].cpu())
        scores_kept.append(iou[keep].cpu())
        stability_kept.append(stability[keep].cpu())

    logits = torch.cat(logits_kept)
    scores = torch.cat(scores_kept)
    stability = torch.cat(stability_kept)
    if len(logits) == 0:
        return _empty(height, width)
    # NMS on low-res boxes (one class): the approximate boxes only decide which masks survive
    low_boxes = mask_boxes(logits > 0)
    keep = class_aware_nms(
        low_boxes, scores, torch.zeros(len(scores), dtype=torch.long), config.box_nms_thresh
    )
    logits, scores, stability = logits[keep], scores[keep], stability[keep]
    masks = segmenter.upscale_masks(logits, state)
    if config.min_mask_region_area > 0:
        masks = np.stack([remove_small_regions(m, config.min_mask_region_area)[0] for m in masks])
    masks = torch.from_numpy(masks)
    # NMS again on the exact boxes: low-res boxes can differ where the full masks do not
    keep = class_aware_nms(
        mask_boxes(masks), scores, torch.zeros(len(scores), dtype=torch.long), config.box_nms_thresh
    )
    masks, scores, stability = masks[keep], scores[keep], stability[keep]
    areas = masks.flatten(1).sum(-1)
    keep = areas > max(0.0, config.min_area_fraction) * height * width
    masks, scores, stability = masks[keep], scores[keep], stability[keep]
    xyxy = mask_boxes(masks)
    return MaskCandidates(
        xyxy=xyxy.numpy().astype(np.float32),
        masks=masks.numpy(),
        scores=scores.clamp(0, 1).numpy().astype(np.float32),
        stability=stability.numpy().astype(np.float32),
    )


def _empty(height: int, width: int) -> MaskCandidates:
    return MaskCandidates(
        np.zeros((0, 4), np.float32),
        np.zeros((0, height, width), bool),
        np.zeros(0, np.float32),
        np.zeros(0, np.float32),
    )

"""Box arithmetic in one place: formats, clipping, IoU and class-aware NMS (pure torch)."""

from __future__ import annotations

import torch


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Convert ``(..., 4)`` boxes from (cx, cy, w, h) to (x1, y1, x2, y2), same units."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def normalized_cxcywh_to_pixels(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Map ``(N, 4)`` normalised (cx, cy, w, h) boxes to xyxy pixels of a ``height x width`` image.

    The result is float32 and clipped to the image: ``0 <= x <= width``, ``0 <= y <= height``.
    """
    xyxy = cxcywh_to_xyxy(boxes.float())
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)
    return clip_boxes(xyxy * scale, height, width)


def clip_boxes(xyxy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clip ``(N, 4)`` xyxy pixel boxes to a ``height x width`` image."""
    x = xyxy[..., 0::2].clamp(0, width)
    y = xyxy[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of xyxy boxes: ``(N, 4) x (M, 4) -> (N, M)``; empty boxes give 0."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def class_aware_nms(
    xyxy: torch.Tensor, scores: torch.Tensor, class_ids: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS run separately per class, highest score first.

    A box is suppressed when a higher-scoring box *of the same class* overlaps it with
    IoU > ``iou_threshold``. Returns a LongTensor of kept indices sorted by descending score.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    iou = box_iou(xyxy[order], xyxy[order])
    same_class = class_ids[order][:, None] == class_ids[order][None, :]
    overlap = (iou > iou_threshold) & same_class
    keep = torch.ones(order.numel(), dtype=torch.bool)
    for i in range(order.numel()):
        if keep[i]:
            later = overlap[i].clone()
            later[: i + 1] = False
            keep &= ~later
    return order[keep]

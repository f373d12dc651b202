"""One timed run of either pipeline on a case (time per stage, FLOPs, peak memory, outputs),
how two runs' outputs compare, and the dense matmul rate they are measured against.

grounded_seg's side is run here; the reference's comes back from ``_reference_client.py``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from _stages import StageMeter, peak_memory_bytes, reset_peak_memory, synchronizer


@dataclass
class Run:
    """One timed run of one pipeline on one case."""

    seconds: float
    stages: dict[str, float]
    flops: dict[str, int] | None
    peak_memory: int
    base_memory: int  # in use when the run started (models included)
    boxes: list[int]
    outputs: list[tuple[Any, Any]] = field(default_factory=list, repr=False)


def grounded_seg_meter(gs: Any, device: Any) -> StageMeter:
    """grounded_seg's modules for each stage of ``_stages.STAGES``."""
    detector = gs.proposer.model.model
    sam = gs.segmenter.model
    return StageMeter(
        {
            "gdino image backbone": [detector.backbone],
            "gdino text backbone": [detector.text_backbone],
            "gdino enhancer": [detector.encoder],
            "gdino decoder": [detector.decoder],
            "sam image encoder": [sam.vision_encoder],
            "sam prompt + mask decoder": [sam.prompt_encoder, sam.mask_decoder],
        },
        synchronizer(device),
    )


def run_grounded_seg(
    gs: Any,
    items: list[tuple[str, str, float, float]],
    device: Any,
    *,
    cold: dict | None = None,
    flops: bool = False,
) -> Run:
    """``items`` of ``(image path, prompt, box threshold, text threshold)``.

    Default: the per-image cache, ``set_image`` when the image changes, ``predict`` per prompt.
    ``cold``: one ``segment(path, prompt, **cold)`` call per item instead (warm models).
    """
    from grounded_seg import segment

    meter = grounded_seg_meter(gs, device)
    sync = synchronizer(device)
    outputs = []
    base = reset_peak_memory(device)
    with meter.attached(), meter.counting_flops() if flops else contextlib.nullcontext():
        sync()
        start = time.perf_counter()
        current = None
        for image_path, prompt, box_threshold, text_threshold in items:
            if cold is not None:
                det = segment(
                    image_path,
                    prompt,
                    box_threshold=box_threshold,
                    text_threshold=text_threshold,
                    **cold,
                )
            else:
                if image_path != current:
                    gs.set_image(image_path)
                    current = image_path
                det = gs.predict(prompt, box_threshold, text_threshold)
            outputs.append((det.xyxy, det.mask))
        sync()
        seconds = time.perf_counter() - start
        gs.reset_image()
    return Run(
        seconds,
        dict(meter.seconds),
        dict(meter.flops) if flops else None,
        peak_memory_bytes(device),
        base,
        [len(xyxy) for xyxy, _ in outputs],
        outputs,
    )


@dataclass
class Agreement:
    same_counts: bool = True
    box_diff: float = 0.0  # max abs coordinate difference, pixels
    pixels_differing: int = 0
    pixels: int = 0
    min_iou: float = 1.0

    def line(self) -> str:
        if not self.same_counts:
            return "**box counts differ**"
        if self.pixels == 0:
            return "no boxes on either side"
        return (
            f"boxes ≤ {self.box_diff:.1e} px; masks: {self.pixels_differing} of {self.pixels:,} "
            f"px differ (min IoU {self.min_iou:.5f})"
        )


def compare(ours: Run, reference: Run) -> Agreement:
    """Match each grounded_seg box to its nearest reference box (the official ``predict``
    returns boxes in query order, grounded_seg by score) and compare boxes and masks."""
    import numpy as np

    if not ours.outputs or len(ours.outputs) != len(reference.outputs):
        raise ValueError(
            f"expected the outputs of the same items, got {len(ours.outputs)} from grounded_seg "
            f"and {len(reference.outputs)} from the reference"
        )
    agreement = Agreement()
    for (xyxy, masks), (ref_xyxy, ref_masks) in zip(ours.outputs, reference.outputs, strict=True):
        if len(xyxy) != len(ref_xyxy):
            agreement.same_counts = False
            continue
        h, w = masks.shape[1:] if len(masks) else (0, 0)
        ref_xyxy = ref_xyxy.copy()
        if len(ref_xyxy):
            ref_xyxy[:, 0::2] = ref_xyxy[:, 0::2].clip(0, w)
            ref_xyxy[:, 1::2] = ref_xyxy[:, 1::2].clip(0, h)
        for box, mask in zip(xyxy, masks, strict=True):
            j = int(np.abs(ref_xyxy - box).sum(axis=1).argmin())
            agreement.box_diff = max(agreement.box_diff, float(np.abs(ref_xyxy[j] - box).max()))
            ref_mask = ref_masks[j].astype(bool)
            differ = int((mask != ref_mask).sum())
            union = int((mask | ref_mask).sum())
            agreement.pixels_differing += differ
            agreement.pixels += mask.size
            iou = 1.0 if union == 0 else int((mask & ref_mask).sum()) / union
            agreement.min_iou = min(agreement.min_iou, iou)
    return agreement


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measured_matmul_tflops(device: Any, repeats: int = 5, dtype: Any = None) -> float:
    """Dense matmul throughput (fp32 unless ``dtype``) on this device and thread count (the
    practical ceiling): the median of ``repeats`` products of two 4096 x 4096 (CPU) or
    8192 x 8192 matrices, after two untimed ones."""
    import torch

    n = 4096 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = synchronizer(device)
    times = []
    for _ in range(repeats + 2):
        sync()
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / median(times[2:]) / 1e12

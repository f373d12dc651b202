"""``annotate()``: masks, boxes and labels drawn with supervision's annotators."""

from __future__ import annotations

import numpy as np
import supervision as sv

from .images import ImageInput, load_image, to_input_type


def labels_for(detections: sv.Detections) -> list[str]:
    """``"class_name 0.87"`` for each detection (the class id, else ``#index``, without names)."""
    names = detections.data.get("class_name")
    ids = detections.class_id
    if names is None:  # the class id, or the detection's index when there is none
        names = [f"#{i}" for i in range(len(detections))] if ids is None else ids
    labels = []
    for i in range(len(detections)):
        name = str(names[i])
        score = detections.confidence[i] if detections.confidence is not None else None
        labels.append(name if score is None else f"{name} {float(score):.2f}")
    return labels


def annotate(image: ImageInput, detections: sv.Detections, image_format: str = "RGB") -> ImageInput:
    """Draw ``detections`` on a copy of ``image`` and return it as the same kind of image.

    PIL in, PIL out; a ``(H, W, 3)`` array in ``image_format`` order in, an array in that order
    out; a path in, a PIL image out. The caller's image is not modified. Masks are blended,
    boxes outlined and each box labelled ``"class_name confidence"``, coloured by class.
    """
    if not isinstance(detections, sv.Detections):
        raise TypeError(
            f"detections: expected a supervision.Detections, got {type(detections).__name__}"
        )
    rgb = load_image(image, image_format=image_format)
    masks = detections.mask
    if len(detections) and masks is not None and masks.shape[1:] != rgb.shape[:2]:
        raise ValueError(
            f"detections: expected masks of the image size {rgb.shape[:2]}, got {masks.shape[1:]}"
        )
    xyxy = np.asarray(detections.xyxy, dtype=np.float64)
    if not np.isfinite(xyxy).all():
        bad = int(np.flatnonzero(~np.isfinite(xyxy).all(axis=1))[0])
        raise ValueError(
            f"detections.xyxy: expected finite pixel coordinates, got {xyxy[bad].tolist()} for "
            f"detection {bad}"
        )
    if len(detections):
        # drawn on a copy: boxes clipped to the image (OpenCV refuses coordinates beyond int32),
        # masks as bool
        height, width = rgb.shape[:2]
        detections = detections[np.arange(len(detections))]
        detections.xyxy = np.clip(xyxy, 0, [width, height, width, height]).astype(np.float32)
        if masks is not None:
            detections.mask = masks.astype(bool, copy=False)
    # supervision draws on a BGR canvas in place; work on our own copy.
    canvas = np.ascontiguousarray(rgb[:, :, ::-1])
    if len(detections):
        lookup = sv.ColorLookup.CLASS if detections.class_id is not None else sv.ColorLookup.INDEX
        if detections.mask is not None:
            canvas = sv.MaskAnnotator(opacity=0.45, color_lookup=lookup).annotate(
                canvas, detections
            )
        canvas = sv.BoxAnnotator(thickness=2, color_lookup=lookup).annotate(canvas, detections)
        canvas = sv.LabelAnnotator(text_scale=0.5, color_lookup=lookup).annotate(
            canvas, detections, labels=labels_for(detections)
        )
    return to_input_type(np.ascontiguousarray(canvas[:, :, ::-1]), image, image_format)

"""``annotate()``: masks, mask outlines, boxes and labels drawn with supervision's annotators.

Drawing choices users asked for: line widths and labels scale with the image (readable on a
128 px scene and on a 6000 x 4000 photo), labels stay inside the image, every class keeps one
colour across images and prompts (chosen from its name, not from its place in the prompt), and a
class that names a colour ("blue square") is drawn in that colour, so a colour-naming demo never
shows a blue square in red.
"""

from __future__ import annotations

import zlib

import numpy as np
import supervision as sv

from .images import ImageInput, load_image, to_input_type

# colour words a class may name, as drawn (RGB); the first one named in the class wins
NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 90, 240),
    "yellow": (245, 210, 30),
    "purple": (150, 60, 200),
    "orange": (255, 140, 20),
    "pink": (255, 105, 180),
    "brown": (140, 80, 30),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
    "cyan": (0, 200, 220),
    "magenta": (220, 0, 200),
}
_PALETTE = sv.ColorPalette.DEFAULT


def class_colour(name: str) -> sv.Color:
    """The colour a class is drawn in: the colour it names, else a palette colour chosen by a
    stable hash of its name (the same in every image, run and prompt)."""
    for word in name.lower().replace("-", " ").split():
        if word in NAMED_COLOURS:
            return sv.Color(*NAMED_COLOURS[word])
    return _PALETTE.by_idx(zlib.crc32(name.encode("utf-8")) % len(_PALETTE.colors))


def _text_colour(colour: sv.Color) -> sv.Color:
    """Black on light backgrounds (yellow, white), white on dark ones."""
    luminance = 0.299 * colour.r + 0.587 * colour.g + 0.114 * colour.b
    return sv.Color.BLACK if luminance > 150 else sv.Color.WHITE


def labels_for(detections: sv.Detections) -> list[str]:
    """``"class_name 0.87"`` for each detection (the class id, else ``#index``, without names);
    ``"class_name #7"`` for tracked detections (``tracker_id`` set)."""
    if detections.tracker_id is not None and len(detections):
        names = detections.data.get("class_name", detections.class_id)
        return [f"{names[i]} #{int(detections.tracker_id[i])}" for i in range(len(detections))]
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


def _keys(detections: sv.Detections) -> list[str]:
    """What decides each detection's colour: its class name, else its class id, else itself."""
    names = detections.data.get("class_name")
    if names is not None:
        return [str(n) for n in names]
    if detections.class_id is not None:
        return [f"class {int(c)}" for c in detections.class_id]
    return [f"#{i}" for i in range(len(detections))]


def annotate(image: ImageInput, detections: sv.Detections, image_format: str = "RGB") -> ImageInput:
    """Draw ``detections`` on a copy of ``image`` and return it as the same kind of image.

    PIL in, PIL out; a ``(H, W, 3)`` array in ``image_format`` order in, an array in that order
    out; a path in, a PIL image out. The caller's image and detections are not modified. Masks
    are blended and outlined, boxes drawn and each box labelled ``"class_name confidence"``;
    line widths and text scale with the image; colours follow the class (see the module doc).
    """
    if not isinstance(detections, sv.Detections):
        raise TypeError(
            f"detections: expected a supervision.Detections, got {type(detections).__name__}"
        )
    rgb = load_image(image, image_format=image_format)
    height, width = rgb.shape[:2]
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
    # supervision draws on a BGR canvas in place; work on our own copy.
    canvas = np.ascontiguousarray(rgb[:, :, ::-1])
    if len(detections):
        keys = _keys(detections)
        order = list(dict.fromkeys(keys))
        colours = sv.ColorPalette([class_colour(k) for k in order])
        texts = sv.ColorPalette([_text_colour(c) for c in colours.colors])
        # drawn on a copy: boxes clipped to the image (OpenCV refuses coordinates beyond int32),
        # masks as bool, and the colour index of each detection's class as its class id
        drawn = detections[np.arange(len(detections))]
        drawn.xyxy = np.clip(xyxy, 0, [width, height, width, height]).astype(np.float32)
        drawn.class_id = np.array([order.index(k) for k in keys], dtype=np.int64)
        lookup = sv.ColorLookup.CLASS
        thickness = max(1, round(min(width, height) / 360))  # 1 px at 128, 3 at 1080, 11 at 4000
        text_scale = max(0.3, sv.calculate_optimal_text_scale((width, height)))
        if masks is not None:
            drawn.mask = masks.astype(bool, copy=False)
            canvas = sv.MaskAnnotator(color=colours, opacity=0.45, color_lookup=lookup).annotate(
                canvas, drawn
            )
            canvas = sv.PolygonAnnotator(  # the mask's edge, visible on any background
                color=colours, thickness=max(1, thickness // 2), color_lookup=lookup
            ).annotate(canvas, drawn)
        canvas = sv.BoxAnnotator(color=colours, thickness=thickness, color_lookup=lookup).annotate(
            canvas, drawn
        )
        canvas = sv.LabelAnnotator(
            color=colours,
            text_color=texts,
            text_scale=text_scale,
            text_thickness=max(1, round(text_scale * 2)),
            text_padding=max(2, round(text_scale * 10)),
            color_lookup=lookup,
            smart_position=True,  # labels kept inside the image and apart from each other
        ).annotate(canvas, drawn, labels=labels_for(detections))
    return to_input_type(np.ascontiguousarray(canvas[:, :, ::-1]), image, image_format)

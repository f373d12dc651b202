"""The picture of an :class:`~grounded_seg.explain.Explanation`: one figure, the four stages.

Drawn with matplotlib's object API (``matplotlib.figure.Figure`` on the Agg canvas: no pyplot,
no global state, no display needed). matplotlib comes with supervision, a dependency.

    row 1   the image with the final boxes  |  1. backbone feature norms, one panel per level
    row 2   2-3. query-selection map of each class (best level per pixel, square-root colour
            scale shared by the classes) over the image in grey, with
            the tokens selected as decoder queries (dots; the class's peak a star)
    row 3   4. each detection's box after each decoder layer (faint: query selection, solid:
            final)  |  the token-by-detection probabilities (which words lit which box)
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from ..outputs import atomic_write, bytes_writer, check_output
from ..visualize import class_colour

MAX_CLASSES_SHOWN = 4


def draw(explanation: Any, max_classes: int = MAX_CLASSES_SHOWN, dpi: int = 100) -> Any:
    """A ``matplotlib.figure.Figure`` of the explanation (see the module doc); at most
    ``max_classes`` query-selection panels (the prompt's first classes)."""
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    e = explanation
    levels = len(e.feature_norms)
    shown = e.classes[:max_classes]
    columns = max(1 + levels, len(shown), 3)
    figure = Figure(figsize=(3.0 * columns, 9.6), dpi=dpi, layout="constrained")
    grid = figure.add_gridspec(3, columns)

    ax = figure.add_subplot(grid[0, 0])
    _image(ax, e.image, f"the answer: {len(e.detections)} box(es)")
    _boxes(ax, e.detections.xyxy, e.detections.data["class_name"], e.detections.confidence)
    for level in range(levels):
        ax = figure.add_subplot(grid[0, 1 + level])
        h, w = e.level_shapes[level]
        ax.imshow(e.feature_norms[level], cmap="viridis")
        ax.set_title(f"1. backbone level {level}: {h} x {w} tokens", fontsize=9)
        ax.set_axis_off()

    top = max(float(e.selection.max()), 1e-6)  # one scale for every class: absent ones stay dark
    for c, name in enumerate(shown):
        ax = figure.add_subplot(grid[1, c])
        best = e.selection[c].max(axis=0)
        ax.imshow(e.image.mean(axis=2), cmap="gray", vmin=0, vmax=255)
        # square-root scale: the probabilities fall fast away from the peak
        ax.imshow(best, cmap="inferno", alpha=0.75, norm=PowerNorm(0.5, vmin=0.0, vmax=top))
        ax.scatter(e.query_xy[:, 0], e.query_xy[:, 1], s=12 + 8 * e.query_level,
                   facecolors="none", edgecolors="cyan", linewidths=0.8)  # fmt: skip
        y, x = np.unravel_index(int(best.argmax()), best.shape)
        ax.scatter([x], [y], marker="*", s=160, c="white", edgecolors="black", linewidths=0.8)
        ax.set_title(f"2-3. selection map: {name}\npeak {best.max():.2f}", fontsize=9)
        ax.set_axis_off()

    ax = figure.add_subplot(grid[2, 0])
    _image(ax, e.image, f"4. decoder: boxes over {e.box_path.shape[1] - 1} layers")
    steps = e.box_path.shape[1]
    for k in range(len(e.box_path)):
        colour = _rgb(class_colour(str(e.detections.data["class_name"][k])))
        for step in range(steps):
            x0, y0, x1, y1 = e.box_path[k, step]
            ax.add_patch(_rectangle(x0, y0, x1, y1, colour, 0.25 + 0.75 * step / max(steps - 1, 1),
                                    "--" if step == 0 else "-"))  # fmt: skip
        centres = (e.box_path[k, :, :2] + e.box_path[k, :, 2:]) / 2
        ax.plot(centres[:, 0], centres[:, 1], "-o", color=colour, markersize=2, linewidth=1)

    ax = figure.add_subplot(grid[2, 1:])
    if len(e.token_scores):
        ax.imshow(e.token_scores, cmap="Greens", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(e.tokens)), e.tokens, rotation=60, fontsize=8)
        labels = [f"#{k + 1} {n}" for k, n in enumerate(e.detections.data["class_name"])]
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for k in range(e.token_scores.shape[0]):
            for t in range(e.token_scores.shape[1]):
                ax.text(t, k, f"{e.token_scores[k, t]:.2f}", ha="center", va="center", fontsize=6)
    else:
        ax.text(0.5, 0.5, "no detection", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("4. which words lit which box: each detection's token probabilities", fontsize=9)
    return figure


def save(explanation: Any, path: str | os.PathLike, overwrite: bool = False, **options) -> None:
    """Write the figure to ``path``, atomically (the format from the extension)."""
    target = check_output(path, overwrite=overwrite)
    fmt = target.suffix.lstrip(".").lower() or "png"
    figure = draw(explanation, **options)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt)
    atomic_write(target, bytes_writer(buffer.getvalue()), overwrite=overwrite)


def _image(ax: Any, image: np.ndarray, title: str) -> None:
    ax.imshow(image)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _rgb(colour: Any) -> tuple[float, float, float]:
    return (colour.r / 255, colour.g / 255, colour.b / 255)


def _rectangle(x0, y0, x1, y1, colour, alpha, style):
    from matplotlib.patches import Rectangle

    return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, alpha=alpha,
                     linewidth=1.5, linestyle=style)  # fmt: skip


def _boxes(ax: Any, xyxy: np.ndarray, names: np.ndarray, scores: np.ndarray) -> None:
    for (x0, y0, x1, y1), name, score in zip(xyxy, names, scores, strict=True):
        colour = _rgb(class_colour(str(name)))
        ax.add_patch(_rectangle(x0, y0, x1, y1, colour, 1.0, "-"))
        ax.text(x0, y0, f"{name} {score:.2f}", color="white", fontsize=7, va="bottom",
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 1})  # fmt: skip

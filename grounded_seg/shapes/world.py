"""The shapes world: small scenes where every answer is known.

A scene holds 1-4 filled shapes, {circle, square, triangle, star} x {red, green, blue, yellow,
purple} (20 phrases such as ``"red circle"``), on a grey noisy background, with a box, a phrase
and a mask per object. Sizes, positions and rotations vary; shapes never overlap, so every mask
is the exact set of that shape's pixels. Everything is a pure function of the seed.

>>> scene = make_scene(7)
>>> scene.image.shape, [obj.phrase for obj in scene.objects]      # doctest: +SKIP
((128, 128, 3), ['blue star', 'red circle'])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
PHRASES: tuple[str, ...] = tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES)
"""The 20 phrases; a phrase's index here is its class id (COCO category id = index + 1)."""

TRAIN_SEEDS = range(0, 1_000_000)
"""Seeds for training; evaluation uses :data:`HELD_OUT_SEEDS`, which never overlap them."""
HELD_OUT_SEEDS = range(1_000_000, 1_010_000)


@dataclass(frozen=True)
class ShapeObject:
    """One shape: ``box`` xyxy float32 pixels (tight, x2/y2 exclusive); ``mask`` bool (H, W)."""

    phrase: str
    color: str
    shape: str
    box: np.ndarray
    mask: np.ndarray

    @property
    def class_id(self) -> int:
        return PHRASES.index(self.phrase)


@dataclass(frozen=True)
class Scene:
    """A rendered scene: RGB uint8 ``(H, W, 3)`` image and its objects."""

    seed: int
    image: np.ndarray
    objects: tuple[ShapeObject, ...]

    @property
    def boxes(self) -> np.ndarray:
        """``(N, 4)`` xyxy float32 pixels."""
        return np.array([o.box for o in self.objects], np.float32).reshape(-1, 4)

    @property
    def masks(self) -> np.ndarray:
        """``(N, H, W)`` bool."""
        height, width = self.image.shape[:2]
        return np.array([o.mask for o in self.objects], bool).reshape(-1, height, width)

    @property
    def phrases(self) -> list[str]:
        return [o.phrase for o in self.objects]


def _polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    if shape == "square":
        corners = [np.pi / 4 + k * np.pi / 2 for k in range(4)]
        radii = [radius] * 4
    elif shape == "triangle":
        corners = [-np.pi / 2 + k * 2 * np.pi / 3 for k in range(3)]
        radii = [radius] * 3
    elif shape == "star":
        corners = [-np.pi / 2 + k * np.pi / 5 for k in range(10)]
        radii = [radius if k % 2 == 0 else radius * 0.45 for k in range(10)]
    else:
        raise ValueError(f"shape: expected one of {SHAPES}, got {shape!r}")
    points = [
        (cx + r * np.cos(a + angle), cy + r * np.sin(a + angle))
        for a, r in zip(corners, radii, strict=True)
    ]
    return np.round(np.array(points) * 16).astype(np.int32)  # 4 fractional bits for cv2


def render_shape(shape: str, cx: float, cy: float, radius: float, angle: float, size: int):
    """Bool mask ``(size, size)`` of one shape centred at (cx, cy) with the given radius (px)."""
    canvas = np.zeros((size, size), np.uint8)
    if shape == "circle":
        center = (round(cx * 16), round(cy * 16))
        cv2.circle(canvas, center, round(radius * 16), 1, thickness=-1, shift=4)
    else:
        cv2.fillPoly(canvas, [_polygon(shape, cx, cy, radius, angle)], 1, shift=4)
    return canvas.astype(bool)


def _tight_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey level ``(size, size)`` float64: a base, a horizontal ramp and pixel noise (the first
    draws of a scene's generator)."""
    base = rng.uniform(100, 160)
    ramp = np.linspace(-1, 1, size)[None, :] * rng.uniform(-12, 12)
    return base + ramp + rng.normal(0, 8, (size, size))


def background(seed: int, size: int = 128) -> np.ndarray:
    """The scene of ``seed`` with no shape: RGB uint8 ``(size, size, 3)``, the pixels under
    every object as they were before it was drawn (what removing an object should give)."""
    grey = _background(np.random.default_rng(int(seed)), size)
    return np.repeat(np.clip(np.round(grey), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def make_scene(
    seed: int, size: int = 128, max_objects: int = 4, phrases: Sequence[str] | None = None
) -> Scene:
    """The scene of ``seed``: deterministic, ``size x size`` pixels, 1 to ``max_objects`` shapes.

    With ``phrases`` (1 to 4 of :data:`PHRASES`), the scene holds exactly those shapes, in order.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    if size < 32:
        raise ValueError(f"size: expected at least 32 pixels, got {size}")
    if phrases is not None:
        unknown = [p for p in phrases if p not in PHRASES]
        if unknown or not 1 <= len(phrases) <= 4:
            raise ValueError(
                f"phrases: expected 1 to 4 of the world's phrases ({', '.join(PHRASES[:3])}, ...), "
                f"got {list(phrases)}"
            )
    rng = np.random.default_rng(int(seed))
    image = np.repeat(_background(rng, size)[:, :, None], 3, axis=2)
    occupied = np.zeros((size, size), bool)
    objects: list[ShapeObject] = []
    wanted = int(rng.integers(1, max_objects + 1)) if phrases is None else len(phrases)
    tries = wanted * (20 if phrases is None else 50)
    for _ in range(tries):  # rejection sampling: shapes (and a 2-px margin) never overlap
        if len(objects) == wanted:
            break
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        if phrases is not None:
            color, shape = phrases[len(objects)].split()
        radius = rng.uniform(0.07, 0.2) * size
        cx, cy = rng.uniform(radius + 1, size - radius - 1, 2)
        mask = render_shape(shape, cx, cy, radius, rng.uniform(0, 2 * np.pi), size)
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if mask.sum() < 30 or (grown & occupied).any():
            continue
        occupied |= mask
        shade = np.array(COLORS[color], float) * rng.uniform(0.85, 1.1)
        image[mask] = shade + rng.normal(0, 6, (int(mask.sum()), 3))
        objects.append(ShapeObject(f"{color} {shape}", color, shape, _tight_box(mask), mask))
    pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return Scene(int(seed), pixels, tuple(objects))


def scenes(seeds: Iterable[int], size: int = 128) -> Iterator[Scene]:
    """The scenes of ``seeds``, generated one at a time (never stored in bulk)."""
    for seed in seeds:
        yield make_scene(seed, size)

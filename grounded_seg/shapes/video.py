"""Moving shapes: short videos where every object's mask and track id are known in every frame.

Each object is one of the 20 phrases, moving with a constant velocity. Most bounce off the
borders; some fly straight through, entering or leaving the frame. Objects may cross: they are
drawn in a fixed order, later ones on top, and an object's mask in a frame is what is visible of
it (hidden pixels excluded). An object counts as present in a frame when at least
``MIN_VISIBLE`` of its pixels are visible. Everything is a pure function of the seed.

>>> video = make_video(1_000_123, frames=48)
>>> video.frames.shape, video.phrases                              # doctest: +SKIP
((48, 128, 128, 3), ['red circle', 'blue star', 'green square'])
>>> video.mot_text()[:40]                                          # MOT ground truth
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import COLORS, PHRASES, _background, render_shape

MIN_VISIBLE = 30
"""Pixels of an object that must be visible for it to count as present in a frame."""
MAX_CROSSING_FRAMES = 8
"""The longest two objects stay in contact: motions are drawn again (up to ``MAX_DRAWS``
times) until every crossing is a passing one, as people and cars cross in tracking data."""
MAX_DRAWS = 200


@dataclass(frozen=True)
class Track:
    """One object's motion: phrase, shape radius (px), start centre and velocity (px / frame),
    rotation and spin (radians, radians / frame), and whether it bounces off the borders."""

    track_id: int
    phrase: str
    radius: float
    x: float
    y: float
    vx: float
    vy: float
    angle: float
    spin: float
    bounces: bool

    def centre(self, t: int, size: int) -> tuple[float, float]:
        """The centre at frame ``t``: straight lines, reflected at the borders if it bounces."""
        x, y = self.x + self.vx * t, self.y + self.vy * t
        if self.bounces:
            x, y = (
                _reflect(x, self.radius, size - self.radius),
                _reflect(y, self.radius, size - self.radius),
            )
        return x, y


def _reflect(value: float, low: float, high: float) -> float:
    """``value`` folded into ``[low, high]`` as a ball bouncing between two walls."""
    span = high - low
    offset = (value - low) % (2 * span)
    return low + (offset if offset <= span else 2 * span - offset)


@dataclass(frozen=True)
class ShapesVideo:
    """A rendered video: ``frames`` ``(T, H, W, 3)`` uint8 RGB; per frame ``t``: ``ids[t]``
    ``(N_t,)`` track ids (from 1) of the objects present, ``masks[t]`` ``(N_t, H, W)`` bool
    visible pixels, ``boxes[t]`` ``(N_t, 4)`` xyxy float32 pixels (tight, x2/y2 exclusive);
    ``tracks`` the objects' motions (``phrases`` their phrases, by track id - 1)."""

    seed: int
    frames: np.ndarray
    tracks: tuple[Track, ...]
    ids: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...]
    boxes: tuple[np.ndarray, ...]

    @property
    def phrases(self) -> list[str]:
        return [track.phrase for track in self.tracks]

    def crossings(self) -> set[int]:
        """Track ids of the objects that ever touch or overlap another object's full shape."""
        size = self.frames.shape[1]
        crossed: set[int] = set()
        for t in range(len(self.frames)):
            shapes = [(tr.track_id, _full_mask(tr, t, size)) for tr in self.tracks]
            for i, (a, mask_a) in enumerate(shapes):
                for b, mask_b in shapes[i + 1 :]:
                    if (mask_a & mask_b).any():
                        crossed |= {a, b}
        return crossed

    def mot_text(self) -> str:
        """MOT-challenge ground truth: ``frame,id,left,top,width,height,1,1,1`` (frames from 1)."""
        lines = []
        for t, (ids, boxes) in enumerate(zip(self.ids, self.boxes, strict=True)):
            for track_id, (x0, y0, x1, y1) in zip(ids.tolist(), boxes.tolist(), strict=True):
                lines.append(
                    f"{t + 1},{track_id},{x0:.2f},{y0:.2f},{x1 - x0:.2f},{y1 - y0:.2f},1,1,1"
                )
        return "\n".join(lines) + "\n"


def _full_mask(track: Track, t: int, size: int) -> np.ndarray:
    x, y = track.centre(t, size)
    shape = track.phrase.split()[1]
    return render_shape(shape, x, y, track.radius, track.angle + track.spin * t, size)


def _draw_track(rng: np.random.Generator, track_id: int, phrase: str, size: int) -> Track:
    radius = float(rng.uniform(0.08, 0.16) * size)
    speed = float(rng.uniform(1.0, 3.0))
    heading = float(rng.uniform(0, 2 * np.pi))
    bounces = bool(rng.uniform() > 0.25)
    x, y = (float(v) for v in rng.uniform(radius + 1, size - radius - 1, 2))
    if not bounces and rng.uniform() < 0.5:  # a flier starts off-screen half the time
        x = size / 2 - np.cos(heading) * size * 0.7
        y = size / 2 - np.sin(heading) * size * 0.7
    angle, spin = float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(-0.05, 0.05))
    vx, vy = speed * np.cos(heading), speed * np.sin(heading)
    return Track(track_id, phrase, radius, x, y, vx, vy, angle, spin, bounces)


def _crossings_brief(tracks: list[Track], frames: int, size: int) -> bool:
    """No two objects touch in the first frame, and none stays in contact with another for
    more than ``MAX_CROSSING_FRAMES`` frames in a row (contact: circumscribed circles meet)."""
    for i, a in enumerate(tracks):
        for b in tracks[i + 1 :]:
            run = 0
            for t in range(frames):
                (xa, ya), (xb, yb) = a.centre(t, size), b.centre(t, size)
                touching = np.hypot(xa - xb, ya - yb) < a.radius + b.radius
                if touching and t == 0:
                    return False
                run = run + 1 if touching else 0
                if run > MAX_CROSSING_FRAMES:
                    return False
    return True


def make_video(
    seed: int, frames: int = 48, size: int = 128, objects: int = 3, phrases: list[str] | None = None
) -> ShapesVideo:
    """The video of ``seed``: ``frames`` frames of ``size`` px, ``objects`` moving shapes (or the
    given ``phrases``, in drawing order). About one object in four flies through the frame
    instead of bouncing (it may start outside and enter, or leave). Objects do not touch in the
    first frame, and cross each other briefly (``MAX_CROSSING_FRAMES``)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    if frames < 1 or objects < 1 or size < 32:
        raise ValueError(
            f"expected frames >= 1, objects >= 1, size >= 32; got {frames}, {objects}, {size}"
        )
    rng = np.random.default_rng(int(seed))
    grey = _background(rng, size)
    names = (
        list(phrases)
        if phrases
        else [PHRASES[int(i)] for i in rng.integers(len(PHRASES), size=objects)]
    )
    for _ in range(MAX_DRAWS):  # motions whose crossings are brief, as in the field's videos
        tracks = [_draw_track(rng, k + 1, phrase, size) for k, phrase in enumerate(names)]
        if _crossings_brief(tracks, frames, size):
            break
    shades = {tr.track_id: np.array(COLORS[tr.phrase.split()[0]], float) * rng.uniform(0.85, 1.1)
              for tr in tracks}  # fmt: skip
    video, all_ids, all_masks, all_boxes = [], [], [], []
    for t in range(frames):
        image = np.repeat(grey[:, :, None], 3, axis=2) + rng.normal(0, 3, (size, size, 1))
        visible = np.zeros((len(tracks), size, size), bool)
        for i, track in enumerate(tracks):  # later tracks drawn on top
            mask = _full_mask(track, t, size)
            visible[:i] &= ~mask
            visible[i] = mask
            image[mask] = shades[track.track_id] + rng.normal(0, 6, (int(mask.sum()), 3))
        present = [i for i in range(len(tracks)) if visible[i].sum() >= MIN_VISIBLE]
        video.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
        all_ids.append(np.array([tracks[i].track_id for i in present], np.int64))
        all_masks.append(visible[present])
        all_boxes.append(np.array([_tight(visible[i]) for i in present], np.float32).reshape(-1, 4))
    return ShapesVideo(int(seed), np.stack(video), tuple(tracks), tuple(all_ids),
                       tuple(all_masks), tuple(all_boxes))  # fmt: skip


def _tight(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)

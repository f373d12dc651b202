"""Frames of a video, read lazily: a video file (whatever OpenCV reads) or a folder of images.

:func:`open_video` checks the source at once (the file opens and has a first frame; the folder
holds images, all of one size), before any model loads, and reads nothing else until iterated.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..images import load_image

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class VideoSource:
    """A checked source: ``path``; ``fps`` (frames per second; 30 for a folder unless given);
    ``width`` and ``height`` in pixels; ``count`` frames (``None`` when the container does not
    say); ``files`` for a folder (sorted by name)."""

    path: Path
    fps: float
    width: int
    height: int
    count: int | None
    files: tuple[Path, ...] = ()

    def __iter__(self) -> Iterator[np.ndarray]:
        """RGB uint8 ``(H, W, 3)`` frames, one at a time."""
        if self.files:
            for file in self.files:
                frame = load_image(file)
                if frame.shape[:2] != (self.height, self.width):
                    raise ValueError(
                        f"{file}: expected every frame {self.width} x {self.height}, got "
                        f"{frame.shape[1]} x {frame.shape[0]}"
                    )
                yield frame
            return
        capture = cv2.VideoCapture(str(self.path))
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                yield np.ascontiguousarray(bgr[:, :, ::-1])
        finally:
            capture.release()


def open_video(source: str | os.PathLike, fps: float | None = None) -> VideoSource:
    """Check ``source`` (a video file or a folder of frames) and describe it; see module doc.

    Raises ``FileNotFoundError`` (no such path) or ``ValueError`` (unreadable or empty video, a
    folder with no frames or frames of different sizes), saying which."""
    path = Path(os.fspath(source))
    if not path.exists():
        raise FileNotFoundError(f"video: no such file or folder: {str(path)!r}")
    if path.is_dir():
        files = tuple(
            sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")
            )
        )
        if not files:
            raise ValueError(
                f"video: the folder {str(path)!r} holds no frames ({', '.join(FRAME_SUFFIXES)})"
            )
        first = load_image(files[0])
        return VideoSource(
            path, float(fps or 30.0), first.shape[1], first.shape[0], len(files), files
        )
    capture = cv2.VideoCapture(str(path))
    try:
        ok, bgr = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            raise ValueError(
                f"video: cannot read a frame from {str(path)!r} (not a video OpenCV reads, or "
                "empty)"
            )
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        rate = float(capture.get(cv2.CAP_PROP_FPS))
    finally:
        capture.release()
    return VideoSource(path, float(fps or (rate if rate > 0 else 30.0)), bgr.shape[1],
                       bgr.shape[0], count if count > 0 else None)  # fmt: skip

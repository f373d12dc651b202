"""Tracking results to files, frame by frame: an annotated video, JSON lines, MOT-challenge text.

Frames are written as they come into spool files beside each target (memory stays flat); when
the run ends, every target takes its content at once through ``outputs.write_all`` (all files or
none, none replaced without ``overwrite``), and the spools are removed whatever happens. A run
that fails or is interrupted leaves no output behind and no existing file changed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

import cv2
import numpy as np
import supervision as sv

from ..export import rle_encode
from ..outputs import write_all
from ..visualize import annotate

VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v"}


class TrackWriter:
    """Writes the outputs asked for (``video``, ``jsonl``, ``mot``: paths or ``None``) for
    frames of ``width`` x ``height`` at ``fps``. Use as a context manager; ``add(t, frame,
    detections)`` per frame (``frame`` RGB uint8, ``detections`` with ``tracker_id``)."""

    def __init__(
        self,
        *,
        width: int,
        height: int,
        fps: float,
        video: str | os.PathLike | None = None,
        jsonl: str | os.PathLike | None = None,
        mot: str | os.PathLike | None = None,
        overwrite: bool = False,
    ) -> None:
        self.targets = {
            k: Path(v) for k, v in (("video", video), ("jsonl", jsonl), ("mot", mot)) if v
        }
        if "video" in self.targets and self.targets["video"].suffix.lower() not in VIDEO_CODECS:
            raise ValueError(
                f"-o: expected a video file ({', '.join(VIDEO_CODECS)}), got "
                f"{self.targets['video'].name!r}"
            )
        self.size, self.fps, self.overwrite = (width, height), fps, overwrite
        self._spools: dict[str, Path] = {}
        self._text: dict[str, IO[str]] = {}
        self._video: cv2.VideoWriter | None = None

    def __enter__(self) -> TrackWriter:
        for key, target in self.targets.items():
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                        suffix=f".spool{target.suffix}")  # fmt: skip
            os.close(fd)
            self._spools[key] = Path(name)
            if key == "video":
                codec = cv2.VideoWriter_fourcc(*VIDEO_CODECS[target.suffix.lower()])
                self._video = cv2.VideoWriter(name, codec, self.fps, self.size)
                if not self._video.isOpened():
                    raise ValueError(f"-o: OpenCV cannot write {target.suffix} video here")
            else:
                self._text[key] = open(name, "w", encoding="utf-8")  # closed in __exit__
        return self

    def add(self, t: int, frame: np.ndarray, detections: sv.Detections) -> None:
        """Frame ``t`` (from 0) and its tracked detections."""
        ids = detections.tracker_id if detections.tracker_id is not None else np.zeros(0, int)
        if self._video is not None:
            drawn = annotate(frame, detections) if len(detections) else frame
            self._video.write(np.ascontiguousarray(np.asarray(drawn)[:, :, ::-1]))
        if "jsonl" in self._text:
            rows = [
                {
                    "id": int(ids[i]),
                    "class_name": str(detections.data["class_name"][i]),
                    "box_xyxy": [round(float(v), 2) for v in detections.xyxy[i]],
                    "confidence": round(float(detections.confidence[i]), 4),
                    "mask_rle": rle_encode(detections.mask[i])
                    if detections.mask is not None
                    else None,
                }
                for i in range(len(detections))
            ]
            self._text["jsonl"].write(json.dumps({"frame": t, "objects": rows}) + "\n")
        if "mot" in self._text:
            for i in range(len(detections)):
                x0, y0, x1, y1 = (float(v) for v in detections.xyxy[i])
                score = float(detections.confidence[i])
                self._text["mot"].write(
                    f"{t + 1},{int(ids[i])},{x0:.2f},{y0:.2f},{x1 - x0:.2f},{y1 - y0:.2f},"
                    f"{score:.4f},-1,-1,-1\n"
                )

    def __exit__(self, kind, error, trace) -> None:
        try:
            if self._video is not None:
                self._video.release()
            for handle in self._text.values():
                handle.close()
            if kind is None:
                outputs = [(t, _copy_from(self._spools[k])) for k, t in self.targets.items()]
                write_all(outputs, overwrite=self.overwrite)
        finally:
            for spool in self._spools.values():
                spool.unlink(missing_ok=True)


def _copy_from(spool: Path):
    def write(handle: IO[bytes]) -> None:
        with open(spool, "rb") as source:
            shutil.copyfileobj(source, handle)

    return write

"""``track(video, prompt)``: every named object in every frame, masks and a stable id.

The ``bytetrack`` route: the proposer and segmenter run on every ``every``-th frame (keyframes,
``batch_size`` at a time through ``GroundedSAM.predict_batch``: one video's frames share one
size, so batching does not change answers); detections are associated across keyframes by
ByteTrack (Roboflow's ``trackers`` package, which took it over from supervision), one tracker
for all classes with each track's class decided by its detections' votes (a class misread for
a frame does not cut the track); frames between keyframes carry the last keyframe's
tracked objects. Ids are global (from 1) and never reused. The ``sam3`` route hands the prompt to
SAM 3's own video model (``.sam3_route``), streaming with bounded memory. The ``sam2`` route
(Grounded-SAM-2's method, ``.sam2_route``): the proposer and segmenter run on keyframes only,
SAM 2.1's video model carries each object's mask through every frame (streaming, bounded
memory), and keyframe detections are matched to those masks by mask IoU.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import supervision as sv
import torch

from ..boxes import class_aware_nms
from ..checks import check_count, check_limit, check_threshold
from ..prompts import PromptInput, normalize_prompt
from .frames import VideoSource, open_video

logger = logging.getLogger(__name__)

TRACKERS = ("bytetrack", "sam2", "sam3")
TRACK_NMS_IOU = 0.6
"""Detections overlapping a better one by more (box IoU) are dropped before association,
whatever their class: the detector may name one object twice (a blue square also as a blue
triangle), and two tracks on one object swap ids. On the tuning videos 0.5 and 0.7 gave the
same scores (IDF1 0.931, MOTA 0.873)."""
SAM2_VIDEO_MODEL = "facebook/sam2.1-hiera-tiny"
"""The ``sam2`` route's video model when none is named (a hub id; offline, pass an official
``sam2.1_hiera_*.pt`` or a ``Sam2VideoModel`` folder as ``video_model``)."""
TRACK_MIN_IOU = 0.1
"""ByteTrack's minimum box IoU to associate a detection with a track (``trackers``' default)."""


def track(
    video: str | os.PathLike | VideoSource,
    prompt: PromptInput,
    *,
    tracker: str = "bytetrack",
    every: int = 1,
    detector: str | os.PathLike | None = None,
    segmenter: str | os.PathLike | None = None,
    proposer: str = "grounding_dino",
    box_threshold: float = 0.35,
    low_threshold: float = 0.1,
    text_threshold: float = 0.25,
    max_detections: int | None = 100,
    lost_frames: int = 30,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    predictor: Any = None,
    with_frames: bool = False,
    video_model: str | os.PathLike | None = None,
    match_iou: float = 0.5,
) -> Iterator[sv.Detections] | Iterator[tuple[np.ndarray, sv.Detections]]:
    """Track what ``prompt`` names through ``video`` (a file OpenCV reads, a folder of frames,
    or an :func:`open_video` result); one ``supervision.Detections`` per frame, in order.

    Each has ``xyxy`` (N, 4) float32 pixels, ``mask`` (N, H, W) bool at the frame's size,
    ``confidence``, ``class_id``, ``tracker_id`` (N,) ids from 1, stable across frames and never
    reused, and ``data["class_name"]``. As ByteTrack intends, a detection scoring above
    ``box_threshold`` may start a track, and one between ``low_threshold`` and it may only
    continue one (an object partly hidden, or seen at a bad angle, keeps its id). ``every``:
    run the models on every K-th frame; frames between carry the last keyframe's objects.
    ``lost_frames``: keyframes a track may go unseen before it ends. Model options as in
    ``segment()``; ``predictor``: a loaded ``GroundedSAM`` to use instead. ``with_frames``:
    yield ``(frame, detections)`` pairs (RGB uint8 frames), so that drawing needs no second
    decoding of the video. ``tracker="sam2"``: ``video_model`` is SAM 2.1's video model (an
    official ``sam2.1_*.pt``, a ``Sam2VideoModel`` folder or hub id; default
    :data:`SAM2_VIDEO_MODEL`), ``match_iou`` the least mask IoU for a keyframe detection to
    continue an object, ``lost_frames`` counts keyframes there too, and ``low_threshold`` is
    unused (detections above ``box_threshold`` start or confirm objects). Everything is
    checked (the video opened, its first frame read) before any model loads; a prompt found in
    no frame gives empty detections, not an error.
    """
    if tracker not in TRACKERS:
        raise ValueError(f"tracker: expected one of {', '.join(TRACKERS)}, got {tracker!r}")
    if tracker == "sam3":
        return _track_sam3(video, prompt, every=every, detector=detector, segmenter=segmenter,
                           box_threshold=box_threshold, max_detections=max_detections,
                           device=device, predictor=predictor, with_frames=with_frames)  # fmt: skip
    every = check_count("every", every)
    batch_size = check_count("batch_size", batch_size)
    lost_frames = check_count("lost_frames", lost_frames)
    source = video if isinstance(video, VideoSource) else open_video(video)
    normalized = normalize_prompt(prompt)
    box_threshold = check_threshold("box_threshold", box_threshold)
    low_threshold = check_threshold("low_threshold", low_threshold)
    if low_threshold > box_threshold:
        raise ValueError(
            f"low_threshold: expected at most box_threshold ({box_threshold}), got {low_threshold}"
        )
    text_threshold = check_threshold("text_threshold", text_threshold)
    max_detections = check_limit("max_detections", max_detections)
    if tracker == "sam2":
        return _track_sam2(source, predictor, normalized, every, lost_frames, match_iou,
                           (box_threshold, text_threshold, max_detections), video_model,
                           (detector, segmenter, device, dtype, proposer), with_frames)  # fmt: skip
    associate = _Association(box_threshold, lost_frames, source.fps / every)  # needs trackers
    if predictor is None:
        from ..predictor import GroundedSAM

        predictor = GroundedSAM(detector=detector, segmenter=segmenter, device=device,
                                dtype=dtype, proposer=proposer)  # fmt: skip
    return _run(source, predictor, normalized, every, batch_size, associate,
                (low_threshold, text_threshold, max_detections), with_frames)  # fmt: skip


def _track_sam3(video, prompt, *, every, detector, segmenter, box_threshold, max_detections,
                device, predictor, with_frames) -> Iterator[Any]:  # fmt: skip
    """The ``sam3`` route: SAM 3's video model reads the prompt itself (see ``.sam3_route``)."""
    from .sam3_route import Sam3Video, load_sam3_video, run_sam3

    if every != 1:
        raise ValueError(
            f"every: the sam3 route reads every frame (its tracker needs them), got {every}"
        )
    if segmenter is not None:
        raise ValueError("segmenter: the sam3 route makes its own masks; leave segmenter unset")
    if predictor is not None and not isinstance(predictor, Sam3Video):
        raise TypeError(
            "predictor: on the sam3 route, expected a Sam3Video (load_sam3_video), got "
            f"{type(predictor).__name__}"
        )
    source = video if isinstance(video, VideoSource) else open_video(video)
    normalized = normalize_prompt(prompt)
    box_threshold = check_threshold("box_threshold", box_threshold)
    max_detections = check_limit("max_detections", max_detections)
    model = predictor if predictor is not None else load_sam3_video(detector or "sam3", device)
    return run_sam3(source, normalized, model, box_threshold=box_threshold,
                    max_detections=max_detections, with_frames=with_frames)  # fmt: skip


def _track_sam2(source, predictor, prompt, every, lost_frames, match_iou, answers, video_model,
                models, with_frames) -> Iterator[Any]:  # fmt: skip
    """The ``sam2`` route (see ``.sam2_route``): keyframe detections, SAM 2.1 propagation."""
    from ..official.sam2_video import load_sam2_video
    from .sam2_route import run_sam2

    match_iou = check_threshold("match_iou", match_iou)
    detector, segmenter, device, dtype, proposer = models
    if predictor is None:
        from ..predictor import GroundedSAM

        predictor = GroundedSAM(detector=detector, segmenter=segmenter, device=device,
                                dtype=dtype, proposer=proposer)  # fmt: skip
    model, settings = load_sam2_video(video_model or SAM2_VIDEO_MODEL, device)
    box_threshold, text_threshold, max_detections = answers
    return run_sam2(source, predictor, prompt, every, model, settings=settings,
                    match_iou=match_iou, lost_keyframes=lost_frames, box_threshold=box_threshold,
                    text_threshold=text_threshold, max_detections=max_detections,
                    with_frames=with_frames)  # fmt: skip


def _run(
    source, predictor, prompt, every, batch_size, associate, answers, with_frames
) -> Iterator[Any]:
    frames = iter(source)
    while True:  # chunks of every x batch_size frames: each starts with a keyframe
        chunk = list(itertools.islice(frames, every * batch_size))
        if not chunk:
            return
        keys = chunk[::every]
        found = predictor.predict_batch(keys, prompt, *answers, max_pixels=None)
        for t in range(len(chunk)):
            if t % every == 0:
                carried = associate(found[t // every])
            yield (chunk[t], _copy(carried)) if with_frames else _copy(carried)


class _Association:
    """One ByteTrack over all classes (a detector that names an object's class wrongly for a
    frame must not cut its track), each track's class its detections' most frequent class so
    far; ByteTrack's ids -> global ids from 1, never reused."""

    def __init__(self, threshold: float, lost_frames: int, rate: float) -> None:
        try:
            from trackers import ByteTrackTracker
        except ImportError:
            raise ImportError(
                'tracking needs Roboflow\'s trackers package: pip install "grounded-seg[video]"'
            ) from None

        self.tracker = ByteTrackTracker(
            lost_track_buffer=lost_frames, frame_rate=rate, track_activation_threshold=threshold,
            high_conf_det_threshold=threshold, minimum_consecutive_frames=1,
            minimum_iou_threshold=TRACK_MIN_IOU,
        )  # fmt: skip
        self.ids: dict[int, int] = {}
        self.votes: dict[int, dict[int, float]] = {}  # global id -> class id -> summed score
        self.names: dict[int, str] = {}

    def __call__(self, detections: sv.Detections) -> sv.Detections:
        height, width = detections.mask.shape[1:]
        for c, name in zip(
            detections.class_id.tolist(), detections.data["class_name"], strict=True
        ):
            self.names[c] = str(name)
        if len(detections) > 1:  # one object, one track: duplicates under another class go
            keep = class_aware_nms(
                torch.from_numpy(detections.xyxy.astype(np.float32)),
                torch.from_numpy(detections.confidence.astype(np.float32)),
                torch.zeros(len(detections), dtype=torch.long),
                TRACK_NMS_IOU,
            ).numpy()
            detections = detections[np.sort(keep)]
        tracked = self.tracker.update(detections)
        tracked = tracked[tracked.tracker_id >= 0]  # a track is confirmed from its 2nd frame
        if not len(tracked):
            return _empty(height, width)
        ids = np.array([self.ids.setdefault(int(i), len(self.ids) + 1) for i in tracked.tracker_id])
        classes = []
        for track_id, c, score in zip(ids, tracked.class_id, tracked.confidence, strict=True):
            votes = self.votes.setdefault(int(track_id), {})
            votes[int(c)] = votes.get(int(c), 0.0) + float(score)
            classes.append(max(votes, key=votes.get))
        tracked.tracker_id = ids.astype(np.int64)
        tracked.class_id = np.array(classes, dtype=np.int64)
        tracked.data["class_name"] = np.array([self.names[c] for c in classes], dtype=str)
        return tracked[np.argsort(-tracked.confidence, kind="stable")]


def _empty(height: int, width: int) -> sv.Detections:
    empty = sv.Detections.empty()
    empty.mask = np.zeros((0, height, width), bool)
    empty.tracker_id = np.zeros(0, np.int64)
    empty.data["class_name"] = np.zeros(0, str)
    return empty


def _copy(detections: sv.Detections) -> sv.Detections:
    return detections[np.arange(len(detections))]

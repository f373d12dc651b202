"""The ``sam3`` tracking route: SAM 3's own video model reads the prompt and tracks what it finds.

``transformers.Sam3VideoModel`` (the hub's ``facebook/sam3`` folder, ``model_type``
``sam3_video``) holds SAM 3's detector and its SAM 2-style memory tracker. Each class of the
prompt is one text prompt of one streaming session (SAM 3 runs the detector once per text on a
frame's shared vision features, and keeps each text's objects apart: a detection is matched only
to tracks of its own text), so a class id is the index of the text that found the object.
Frames are read one at a time, preprocessed as the SAM 3 proposer does
(:class:`~grounded_seg.proposers.sam3.Sam3ImageSettings`, no torchvision) and fed to the session
as they come; each gives its detections at once (streaming: SAM 3's hot-start removal, which
needs future frames, is off, as transformers does for streamed frames).

Output, per frame, in the ``bytetrack`` route's format: mask logits upsampled bilinearly to the
frame and kept above 0 (transformers' ``Sam3VideoProcessor.postprocess_outputs``); within a class,
a pixel claimed by several objects goes to the one with the highest tracker score; empty masks,
and objects SAM 3 suppresses on the frame, are left out; boxes are the masks' tight boxes. The
confidence is SAM 3's score of the object (detection x presence, when it was first found).

Memory stays flat whatever the video's length: after each frame the session keeps only what the
tracker reads next (the last ``max(num_maskmem, max_object_pointers_in_encoder)`` frames' outputs
per object, the ``max_cond_frame_num`` most recent conditioning frames, the current frame's
pixels and features). transformers' session keeps every frame's outputs (several MB per object
and frame at SAM 3's size) and gives each frame the object pointers of *all* past conditioning
frames; the bounded session gives it those of the kept conditioning frames only, as SAM 2's
reference code selects them. Objects SAM 3 starts stay in its session (streaming never removes
one): their number is bounded by the model's ``max_num_objects``. Accuracy is SAM 3's own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import supervision as sv
import torch

from .._loading import LOAD_LOCK, load_pretrained
from ..checks import check_limit, check_threshold
from ..errors import WeightsNotFoundError
from ..prompts import Prompt
from ..proposers.sam3 import (
    Sam3ImageSettings,
    Sam3Proposer,
    _access_hint,
    _check_tokenizer,
    _check_tokenizer_files,
)
from ..segmenters.sam_auto import mask_boxes
from .frames import VideoSource

logger = logging.getLogger(__name__)

MODEL_TYPE = "sam3_video"
DEFAULT_COND_FRAMES = 4
"""Conditioning frames kept per object when the tracker's ``max_cond_frame_num`` is -1 (all)."""


@dataclass(frozen=True)
class Sam3Video:
    """A loaded SAM 3 video model: ``model`` (``Sam3VideoModel``); ``reader`` (a
    :class:`Sam3Proposer` over its detector: the tokenizer and the image preprocessing);
    ``history`` past frames of tracker outputs kept per object; ``cond_frames`` conditioning
    frames kept per object; ``counts`` entries kept in the session's per-object frame lists
    (only their length is read, against the hot-start thresholds)."""

    model: Any
    reader: Sam3Proposer
    history: int
    cond_frames: int
    counts: int
    label: str = "sam3"

    @classmethod
    def wrap(cls, model: Any, tokenizer: Any, settings: Sam3ImageSettings, label: str) -> Sam3Video:
        """Wrap a ``Sam3VideoModel``; the kept history is read from its tracker's config."""
        config = model.config
        tracker = config.tracker_config
        history = max(int(tracker.num_maskmem), int(tracker.max_object_pointers_in_encoder), 1)
        cond = int(tracker.max_cond_frame_num)
        counts = max(int(config.hotstart_unmatch_thresh), int(config.hotstart_dup_thresh), 1)
        reader = Sam3Proposer(model.detector_model, tokenizer, settings, nms_threshold=None)
        return cls(model, reader, history, cond if cond > 0 else DEFAULT_COND_FRAMES, counts, label)

    @property
    def device(self) -> torch.device:
        return self.reader.device


def load_sam3_video(
    name_or_path: str | os.PathLike = "sam3", device: str | torch.device | None = None
) -> Sam3Video:
    """Load the registry name ``sam3``, a hub id or a local ``sam3_video`` folder (strict weights:
    detector and tracker), with SAM 3's tokenizer and preprocessing settings, on ``device``.

    ``WeightsNotFoundError`` (absent offline, or the hub refuses: gated) says how to request
    access and where to put the files; ``InvalidWeightsError`` for a folder of another model type
    (an image-only ``sam3`` folder has no tracker), without the tokenizer or the preprocessor
    settings, or with weights that do not fit.
    """
    from ..registry import resolve_model

    with LOAD_LOCK:
        source = resolve_model(name_or_path, "detector")
        if source.local_dir is not None:
            _check_tokenizer_files(source.local_dir, source.label)
        try:
            model, parts = load_pretrained(
                name_or_path,
                "detector",
                MODEL_TYPE,
                "Sam3VideoModel",
                {"tokenizer": "AutoTokenizer", "image_settings": Sam3ImageSettings},
                device,
            )
        except WeightsNotFoundError as err:
            raise WeightsNotFoundError(f"{err}. {_access_hint(source.hub_id)}") from err
    _check_tokenizer(parts["tokenizer"], model.detector_model, source.label)
    return Sam3Video.wrap(model, parts["tokenizer"], parts["image_settings"], source.label)


class GlobalIds:
    """SAM 3 object ids -> global track ids from 1, never reused.

    An object is ``(sam3_id, class_id)``; its global id lasts while SAM 3 holds it (it is in the
    frame's output, hidden or not). Once SAM 3 drops it, the id is retired: SAM 3 reusing the
    number, or renumbering its objects, gives new global ids.
    """

    def __init__(self) -> None:
        self.live: dict[tuple[int, int], int] = {}
        self.last = 0

    def update(self, held: Iterable[tuple[int, int]]) -> None:
        """The objects SAM 3 holds after a frame: retire the others, number the new ones."""
        held = list(dict.fromkeys(held))
        kept = set(held)
        self.live = {key: value for key, value in self.live.items() if key in kept}
        for key in held:
            if key not in self.live:
                self.last += 1
                self.live[key] = self.last

    def __getitem__(self, key: tuple[int, int]) -> int:
        return self.live[key]


class Sam3Stream:
    """One streaming SAM 3 session over frames of one size (``height`` x ``width`` pixels).

    ``step(frame)`` feeds the next RGB uint8 ``(H, W, 3)`` frame and returns its
    ``sv.Detections`` (see the module doc). ``bounded=False`` keeps every frame's state, as
    transformers does (memory grows with the video; for checks). Not thread-safe: one stream per
    thread (the model may be shared).
    """

    def __init__(
        self, video: Sam3Video, prompt: Prompt, height: int, width: int, bounded: bool = True
    ) -> None:
        from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

        self.video, self.classes, self.bounded = video, prompt.classes, bounded
        self.height, self.width = height, width
        ids, mask = video.reader.text_inputs(list(prompt.classes))  # refuses a text over 32
        device = video.device
        self.session = Sam3VideoInferenceSession(
            video_height=height, video_width=width, inference_device=device,
            inference_state_device=device, video_storage_device=device, dtype=torch.float32,
        )  # fmt: skip
        for class_id, text in enumerate(prompt.classes):
            prompt_id = self.session.add_prompt(text)
            if prompt_id != class_id:  # normalised classes are distinct: never happens
                raise RuntimeError(f"SAM 3 gave class {text!r} prompt id {prompt_id}")
            self.session.prompt_input_ids[prompt_id] = ids[class_id : class_id + 1]
            self.session.prompt_attention_masks[prompt_id] = mask[class_id : class_id + 1]
        if bounded:
            self.session.processed_frames = _FrameWindow()
        self.ids = GlobalIds()
        self.frame_idx = -1

    @torch.inference_mode()
    def step(self, frame: np.ndarray) -> sv.Detections:
        """The next frame's detections: every object SAM 3 shows on it, best first."""
        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"frame: expected {self.width} x {self.height} pixels, got "
                f"{frame.shape[1] if frame.ndim > 1 else '?'} x {frame.shape[0]}"
            )
        self.frame_idx += 1
        pixels = self.video.reader.image_settings.pixels(frame).to(self.video.device)
        out = self.video.model(
            inference_session=self.session, frame=pixels, frame_idx=self.frame_idx
        )
        found = self._detections(out)
        if self.bounded:
            video = self.video
            trim_session(
                self.session, self.frame_idx, video.history, video.cond_frames, video.counts
            )
        return found

    def _detections(self, out: Any) -> sv.Detections:
        session = self.session
        removed = set(out.removed_obj_ids or ())
        held = [i for i in out.obj_id_to_mask if i not in removed]
        self.ids.update((int(i), int(session.obj_id_to_prompt_id[i])) for i in held)
        hidden = set(out.suppressed_obj_ids or ()) | set(session.hotstart_removed_obj_ids)
        shown = [i for i in held if i not in hidden]
        if not shown:
            return empty_detections(self.height, self.width)
        logits = torch.cat([out.obj_id_to_mask[i] for i in shown]).float()  # (N, h, w)
        masks = upsample_logits(logits, self.height, self.width)
        tracker = torch.tensor([float(out.obj_id_to_tracker_score.get(i, 0.0)) for i in shown])
        classes = torch.tensor([int(session.obj_id_to_prompt_id[i]) for i in shown])
        masks = one_owner_per_pixel(masks, tracker, classes)
        scores = np.array([float(out.obj_id_to_score[i]) for i in shown], np.float32)
        keep = masks.flatten(1).any(1).numpy()
        if not keep.any():
            return empty_detections(self.height, self.width)
        idx = np.flatnonzero(keep)
        masks = masks[torch.from_numpy(idx)]
        class_ids = classes.numpy()[idx].astype(np.int64)
        track_ids = np.array([self.ids[(int(shown[k]), int(class_ids[j]))] for j, k in
                              enumerate(idx)], np.int64)  # fmt: skip
        found = sv.Detections(
            xyxy=mask_boxes(masks).numpy().astype(np.float32),
            mask=masks.numpy(),
            confidence=scores[idx],
            class_id=class_ids,
            tracker_id=track_ids,
            data={"class_name": np.array([self.classes[c] for c in class_ids], dtype=str)},
        )
        return found[np.argsort(-found.confidence, kind="stable")]

    def stored_frames(self) -> dict[str, int]:
        """How many frames' state the session holds now: ``outputs`` (tracker outputs, summed
        over objects), ``cond`` (conditioning frames, summed over objects), ``pixels``,
        ``features`` and ``per_frame`` (the largest per-frame bookkeeping dict)."""
        session = self.session
        per_obj = session.output_dict_per_obj.values()
        return {
            "outputs": sum(len(o["non_cond_frame_outputs"]) for o in per_obj),
            "cond": sum(len(o["cond_frame_outputs"]) for o in per_obj),
            "pixels": len(dict.keys(session.processed_frames or {})),
            "features": len(session.cache._vision_features),
            "per_frame": max(
                len(session.obj_id_to_tracker_score_frame_wise),
                len(session.suppressed_obj_ids),
                *(len(v) for v in session.frames_tracked_per_obj.values()),
                *(len(v) for v in session.mask_inputs_per_obj.values()),
                0,
            ),
        }


class _FrameWindow(dict):
    """The session's preprocessed frames, trimmed to the current one, whose ``len`` is still
    the number of frames seen: the tracker reads it as the video's length (it bounds how far
    back object pointers are looked up)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def __setitem__(self, frame_idx: int, pixels: torch.Tensor) -> None:
        super().__setitem__(frame_idx, pixels)
        self.seen = max(self.seen, frame_idx + 1)

    def __len__(self) -> int:
        return self.seen


def trim_session(session: Any, frame_idx: int, history: int, cond_frames: int, counts: int) -> None:
    """Drop from a ``Sam3VideoInferenceSession`` what the tracker no longer reads after frame
    ``frame_idx``: outputs of frames before the last ``history``, all but the ``cond_frames``
    most recent conditioning frames (unless inside the last ``history`` frames), past pixels,
    inputs and per-frame bookkeeping; per-object frame lists cut to their last ``counts``. The
    next frame's memories and pointers are what the untrimmed session gives (pointers: while the
    conditioning frames fit in ``cond_frames``)."""
    oldest = frame_idx + 2 - history  # the next frame looks back history - 1 frames
    for outputs in session.output_dict_per_obj.values():
        plain = outputs["non_cond_frame_outputs"]
        for t in [t for t in plain if t < oldest]:
            del plain[t]
        cond = outputs["cond_frame_outputs"]
        recent = set(sorted(cond)[-cond_frames:])
        for t in [t for t in cond if t not in recent and t < oldest]:
            del cond[t]
    for per_obj in (
        session.frames_tracked_per_obj,
        session.mask_inputs_per_obj,
        session.point_inputs_per_obj,
    ):
        for frames in per_obj.values():
            for t in [t for t in frames if t < frame_idx]:
                del frames[t]
    for per_frame in (
        session.processed_frames or {},
        session.obj_id_to_tracker_score_frame_wise,
        session.suppressed_obj_ids,
    ):
        for t in [t for t in per_frame if t < frame_idx]:
            del per_frame[t]
    for lists in (session.unmatched_frame_inds, session.overlap_pair_to_frame_inds):
        for key, frames in lists.items():
            if len(frames) > counts:
                lists[key] = frames[-counts:]


def run_sam3(
    source: VideoSource,
    prompt: Prompt,
    video_model: Sam3Video,
    *,
    box_threshold: float = 0.5,
    max_detections: int | None = 100,
    with_frames: bool = False,
) -> Iterator[sv.Detections] | Iterator[tuple[np.ndarray, sv.Detections]]:
    """Track each class of ``prompt`` through ``source`` with SAM 3; one ``sv.Detections`` per
    frame, in order, as frames are read (or ``(frame, detections)`` with ``with_frames``).

    Each has ``xyxy`` (N, 4) float32 pixels (x2, y2 exclusive), ``mask`` (N, H, W) bool at the
    frame's size, ``confidence`` (SAM 3's score of the object), ``class_id`` (index into
    ``prompt.classes``), ``tracker_id`` (global ids from 1, stable while SAM 3 keeps the object,
    never reused) and ``data["class_name"]``; best first, at most ``max_detections``. Objects
    scoring ``box_threshold`` or less are not shown (SAM 3 starts an object only above its own
    ``new_det_thresh``, 0.7 on the hub). A prompt found in no frame gives empty detections.
    Arguments are checked here, before the first frame is read.
    """
    if not isinstance(source, VideoSource):
        raise TypeError(f"source: expected a VideoSource (open_video), got {type(source).__name__}")
    if not isinstance(prompt, Prompt):
        raise TypeError(
            f"prompt: expected a Prompt (normalize_prompt), got {type(prompt).__name__}"
        )
    if not isinstance(video_model, Sam3Video):
        raise TypeError(
            f"video_model: expected a Sam3Video (load_sam3_video), got {type(video_model).__name__}"
        )
    if not isinstance(with_frames, bool):
        raise TypeError(f"with_frames: expected True or False, got {with_frames!r}")
    box_threshold = check_threshold("box_threshold", box_threshold)
    max_detections = check_limit("max_detections", max_detections)
    stream = Sam3Stream(video_model, prompt, source.height, source.width)
    return _frames(source, stream, box_threshold, max_detections, with_frames)


def _frames(source, stream, box_threshold, max_detections, with_frames) -> Iterator[Any]:
    for frame in source:
        found = stream.step(frame)
        found = found[found.confidence > box_threshold][:max_detections]
        yield (frame, found) if with_frames else found


def upsample_logits(logits: torch.Tensor, height: int, width: int, chunk: int = 16) -> torch.Tensor:
    """Mask logits ``(N, h, w)`` -> bool masks ``(N, height, width)``: bilinear upsampling of the
    logits (``align_corners=False``), kept above 0, ``chunk`` masks at a time."""
    masks = torch.zeros((len(logits), height, width), dtype=torch.bool)
    for start in range(0, len(logits), chunk):
        part = torch.nn.functional.interpolate(
            logits[start : start + chunk, None].float(), size=(height, width), mode="bilinear",
            align_corners=False,
        )  # fmt: skip
        masks[start : start + chunk] = (part[:, 0] > 0).cpu()
    return masks


def one_owner_per_pixel(
    masks: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """Bool masks ``(N, H, W)`` where, within each class, a pixel claimed by several masks stays
    only in the one of highest ``scores`` (the first on ties)."""
    masks = masks.clone()
    for c in classes.unique().tolist():
        rows = torch.nonzero(classes == c).flatten()
        if len(rows) < 2:
            continue
        claim = torch.where(masks[rows], scores[rows, None, None], float("-inf"))
        owner = claim.argmax(dim=0)
        for k, row in enumerate(rows.tolist()):
            masks[row] &= owner == k
    return masks


def empty_detections(height: int, width: int) -> sv.Detections:
    """No objects, in the route's format: masks ``(0, height, width)``, tracker ids and names."""
    empty = sv.Detections.empty()
    empty.mask = np.zeros((0, height, width), bool)
    empty.tracker_id = np.zeros(0, np.int64)
    empty.data["class_name"] = np.zeros(0, str)
    return empty

"""The ``sam2`` tracking route (Grounded-SAM-2's method): detect on keyframes, propagate between.

Every ``every``-th frame is a keyframe: the ``GroundedSAM`` predictor finds what the prompt
names, with masks. Between keyframes (and on them) ``Sam2VideoModel`` carries each tracked
object's mask forward from frame to frame, in one streaming inference session: each frame is
read, embedded once and dropped. On a keyframe, detections naming one object twice (mask IoU
above ``DEDUP_IOU``, any class) keep only the best; they are matched to the objects' masks
on that frame by mask IoU, greedily (the best pair first, then the best among the rest, while
the IoU reaches ``match_iou``); a detection matched to no object starts a new track with a new
id (from 1, never reused), prompted into the session by its mask (``prompt_with="mask"``, as
Grounded-SAM-2's default) or its box. A matched object keeps its SAM 2 memory: the detector
confirms it (its class votes and confidence), it does not re-prompt it. An object no detection
matches on ``lost_keyframes`` keyframes in a row ends and leaves the session; its id is never
given again.

Each frame gives one ``supervision.Detections``, as the ``bytetrack`` route: ``xyxy`` (N, 4)
float32 pixels, the tight box of the mask (x2, y2 exclusive); ``mask`` (N, H, W) bool at the
frame's size; ``confidence`` the score of the object's last matched detection; ``class_id`` the
class its detections voted for most (summed scores); ``tracker_id``; ``data["class_name"]``.
An object SAM 2 finds absent on a frame (an empty mask) is left out of that frame.

Memory is flat whatever the video's length: the session keeps no frame after it is processed
(only the image encoder's cache of the current one), each object's initial (conditioning)
output, the memories of its last ``num_maskmem - 1`` frames and the object pointers of its last
``max_object_pointers_in_encoder - 1`` frames, which is all ``Sam2VideoModel`` reads.

Frames enter the model as the official ``SAM2VideoPredictor`` loads a JPEG folder
(``sam2/utils/misc.py``): PIL's ``resize((S, S))`` (bicubic, aspect not kept) of the RGB
frame, ``/ 255`` in float64, then float32 ImageNet normalisation. Box prompts are scaled as the
official predictor scales them (x / W * S, y / H * S); output masks are the low-resolution
logits upsampled bilinearly to the frame's size, ``> 0``. The official predictor's hole filling
(``fill_hole_area=8``) needs its CUDA extension; without it (as in the parity oracle) it is
skipped, and grounded_seg does not fill holes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import supervision as sv
import torch
from PIL import Image
from torch.nn import functional

from ..checks import check_count, check_limit, check_threshold
from ..official.sam2_video import Sam2VideoSettings
from ..prompts import PromptInput, normalize_prompt
from ..segmenters.sam2 import scale_boxes
from .frames import VideoSource

logger = logging.getLogger(__name__)

MATCH_IOU = 0.5
"""Least mask IoU for a detection to continue a tracked object (Grounded-SAM-2's continuous-id
demo uses 0.8; a propagated mask drifts from the detector's between keyframes, and a lower bar
keeps a drifted object from starting a second track)."""
LOST_KEYFRAMES = 30
"""Keyframes in a row without a matching detection before an object's track ends (as
``track()``'s ``lost_frames``)."""
DEDUP_IOU = 0.8  # detections whose mask overlaps a better one's by more are dropped, any class
UNKNOWN_FRAMES = 1 << 30  # a video of unknown length: as SAM 2 streaming (16 object pointers)


def frame_pixels(frame: np.ndarray, settings: Sam2VideoSettings) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` -> float32 ``(3, S, S)``, as the official ``load_video_frames``
    computes it from a JPEG folder (PIL bicubic resize, ``/ 255.0``, mean/std)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3:
        raise TypeError(f"frame: expected an RGB uint8 (H, W, 3) array, got {type(frame)}")
    size = settings.size
    resized = np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BICUBIC))
    pixels = torch.from_numpy(resized / 255.0).permute(2, 0, 1).float()
    mean = torch.tensor(settings.image_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(settings.image_std, dtype=torch.float32)[:, None, None]
    return (pixels - mean) / std


@functools.cache
def _session_class() -> type:
    from transformers import Sam2VideoInferenceSession

    class StreamingSession(Sam2VideoInferenceSession):
        """A session that drops processed frames yet reports the video's length, so that the
        model sizes the object pointers' temporal encoding as the official predictor does
        (``min(num_frames, 16)``)."""

        frames_hint: int = UNKNOWN_FRAMES

        @property
        def num_frames(self) -> int:
            return self.frames_hint

    return StreamingSession


class Sam2VideoPropagator:
    """The objects' masks carried from frame to frame by ``Sam2VideoModel``, memory bounded.

    Call :meth:`step` for every frame in order; after it, :meth:`add` starts new objects on that
    frame and :meth:`remove` ends some. Masks are bool ``(N, H, W)`` at the frame's size.
    ``frames``: the video's length when known (``None``: streaming, length unknown).
    """

    def __init__(
        self,
        model: Any,
        settings: Sam2VideoSettings | None = None,
        frames: int | None = None,
    ) -> None:
        size = int(model.config.image_size)
        settings = settings or Sam2VideoSettings(size=size)
        if settings.size != size:
            raise ValueError(f"settings.size: expected the model's {size}, got {settings.size}")
        self.model, self.settings = model, settings
        self.frames = frames or UNKNOWN_FRAMES
        self.session = self._new_session()
        self.t = -1
        self.original_size = (0, 0)
        # the low-resolution mask logits (N, 1, S/4, S/4) of the last step or add, float32
        self.last_logits = torch.zeros(0, 1, size // 4, size // 4)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _new_session(self) -> Any:
        device = self.device
        session = _session_class()(inference_device=device, inference_state_device=device,
                                   video_storage_device=device, dtype=torch.float32)  # fmt: skip
        session.frames_hint = self.frames
        return session

    def step(self, t: int, frame: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Move to frame ``t`` (one after the last): the tracked ids and their masks there."""
        if t != self.t + 1:
            raise ValueError(f"frames must come in order: expected frame {self.t + 1}, got {t}")
        self.t, self.original_size = t, (int(frame.shape[0]), int(frame.shape[1]))
        self.session.frames_hint = max(self.frames, t + 1)
        self._trim()
        self.session.add_new_frame(frame_pixels(frame, self.settings)[None], t)
        if not self.session.obj_ids:
            self.last_logits = self.last_logits[:0]
            return [], np.zeros((0, *self.original_size), bool)
        out = self.model(self.session, frame_idx=t)
        return list(out.object_ids), self._upscale(out.pred_masks)

    def add(
        self,
        ids: Sequence[int],
        boxes_xyxy: np.ndarray,
        masks: np.ndarray | None = None,
    ) -> np.ndarray:
        """Start objects ``ids`` on the current frame, prompted by their ``(N, 4)`` xyxy pixel
        boxes, or by their bool ``(N, H, W)`` masks when given; returns their masks there.

        They run in a session of their own on this frame (sharing the frame's image features),
        then join the main one: a new object's first memory is encoded as the official
        predictor encodes a prompted frame (binarised), whatever the tracked objects do."""
        if not len(ids):
            return np.zeros((0, *self.original_size), bool)
        birth = self._new_session()
        birth.cache = self.session.cache  # this frame's image features, computed once
        birth.add_new_frame(self.session.get_frame(self.t)[None], self.t)
        for i, obj_id in enumerate(ids):
            idx = birth.obj_id_to_idx(int(obj_id))
            if masks is not None:
                mask = torch.from_numpy(np.asarray(masks[i], bool)).float()[None, None]
                side = self.settings.size
                if mask.shape[-2:] != (side, side):  # as Sam2VideoProcessor: antialiased, >= 0.5
                    mask = functional.interpolate(mask, (side, side), mode="bilinear",
                                                  align_corners=False, antialias=True)  # fmt: skip
                    mask = (mask >= 0.5).float()
                birth.add_mask_inputs(idx, self.t, mask)
            else:
                box = scale_boxes(boxes_xyxy[i : i + 1], self.original_size, self.settings.size)
                points = {"point_coords": box.reshape(1, 1, 2, 2),
                          "point_labels": torch.tensor([[[2, 3]]], dtype=torch.int32)}  # fmt: skip
                birth.add_point_inputs(idx, self.t, points)
        birth.obj_with_new_inputs = [int(i) for i in ids]
        out = self.model(birth, frame_idx=self.t)
        self._adopt(birth, [int(i) for i in ids])
        return self._upscale(out.pred_masks)

    def remove(self, ids: Sequence[int]) -> None:
        """End objects ``ids``: they leave the session and cost nothing more."""
        gone = {int(i) for i in ids}
        if not gone:
            return
        old, self.session = self.session, self._new_session()
        self.session.cache, self.session.processed_frames = old.cache, old.processed_frames
        self.session.video_height, self.session.video_width = old.video_height, old.video_width
        self._adopt(old, [i for i in old.obj_ids if i not in gone])

    def _adopt(self, source: Any, ids: list[int]) -> None:
        """Move objects ``ids`` with their inputs and outputs from ``source`` into the session."""
        for obj_id in ids:
            src, dst = source.obj_id_to_idx(obj_id), self.session.obj_id_to_idx(obj_id)
            for name in ("point_inputs_per_obj", "mask_inputs_per_obj", "output_dict_per_obj",
                         "frames_tracked_per_obj"):  # fmt: skip
                getattr(self.session, name)[dst] = getattr(source, name)[src]

    def _trim(self) -> None:
        """Keep what frame ``self.t`` can read: no past frame; for each object its conditioning
        outputs, the memories of the last ``num_maskmem - 1`` frames and the object pointers of
        the last ``max_object_pointers_in_encoder - 1``; no mask logits (already returned)."""
        if self.session.processed_frames:
            self.session.processed_frames.clear()
        config = self.model.config
        oldest_pointer = self.t - (config.max_object_pointers_in_encoder - 1)
        oldest_memory = self.t - (config.num_maskmem - 1)
        for idx, outputs in self.session.output_dict_per_obj.items():
            past = outputs["non_cond_frame_outputs"]
            for f in [f for f in past if f < oldest_pointer]:
                del past[f]
            for f, out in past.items():
                if f < oldest_memory:
                    out.pop("maskmem_features", None)
                    out.pop("maskmem_pos_enc", None)
            for out in (*past.values(), *outputs["cond_frame_outputs"].values()):
                out.pop("pred_masks", None)
                out.pop("high_res_masks", None)
            tracked = self.session.frames_tracked_per_obj[idx]
            for f in [f for f in tracked if f < self.t - 1]:
                del tracked[f]

    def _upscale(self, low_res: torch.Tensor) -> np.ndarray:
        """``(N, 1, s, s)`` logits -> bool ``(N, H, W)``: bilinear to the frame's size, ``> 0``."""
        self.last_logits = low_res.float().cpu()
        up = functional.interpolate(low_res.float(), self.original_size, mode="bilinear",
                                    align_corners=False)  # fmt: skip
        return (up[:, 0] > 0).cpu().numpy()


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of bool masks ``a`` (N, H, W) and ``b`` (M, H, W): ``(N, M)`` float64 (0 where both
    are empty)."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"masks: expected one size, got {a.shape[1:]} and {b.shape[1:]}")
    flat_a = a.reshape(len(a), int(np.prod(a.shape[1:]))).astype(np.float32)
    flat_b = b.reshape(len(b), int(np.prod(b.shape[1:]))).astype(np.float32)
    inter = flat_a @ flat_b.T
    union = flat_a.sum(1)[:, None] + flat_b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float64)


def match_greedy(iou: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """Pairs ``(row, column)`` of ``iou`` (N, M): the highest IoU first, then the highest among
    rows and columns still free, while it is at least ``min_iou``; ties by row, then column."""
    pairs = [(float(iou[r, c]), r, c) for r in range(iou.shape[0]) for c in range(iou.shape[1])]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    rows: set[int] = set()
    cols: set[int] = set()
    out = []
    for value, r, c in pairs:
        if value < min_iou or value <= 0:
            break
        if r not in rows and c not in cols:
            rows.add(r)
            cols.add(c)
            out.append((r, c))
    return out


def _tight_boxes(masks: np.ndarray) -> np.ndarray:
    """``(N, 4)`` float32 xyxy of non-empty bool masks, x2 and y2 exclusive."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        boxes[i] = [xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]
    return boxes


class _Tracks:
    """Ids, class votes, confidences and missed keyframes of the tracked objects."""

    def __init__(self, match_iou: float, lost_keyframes: int) -> None:
        self.match_iou, self.lost_keyframes = match_iou, lost_keyframes
        self.next_id = 1
        self.votes: dict[int, dict[int, float]] = {}
        self.confidence: dict[int, float] = {}
        self.missed: dict[int, int] = {}
        self.names: dict[int, str] = {}

    def keyframe(
        self, found: sv.Detections, ids: list[int], masks: np.ndarray
    ) -> tuple[list[int], list[int], np.ndarray]:
        """Match ``found`` to the tracked ``ids`` (``masks`` on this frame); returns the ids
        that end, the new ids and the indices in ``found`` that start them."""
        for c, name in zip(found.class_id.tolist(), found.data["class_name"], strict=True):
            self.names[int(c)] = str(name)
        pairs = match_greedy(mask_iou(found.mask, masks), self.match_iou) if len(ids) else []
        matched = {c for _, c in pairs}
        for r, c in pairs:
            self._vote(ids[c], found, r)
        ended = []
        for c, obj_id in enumerate(ids):
            if c not in matched:
                self.missed[obj_id] += 1
                if self.missed[obj_id] >= self.lost_keyframes:
                    ended.append(obj_id)
        for obj_id in ended:
            for table in (self.votes, self.confidence, self.missed):
                del table[obj_id]
        starts = np.array(sorted(set(range(len(found))) - {r for r, _ in pairs}), np.int64)
        new_ids = list(range(self.next_id, self.next_id + len(starts)))
        self.next_id += len(starts)
        for obj_id, r in zip(new_ids, starts.tolist(), strict=True):
            self._vote(obj_id, found, r)
        if ended:
            logger.debug("tracks %s ended: unseen %d keyframes", ended, self.lost_keyframes)
        return ended, new_ids, starts

    def _vote(self, obj_id: int, found: sv.Detections, r: int) -> None:
        votes = self.votes.setdefault(obj_id, {})
        c, score = int(found.class_id[r]), float(found.confidence[r])
        votes[c] = votes.get(c, 0.0) + score
        self.confidence[obj_id], self.missed[obj_id] = score, 0

    def detections(self, ids: list[int], masks: np.ndarray) -> sv.Detections:
        """The frame's result: the objects with a non-empty mask, by id."""
        order = sorted((obj_id, i) for i, obj_id in enumerate(ids) if masks[i].any())
        keep = [i for _, i in order]
        kept = [obj_id for obj_id, _ in order]
        classes = [max(self.votes[i], key=self.votes[i].get) for i in kept]
        return sv.Detections(
            xyxy=_tight_boxes(masks[keep]).reshape(-1, 4),
            mask=masks[keep].reshape(-1, *masks.shape[1:]),
            confidence=np.array([self.confidence[i] for i in kept], np.float32),
            class_id=np.array(classes, np.int64),
            tracker_id=np.array(kept, np.int64),
            data={"class_name": np.array([self.names[c] for c in classes], dtype=str)},
        )


def _dedupe(found: sv.Detections) -> sv.Detections:
    """One detection per object: drop those whose mask overlaps a better one's by more than
    ``DEDUP_IOU`` (any class: a detector may name one object twice). Masks, not boxes: two
    objects crossing may share a box, never a mask."""
    if len(found) < 2:
        return found
    iou = mask_iou(found.mask, found.mask)
    kept: list[int] = []
    for i in np.argsort(-found.confidence, kind="stable").tolist():
        if all(iou[i, j] <= DEDUP_IOU for j in kept):
            kept.append(i)
    return found[np.sort(np.array(kept, np.int64))]


def run_sam2(
    source: VideoSource,
    predictor: Any,
    prompt: PromptInput,
    every: int,
    video_model: Any,
    *,
    settings: Sam2VideoSettings | None = None,
    match_iou: float = MATCH_IOU,
    lost_keyframes: int = LOST_KEYFRAMES,
    prompt_with: Literal["mask", "box"] = "mask",
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    max_detections: int | None = 100,
    with_frames: bool = False,
) -> Iterator[sv.Detections] | Iterator[tuple[np.ndarray, sv.Detections]]:
    """Track what ``prompt`` names through ``source``: one ``Detections`` per frame (see the
    module doc), or ``(frame, detections)`` pairs (RGB uint8 frames) with ``with_frames``.

    ``predictor``: a ``GroundedSAM`` (or anything with its ``predict_batch``), run on every
    ``every``-th frame. ``video_model``: a ``Sam2VideoModel`` (see
    ``grounded_seg.official.sam2_video.load_sam2_video``; ``settings`` its frame transform,
    default the official one at the model's size), or a propagator with
    :class:`Sam2VideoPropagator`'s ``step`` / ``add`` / ``remove``. ``match_iou``: least mask
    IoU for a detection to continue an object; ``lost_keyframes``: keyframes in a row without
    one before the object ends; ``prompt_with``: how new objects are prompted (their detection's
    mask or box). Thresholds as in ``GroundedSAM.predict``. Arguments are checked here, before
    any frame is read.
    """
    if not isinstance(source, VideoSource):
        raise TypeError(f"source: expected a VideoSource (open_video), got {type(source).__name__}")
    every = check_count("every", every)
    lost_keyframes = check_count("lost_keyframes", lost_keyframes)
    match_iou = check_threshold("match_iou", match_iou)
    if prompt_with not in ("mask", "box"):
        raise ValueError(f"prompt_with: expected 'mask' or 'box', got {prompt_with!r}")
    answers = (check_threshold("box_threshold", box_threshold),
               check_threshold("text_threshold", text_threshold),
               check_limit("max_detections", max_detections))  # fmt: skip
    if not callable(getattr(predictor, "predict_batch", None)):
        raise TypeError(f"predictor: expected a GroundedSAM, got {type(predictor).__name__}")
    propagator = video_model
    if not callable(getattr(video_model, "step", None)):
        propagator = Sam2VideoPropagator(video_model, settings, source.count)
    tracks = _Tracks(match_iou, lost_keyframes)
    return _run(source, predictor, normalize_prompt(prompt), every, propagator, tracks, answers,
                prompt_with, with_frames)  # fmt: skip


def _run(source, predictor, prompt, every, propagator, tracks, answers, prompt_with, with_frames):
    for t, frame in enumerate(source):
        ids, masks = propagator.step(t, frame)
        if t % every == 0:
            found = predictor.predict_batch([frame], prompt, *answers, max_pixels=None)[0]
            found = _dedupe(found)
            ended, new_ids, starts = tracks.keyframe(found, ids, masks)
            propagator.remove(ended)
            keep = [i for i, obj_id in enumerate(ids) if obj_id not in set(ended)]
            prompts = found.mask[starts] if prompt_with == "mask" else None
            born = propagator.add(new_ids, found.xyxy[starts], prompts)
            ids = [ids[i] for i in keep] + new_ids
            masks = np.concatenate([masks[keep], born]) if len(born) else masks[keep]
        result = tracks.detections(ids, masks)
        yield (frame, result) if with_frames else result

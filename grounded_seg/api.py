"""``segment(image, "black cat")``: the one-call entry, with its models kept warm between calls."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import supervision as sv
import torch

from .boxes import DEFAULT_NMS_THRESHOLD
from .checks import check_count, check_limit, check_nms_threshold, check_threshold
from .devices import resolve_device
from .images import DEFAULT_MAX_PIXELS, ImageInput, load_image, validate_image_format
from .predictor import (
    DEFAULT_MAX_DETECTIONS,
    GroundedSAM,
    ModelRef,
)
from .prompts import PromptInput, normalize_prompt
from .proposers import PROPOSERS

logger = logging.getLogger(__name__)


class _WarmModels:
    """The last proposer and segmenter ``segment()`` loaded, loaded once per key under a lock.

    ``functools.lru_cache`` alone let four threads starting at once each load the models (and
    transformers' loading is not thread-safe); here the first caller loads while the others
    wait for its result. The models are shared; every call gets its own ``GroundedSAM`` around
    them, so no image state is shared between calls.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._models: tuple[Any, Any] | None = None
        self.loads = 0  # how many times a pair was loaded (lets tests check the warm path)

    def get(self, key: tuple) -> tuple[Any, Any]:
        with self._lock:
            if self._key != key or self._models is None:
                detector, segmenter, device, dtype, proposer, nms_threshold = key
                logger.info("loading %s detector %s, segmenter %s", proposer, detector, segmenter)
                self._key, self._models = None, None  # the old pair is released before loading
                loaded = GroundedSAM(
                    detector=detector,
                    segmenter=segmenter,
                    device=device,
                    dtype=dtype,
                    proposer=proposer,
                    proposer_options={"nms_threshold": nms_threshold},
                )
                self._key, self._models = key, (loaded.proposer, loaded.segmenter)
                self.loads += 1
            return self._models

    def clear(self) -> None:
        with self._lock:
            self._key, self._models = None, None


_warm = _WarmModels()


def clear_model_cache() -> None:
    """Release the models ``segment()`` keeps warm (they load again on the next call).
    Calls already running keep the models they hold until they return."""
    _warm.clear()


def segment(
    image: ImageInput | Sequence[ImageInput],
    prompt: PromptInput,
    *,
    proposer: str = "grounding_dino",
    detector: ModelRef | None = None,
    segmenter: ModelRef | None = None,
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    max_detections: int | None = DEFAULT_MAX_DETECTIONS,
    nms_threshold: float | None = DEFAULT_NMS_THRESHOLD,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    image_format: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    batch_size: int = 8,
) -> sv.Detections | list[sv.Detections]:
    """Segment what ``prompt`` names in ``image``, or in each image of a list.

    ``image``: a path, a PIL image (any mode; EXIF orientation applied) or a uint8 ``(H, W, 3)``
    array in ``image_format`` order (``"BGR"`` for OpenCV arrays). ``prompt``: free text, dot-
    separated classes or a list of classes (see ``normalize_prompt``); an image of more than
    ``max_pixels`` pixels (default 100 million; ``None``: no limit) is refused before decoding.
    ``proposer`` is the route from words to boxes, ``"grounding_dino"`` (Grounding DINO or
    MM-Grounding-DINO), ``"clip"``, ``"owlv2"`` or ``"sam3"``; ``detector`` names its model
    (``None``: the route's default, see ``PROPOSERS``) and ``segmenter`` the SAM, SAM 2.1 or
    SAM-HQ (``None``: ``sam-vit-base``, or SAM 3's own masks on the ``sam3`` route), as registry
    names, local folders, official checkpoints or hub ids; ``max_detections`` caps the
    result (the best by score; ``None``: no cap); ``nms_threshold`` is the IoU above which a
    box is dropped for a better one of its class (``None``: the official, un-suppressed output;
    the default 0.5 was chosen on held-out scenes); ``device`` is ``None`` (auto: cuda, mps, cpu)
    or explicit; ``dtype`` is float32 unless the bfloat16 (CUDA, CPU) or float16 (CUDA, MPS)
    fast path is asked for: float32 weights, forward passes under autocast.

    A list (or tuple) of images returns a list of ``Detections``, one per image in order, run
    ``batch_size`` images at a time through :meth:`GroundedSAM.predict_batch`; every image is
    checked and decoded first. Images of one size get the answers of one call per image; images
    of different sizes share a padded batch, which moves a detector's answers slightly (see
    ``predict_batch``). For a folder of thousands, ``label_images`` streams, batches images of
    one size together, writes a data set and resumes.

    The image, prompt and thresholds are validated before any model is loaded. The last pair of
    models stays loaded for the next call (``clear_model_cache()`` releases it). The result is
    described in :meth:`GroundedSAM.predict`.

    Safe to call from several threads at once: the models load once (the other callers wait),
    are shared read-only, and each call keeps its image's state to itself; results are the
    same as sequential calls'.

    >>> det = segment("cats.jpg", "black cat")                       # doctest: +SKIP
    >>> det.xyxy, det.mask.shape, det.data["class_name"]             # doctest: +SKIP
    """
    validate_image_format(image_format)
    batch = isinstance(image, (list, tuple))
    if batch:
        batch_size = check_count("batch_size", batch_size)
        rgbs = [load_image(i, image_format=image_format, max_pixels=max_pixels) for i in image]
    else:
        rgb = load_image(image, image_format=image_format, max_pixels=max_pixels)
    normalized = normalize_prompt(prompt)
    box_threshold = check_threshold("box_threshold", box_threshold)
    text_threshold = check_threshold("text_threshold", text_threshold)
    max_detections = check_limit("max_detections", max_detections)
    nms_threshold = check_nms_threshold(nms_threshold)
    resolve_device(device)  # a device this machine lacks: now, before anything loads
    device_key = None if device is None else str(device)
    dtype_key = None if dtype is None else str(dtype).removeprefix("torch.")
    if proposer not in PROPOSERS:
        raise ValueError(f"proposer: expected one of {sorted(PROPOSERS)}, got {proposer!r}")
    proposer_model, segmenter_model = _warm.get(
        (detector, segmenter, device_key, dtype_key, proposer, nms_threshold)
    )
    # a predictor of this call's own around the shared models: its image state is not shared,
    # and the warm models keep no reference to the user's image. The arrays were decoded and
    # checked above (load_image: fresh copies of this call's own), so the predictor takes them
    # as they are instead of checking and copying each a second time.
    predictor = GroundedSAM(detector=proposer_model, segmenter=segmenter_model)
    if batch:
        results: list[sv.Detections] = []
        for start in range(0, len(rgbs), batch_size):
            chunk = [predictor._prepare_rgb(rgb) for rgb in rgbs[start : start + batch_size]]
            results += predictor.predict_batch(
                chunk, normalized, box_threshold, text_threshold, max_detections
            )
        return results
    predictor._set_rgb(rgb)
    return predictor.predict(normalized, box_threshold, text_threshold, max_detections)

"""``segment(image, "black cat")``: the one-call entry, with its models kept warm between calls."""

from __future__ import annotations

import functools
import logging

import supervision as sv
import torch

from .images import ImageInput, load_image, validate_image_format
from .predictor import GroundedSAM, ModelRef, check_threshold
from .prompts import PromptInput, normalize_prompt
from .proposers import PROPOSERS

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _warm_predictor(
    detector: ModelRef | None,
    segmenter: ModelRef,
    device: str | None,
    dtype: str | None,
    proposer: str,
) -> GroundedSAM:
    logger.info("loading %s detector %s and segmenter %s", proposer, detector, segmenter)
    return GroundedSAM(
        detector=detector, segmenter=segmenter, device=device, dtype=dtype, proposer=proposer
    )


def clear_model_cache() -> None:
    """Release the models ``segment()`` keeps warm (they load again on the next call)."""
    _warm_predictor.cache_clear()


def segment(
    image: ImageInput,
    prompt: PromptInput,
    *,
    proposer: str = "grounding_dino",
    detector: ModelRef | None = None,
    segmenter: ModelRef = "sam-vit-base",
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    image_format: str = "RGB",
) -> sv.Detections:
    """Segment what ``prompt`` names in ``image``.

    ``image``: a path, a PIL image (any mode; EXIF orientation applied) or a uint8 ``(H, W, 3)``
    array in ``image_format`` order (``"BGR"`` for OpenCV arrays). ``prompt``: free text, dot-
    separated classes or a list of classes (see ``normalize_prompt``). ``proposer`` is the route
    from words to boxes, ``"grounding_dino"`` or ``"clip"``; ``detector`` names its model
    (``None``: ``grounding-dino-tiny`` / ``clip-vit-base-patch32``) and ``segmenter`` the SAM, as
    registry names or local folders; ``device`` is ``None`` (auto: cuda, mps, cpu) or explicit;
    ``dtype`` is float32 unless the bfloat16 (CUDA, CPU) or float16 (CUDA, MPS) fast path is
    asked for: float32 weights, forward passes under autocast.

    The image, prompt and thresholds are validated before any model is loaded. The last pair of
    models stays loaded for the next call (``clear_model_cache()`` releases it). The result is
    described in :meth:`GroundedSAM.predict`.

    >>> det = segment("cats.jpg", "black cat")                       # doctest: +SKIP
    >>> det.xyxy, det.mask.shape, det.data["class_name"]             # doctest: +SKIP
    """
    validate_image_format(image_format)
    rgb = load_image(image, image_format=image_format)
    normalized = normalize_prompt(prompt)
    box_threshold = check_threshold("box_threshold", box_threshold)
    text_threshold = check_threshold("text_threshold", text_threshold)
    device_key = None if device is None else str(device)
    dtype_key = None if dtype is None else str(dtype).removeprefix("torch.")
    if proposer not in PROPOSERS:
        raise ValueError(f"proposer: expected one of {sorted(PROPOSERS)}, got {proposer!r}")
    predictor = _warm_predictor(detector, segmenter, device_key, dtype_key, proposer)
    predictor.set_image(rgb)
    try:
        return predictor.predict(normalized, box_threshold, text_threshold)
    finally:
        predictor.reset_image()  # the warm models keep no reference to the user's image

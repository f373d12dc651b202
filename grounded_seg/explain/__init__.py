"""``explain(image, prompt)``: Grounding DINO's four stages for one image, as arrays and a picture.

>>> from grounded_seg import explain                                  # doctest: +SKIP
>>> why = explain("kitchen.jpg", "black cat. bowl.")                  # doctest: +SKIP
>>> why.selection.shape      # (classes, levels, H, W): the query-selection maps
>>> why.box_path[0]          # the first detection's box after each decoder layer
>>> why.save("explain.png")  # one figure of the four stages (matplotlib)
"""

from __future__ import annotations

import os

import torch

from ..checks import check_limit, check_threshold
from ..images import DEFAULT_MAX_PIXELS, ImageInput, load_image
from ..prompts import PromptInput, normalize_prompt
from .stages import Explanation, explain_state

__all__ = ["Explanation", "explain", "explain_state"]


def explain(
    image: ImageInput,
    prompt: PromptInput,
    *,
    detector: str | os.PathLike | None = None,
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    max_detections: int | None = 100,
    device: str | torch.device | None = None,
    image_format: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Explanation:
    """Why Grounding DINO found what it found in ``image`` for ``prompt``: see
    :class:`Explanation` for the arrays (shapes, coordinates) and ``.figure()`` / ``.save()``.

    ``detector``: a Grounding DINO (registry name such as ``grounding-dino-tiny``, a folder,
    an official checkpoint's converted folder; ``None``: ``grounding-dino-tiny``); only it is
    loaded (no SAM). Thresholds as in ``segment()``. ``GroundedSAM.explain`` does the same on
    the predictor's current image, reusing its cached backbone features. The prompt must fit
    one pass of the text encoder (256 tokens: dozens of classes).
    """
    from ..availability import require_models
    from ..proposers.grounding_dino import GroundingDinoProposer

    rgb = load_image(image, image_format=image_format, max_pixels=max_pixels)
    normalized = normalize_prompt(prompt)
    box_threshold = check_threshold("box_threshold", box_threshold)
    text_threshold = check_threshold("text_threshold", text_threshold)
    max_detections = check_limit("max_detections", max_detections)
    name = detector if detector is not None else "grounding-dino-tiny"
    require_models([(name, "detector")])
    proposer = GroundingDinoProposer.from_pretrained(name, device=device)
    state = proposer.encode_image(rgb)
    return explain_state(
        proposer, state, rgb, normalized, box_threshold, text_threshold, max_detections
    )

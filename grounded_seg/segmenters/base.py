"""The mask-segmenter interface: boxes in, one mask per box out."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class MaskSegmenter(Protocol):
    """Masks from box prompts; ``encode_image`` is cheap, the embedding is made once, lazily."""

    def encode_image(self, image: np.ndarray) -> Any:
        """Prepare an RGB uint8 ``(H, W, 3)`` image; the returned state is passed to ``segment``."""
        ...

    def segment(self, state: Any, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks for ``(N, 4)`` xyxy pixel boxes: bool ``(N, H, W)``, scores ``(N,)`` in [0, 1]."""
        ...

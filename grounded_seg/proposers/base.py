"""The box-proposer interface: an image and a prompt in, boxes with classes out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..prompts import Prompt


@dataclass
class Proposals:
    """Boxes proposed for one image, sorted by descending score.

    ``xyxy`` is ``(N, 4)`` float32 in pixels of the original image, clipped to it; ``scores``
    ``(N,)`` float32 in [0, 1]; ``class_ids`` ``(N,)`` int64 indices into ``Prompt.classes``;
    ``phrases`` the ``N`` words of the prompt that grounded each box (never empty).
    A proposer that already has a mask per box (the CLIP route's SAM candidates) sets ``masks``
    ``(N, H, W)`` bool and ``mask_scores`` ``(N,)``; the pipeline then does not run SAM again.
    ``best_score`` is the highest score the proposer saw, kept or not (``None``: unknown): when
    nothing passes the threshold it tells the user how far off the best candidate was.
    ``unknown_words`` are prompt words the model cannot read (its vocabulary lacks them).
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    phrases: list[str] = field(default_factory=list)
    masks: np.ndarray | None = None
    mask_scores: np.ndarray | None = None
    best_score: float | None = None
    unknown_words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        if self.xyxy.shape != (n, 4) or self.scores.shape != (n,) or self.class_ids.shape != (n,):
            raise ValueError(
                f"Proposals: expected xyxy (N, 4), scores (N,), class_ids (N,), got "
                f"{self.xyxy.shape}, {self.scores.shape}, {self.class_ids.shape}"
            )
        if len(self.phrases) != n:
            raise ValueError(f"Proposals: expected {n} phrases, got {len(self.phrases)}")
        if (self.masks is None) != (self.mask_scores is None):
            raise ValueError("Proposals: masks and mask_scores come together or not at all")
        if self.masks is not None and (len(self.masks) != n or len(self.mask_scores) != n):
            raise ValueError(
                f"Proposals: expected {n} masks and mask scores, got {len(self.masks)} and "
                f"{len(self.mask_scores)}"
            )

    @classmethod
    def empty(cls, best_score: float | None = None) -> Proposals:
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            [],
            best_score=best_score,
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def top(self, k: int | None) -> Proposals:
        """The ``k`` best proposals (all of them when ``k`` is ``None`` or not smaller)."""
        if k is None or len(self) <= k:
            return self
        masks = None if self.masks is None else self.masks[:k]
        mask_scores = None if self.mask_scores is None else self.mask_scores[:k]
        return Proposals(
            self.xyxy[:k],
            self.scores[:k],
            self.class_ids[:k],
            self.phrases[:k],
            masks,
            mask_scores,
            self.best_score,
            self.unknown_words,
        )


@runtime_checkable
class BoxProposer(Protocol):
    """Turns a prompt into boxes. ``encode_image`` holds the per-image work that prompts share."""

    def encode_image(self, image: np.ndarray) -> Any:
        """Prepare an RGB uint8 ``(H, W, 3)`` image; the returned state is passed to ``propose``.

        A proposer that prepared the image for the pipeline's segmenter too exposes that as
        ``state.segmenter_state``, so the segmenter does not encode the image again."""
        ...

    def propose(
        self,
        state: Any,
        prompt: Prompt,
        box_threshold: float,
        text_threshold: float,
        max_detections: int | None = None,
    ) -> Proposals:
        """Boxes for ``prompt`` on the image behind ``state``, at most ``max_detections`` of
        them (the best; ``None``: no cap), sorted by descending score."""
        ...

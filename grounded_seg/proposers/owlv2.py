"""OWLv2 as a box proposer, on ``transformers.Owlv2ForObjectDetection``.

OWLv2 is a ViT whose every output patch token is a candidate object: a box head predicts one box
per patch, an objectness head how likely that patch holds an object, and a class head projects
the patch into CLIP's text space, where it is compared with each query text. Boxes, objectness
and the patch features depend only on the image, so they are computed once per image, lazily on
its first prompt (``model.image_embedder``, ``model.box_predictor``,
``model.objectness_predictor``); each prompt then costs one text pass for all of its classes and
the class head (``model.class_predictor``) on the cached features.

Scoring (what ``propose`` returns): per box, the class is the prompt class with the highest
logit (an index into ``Prompt.classes``) and the score is that logit's sigmoid; boxes scoring
above ``box_threshold`` are kept, duplicates removed by class-aware NMS, best first. NMS is
class-aware as on the other routes, so ``nms_threshold`` means the same everywhere: each box
carries one class (its argmax), so it removes the neighbouring patches that find one object
under one class and keeps overlapping objects of different classes (a rider on a horse).
``text_threshold`` is ignored: OWLv2 scores whole query texts, with no per-word probabilities.

The padded square: OWLv2's image processor pads an ``H x W`` image with zeros at the bottom and
right to a ``max(H, W)`` square before resizing it, so the model's normalised boxes are fractions
of that square, not of the image. A box maps to pixels of the original image as
``box_norm * max(H, W)``, then clipped to ``W x H`` (:func:`padded_square_to_pixels`); a box that
lies wholly in the padding has no area left and is never proposed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._loading import load_pretrained
from ..boxes import DEFAULT_NMS_THRESHOLD, class_aware_nms, clip_boxes, normalized_cxcywh_to_pixels
from ..checks import check_nms_threshold
from ..clip import projected_features
from ..devices import ModelHolder, autocast, resolve_device, resolve_dtype
from ..preprocessing import _check_rgb
from ..prompts import Prompt
from .base import Proposals

logger = logging.getLogger(__name__)


def padded_square_to_pixels(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Map OWLv2's ``(N, 4)`` normalised (cx, cy, w, h) boxes to xyxy pixels of the original
    ``height x width`` image: the model sees the image padded bottom and right to a
    ``max(height, width)`` square, so coordinates scale by that side, then are clipped to the
    image. Returns ``(N, 4)`` float32 (x1, y1, x2, y2), ``0 <= x <= width``, ``0 <= y <= height``.

    >>> padded_square_to_pixels(torch.tensor([[0.5, 0.25, 0.25, 0.125]]), 100, 200).tolist()
    [[75.0, 37.5, 125.0, 62.5]]
    >>> padded_square_to_pixels(torch.tensor([[0.5, 0.25, 0.25, 0.125]]), 200, 100).tolist()
    [[75.0, 37.5, 100.0, 62.5]]
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size: expected height, width >= 1, got {height} x {width}")
    side = max(int(height), int(width))
    return clip_boxes(normalized_cxcywh_to_pixels(boxes, side, side), height, width)


@dataclass(frozen=True)
class Owlv2ImageFeatures:
    """What OWLv2 computes from the image alone, one row per patch (``P`` candidate boxes).

    ``image_feats`` ``(1, P, D)``: the patch features the class head reads (model device);
    ``boxes`` ``(P, 4)`` float32 xyxy pixels of the original image, clipped (CPU);
    ``valid`` ``(P,)`` bool: the box keeps some area after clipping (a box wholly in the padding
    does not); ``objectness`` ``(P,)`` float32 in [0, 1], the objectness head's sigmoid: how
    likely the patch holds an object, whatever the text (not used to score; exposed for
    callers that rank class-agnostic candidates).
    """

    image_feats: torch.Tensor
    boxes: torch.Tensor
    valid: torch.Tensor
    objectness: torch.Tensor


@dataclass
class Owlv2ImageState:
    """One preprocessed image: the padded, resized pixels, its original size and, after the first
    prompt, its :class:`Owlv2ImageFeatures` (``features``)."""

    pixel_values: torch.Tensor  # (1, 3, S, S): padded to a square, resized to S, normalised
    height: int  # original image size, pixels
    width: int
    features: Owlv2ImageFeatures | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


class Owlv2Proposer(ModelHolder):
    """Boxes for a prompt with OWLv2 (see the module doc for the scoring and the box frame).

    ``template`` turns a class into the query text (``"{}"``: the class itself; e.g.
    ``"a photo of a {}"``). ``nms_threshold``: class-aware NMS IoU (``None``: none, the raw
    per-patch output, which holds many near-duplicates: neighbouring patches see one object).

    >>> proposer = Owlv2Proposer.from_pretrained()                         # doctest: +SKIP
    >>> state = proposer.encode_image(rgb)                                 # doctest: +SKIP
    >>> found = proposer.propose(state, normalize_prompt("cat. dog."), 0.2, 0.0)  # doctest: +SKIP

    Thread safety: the model is shared read-only; tokenizer calls take turns (a fast tokenizer
    keeps its settings in state); an image state computes its features once, under its own lock.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        image_processor: Any,
        nms_threshold: float | None = DEFAULT_NMS_THRESHOLD,
        dtype: str | torch.dtype | None = None,
        template: str = "{}",
    ) -> None:
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"template: expected a format string with '{{}}', got {template!r}")
        self.model = model
        # None: the weights' own dtype; bfloat16/float16: forward passes under autocast
        self.compute_dtype = None if dtype is None else resolve_dtype(dtype, self.device)
        self.tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        self.image_processor = image_processor
        self.nms_threshold = check_nms_threshold(nms_threshold)
        self.template = template
        self.max_text_len = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "owlv2-base-patch16-ensemble",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        nms_threshold: float | None = DEFAULT_NMS_THRESHOLD,
        template: str = "{}",
    ) -> Owlv2Proposer:
        """Load a registry name (default ``owlv2-base-patch16-ensemble``, hub
        ``google/owlv2-base-patch16-ensemble``) or a local folder, strictly; a folder of another
        model type is an ``InvalidWeightsError`` naming what it holds.

        ``nms_threshold`` defaults to the project's class-aware NMS IoU, 0.5
        (``grounded_seg.boxes.DEFAULT_NMS_THRESHOLD``; chosen on the shapes scenes for Grounding
        DINO, where it removed every duplicate and kept objects overlapping by less than half);
        ``dtype`` bfloat16/float16 is the opt-in autocast fast path, as for the other routes.
        """
        compute_dtype = resolve_dtype(dtype, resolve_device(device), warn=False)
        model, parts = load_pretrained(
            name_or_path,
            "detector",
            "owlv2",
            "Owlv2ForObjectDetection",
            {"tokenizer": "AutoTokenizer", "image_processor": "AutoImageProcessor"},
            device,
        )
        return cls(
            model,
            parts["tokenizer"],
            parts["image_processor"],
            nms_threshold=nms_threshold,
            dtype=compute_dtype,
            template=template,
        )

    def encode_image(self, image: np.ndarray) -> Owlv2ImageState:
        """Preprocess an RGB uint8 ``(H, W, 3)`` image as OWLv2 does (zero-padded bottom and right
        to a square, resized to the model's input side, normalised). The model runs on the
        first prompt (see :meth:`image_features`)."""
        _check_rgb(image)
        inputs = self.image_processor(images=image, return_tensors="pt")
        pixels = inputs["pixel_values"]
        return Owlv2ImageState(
            pixel_values=pixels.to(self.device, self.dtype),
            height=int(image.shape[0]),
            width=int(image.shape[1]),
        )

    @torch.inference_mode()
    def image_features(self, state: Owlv2ImageState) -> Owlv2ImageFeatures:
        """The image's patch features, boxes and objectness: computed on the first call for an
        image, then reused by every prompt on it."""
        if not isinstance(state, Owlv2ImageState):
            raise TypeError(
                f"state: expected an Owlv2ImageState from encode_image, got {type(state).__name__}"
            )
        with state._lock:
            if state.features is None:
                state.features = self._compute_features(state)
            return state.features

    def _compute_features(self, state: Owlv2ImageState) -> Owlv2ImageFeatures:
        with autocast(self.device, self.compute_dtype):
            feature_map = self.model.image_embedder(pixel_values=state.pixel_values)[0]
            batch, rows, cols, width = feature_map.shape
            image_feats = feature_map.reshape(batch, rows * cols, width)
            boxes = self.model.box_predictor(image_feats, feature_map)
            objectness = self.model.objectness_predictor(image_feats)
        xyxy = padded_square_to_pixels(boxes[0].float().cpu(), state.height, state.width)
        valid = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        logger.debug("OWLv2: %d boxes, %d inside the image", len(valid), int(valid.sum()))
        return Owlv2ImageFeatures(
            image_feats=image_feats,
            boxes=xyxy,
            valid=valid,
            objectness=objectness[0].float().sigmoid().cpu(),
        )

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected text embeddings ``(T, D)`` of ``texts`` in one pass (model device); a text
        longer than the text encoder's window (16 tokens for the released models) is refused
        with ``ValueError``, never cut."""
        texts = list(texts)
        if not texts:
            raise ValueError("texts: expected at least one text, got none")
        with self._tokenizer_lock:
            for text in texts:
                length = len(self.tokenizer(text, split_special_tokens=True)["input_ids"])
                if length > self.max_text_len:
                    raise ValueError(
                        f"text {text!r} is {length} tokens; OWLv2 reads at most "
                        f"{self.max_text_len}: use a shorter class name"
                    )
            # user text is text: "<|endoftext|>" in a class is characters, not the end token
            inputs = self.tokenizer(
                texts, padding=True, return_tensors="pt", split_special_tokens=True
            )
        inputs = inputs.to(self.device)
        with autocast(self.device, self.compute_dtype):
            output = self.model.owlv2.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            )
        return projected_features(output)

    @torch.inference_mode()
    def class_logits(self, state: Owlv2ImageState, prompt: Prompt) -> torch.Tensor:
        """``(P, C)`` float32 logits of each of the image's ``P`` boxes for each of the prompt's
        ``C`` classes (CPU): one text pass, then OWLv2's class head on the cached features."""
        if not isinstance(prompt, Prompt):
            raise TypeError(
                f"prompt: expected a Prompt (see normalize_prompt), got {type(prompt).__name__}"
            )
        features = self.image_features(state)
        queries = self.embed_texts([self.template.format(c) for c in prompt.classes])
        with autocast(self.device, self.compute_dtype):
            logits = self.model.class_predictor(features.image_feats, queries[None], None)[0]
        logits = logits[0].float().cpu()
        if logits.shape != (len(features.boxes), len(prompt.classes)):
            raise RuntimeError(
                f"OWLv2 class head: expected logits {(len(features.boxes), len(prompt.classes))}, "
                f"got {tuple(logits.shape)}"
            )
        return logits

    def propose(
        self,
        state: Owlv2ImageState,
        prompt: Prompt,
        box_threshold: float = 0.1,
        text_threshold: float = 0.25,
        max_detections: int | None = None,
    ) -> Proposals:
        """Boxes for ``prompt`` in xyxy pixels of the original image, best first.

        Each box's class is the prompt class with the highest logit, its score that logit's
        sigmoid in [0, 1]; boxes scoring above ``box_threshold`` are kept, class-aware NMS at
        ``nms_threshold`` removes duplicates, and the ``max_detections`` best remain (``None``:
        all). ``phrases`` are the class names. ``text_threshold`` is ignored: OWLv2 scores a
        whole query text per box, with no per-word probabilities to threshold. ``best_score``
        is the highest score of any box inside the image, kept or not. OWLv2's scores run lower
        than Grounding DINO's: 0.1 is the usual threshold (the pipeline's default is 0.35).
        """
        features = self.image_features(state)
        logits = self.class_logits(state, prompt)
        best_logit, best_class = logits.max(dim=-1)
        scores = best_logit.sigmoid()
        candidates = features.valid
        if not bool(candidates.any()):
            return Proposals.empty()
        best_score = float(scores[candidates].max())
        keep = candidates & (scores > box_threshold)
        if not bool(keep.any()):
            return Proposals.empty(best_score)
        index = torch.nonzero(keep).flatten()
        if self.nms_threshold is None:
            order = torch.argsort(scores[index], descending=True, stable=True)
        else:
            order = class_aware_nms(
                features.boxes[index], scores[index], best_class[index], self.nms_threshold
            )
        index = index[order[:max_detections]]
        class_ids = best_class[index].numpy().astype(np.int64)
        return Proposals(
            xyxy=features.boxes[index].numpy().astype(np.float32),
            scores=scores[index].numpy().astype(np.float32),
            class_ids=class_ids,
            phrases=[prompt.classes[i] for i in class_ids],
            best_score=best_score,
        )

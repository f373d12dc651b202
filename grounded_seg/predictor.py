"""``GroundedSAM``: one proposer and one segmenter, a per-image cache, prompts answered cheaply."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import supervision as sv
import torch

from .checks import check_limit, check_threshold
from .images import DEFAULT_MAX_PIXELS, ImageInput, load_image
from .prompts import Prompt, PromptInput, normalize_prompt
from .proposers.base import BoxProposer, Proposals
from .segmenters.base import MaskSegmenter

logger = logging.getLogger(__name__)

ModelRef = str | os.PathLike


DEFAULT_MAX_DETECTIONS = 100
"""The most detections one ``predict`` returns by default (COCO's ``maxDets``)."""

DEFAULT_SEGMENTER = "sam-vit-base"
"""The segmenter when none is named, on every route but ``sam3`` (SAM 3 makes its own masks)."""


def default_segmenter(proposer: str, detector: Any = None) -> str | None:
    """The segmenter a route uses when none is named: ``None`` (the proposer's own masks) on the
    ``sam3`` route or for a proposer object that returns masks (``returns_masks``), else
    :data:`DEFAULT_SEGMENTER`."""
    if proposer == "sam3" or getattr(detector, "returns_masks", False):
        return None
    return DEFAULT_SEGMENTER


@dataclass
class PreparedImage:
    """One image ready for the models (made by ``GroundedSAM.prepare``): the checked RGB uint8
    ``(H, W, 3)`` array and each model's preprocessed input; no model has run on it yet."""

    image: np.ndarray
    proposer_state: Any
    segmenter_state: Any


def nothing_found(prompt: Prompt, proposals: Proposals, box_threshold: float) -> str:
    """One sentence on an empty result: the best score seen against the threshold, and the
    prompt words the model cannot read."""
    text = f"nothing found for {prompt.caption!r}"
    if proposals.best_score is not None:
        text += (
            f": the best score, {proposals.best_score:.3f}, is not above box_threshold "
            f"{box_threshold:.3g}"
        )
    if proposals.unknown_words:
        words = ", ".join(repr(w) for w in proposals.unknown_words)
        text += f"; the detector's vocabulary lacks {words}"
    return text


def build_detections(
    proposals: Proposals,
    masks: np.ndarray,
    mask_scores: np.ndarray,
    classes: Sequence[str],
    height: int,
    width: int,
) -> sv.Detections:
    """Assemble the result: ``xyxy`` (N, 4) float32 pixels, ``mask`` (N, H, W) bool,
    ``confidence`` (N,), ``class_id`` (N,), ``data["class_name"]``, ``data["phrase"]``,
    ``data["mask_score"]``. With no proposals, every field is empty with the right shape."""
    n = len(proposals)
    if masks.shape != (n, height, width):
        raise ValueError(f"masks: expected shape {(n, height, width)}, got {masks.shape}")
    names = np.array([classes[i] for i in proposals.class_ids.tolist()], dtype=str)
    return sv.Detections(
        xyxy=proposals.xyxy.astype(np.float32).reshape(n, 4),
        mask=masks.astype(bool, copy=False),  # no second copy of (N, H, W) masks
        confidence=proposals.scores.astype(np.float32),
        class_id=proposals.class_ids.astype(np.int64),
        data={
            "class_name": names.reshape(n),
            "phrase": np.array(proposals.phrases, dtype=str).reshape(n),
            "mask_score": np.asarray(mask_scores, dtype=np.float32).reshape(n),
        },
    )


class GroundedSAM:
    """Text-prompted segmentation: Grounding DINO boxes prompt SAM masks.

    ``proposer`` picks the route from words to boxes: ``"grounding_dino"`` (default: Grounding
    DINO or MM-Grounding-DINO), ``"clip"`` (SAM's candidate regions scored by CLIP), ``"owlv2"``
    or ``"sam3"`` (SAM 3 finds every instance and makes its masks itself). ``detector`` names
    that route's model (``None``: the route's default in ``PROPOSERS``) and ``segmenter`` the
    SAM, SAM 2.1 or SAM-HQ that masks the boxes (``None``: ``sam-vit-base``; on the ``sam3``
    route none, and a named one masks SAM 3's boxes instead of SAM 3). Each is a registry name
    (see ``list_models()``), a local model folder, an official checkpoint, a hub id, or a
    ready-made object implementing ``BoxProposer`` / ``MaskSegmenter``; the class that runs a
    folder comes from its ``config.json``. ``proposer_options`` go to the route's
    proposer, e.g. ``{"auto_config": AutoMaskConfig(points_per_side=32)}`` for the CLIP route.
    ``compile=True`` compiles SAM's image encoder with ``torch.compile`` (opt-in; see
    ``SamSegmenter.from_pretrained``): worth it for many images, with ``dtype="bfloat16"``.

    Work that depends only on the image (SAM's image embedding, Grounding DINO's image backbone,
    the CLIP route's candidates and crop embeddings) is done once per ``set_image``; each
    ``predict`` then pays only for the text and the decoders.

    >>> gs = GroundedSAM(device="cpu")             # doctest: +SKIP
    >>> gs.set_image("kitchen.jpg")                # doctest: +SKIP
    >>> cats = gs.predict("black cat")             # doctest: +SKIP
    >>> pets = gs.predict(["cat", "dog"])          # doctest: +SKIP

    An instance holds one current image: give each thread its own. They may share the models
    (``GroundedSAM(detector=gs.proposer, segmenter=gs.segmenter)``), which are safe to use from
    several threads at once.
    """

    def __init__(
        self,
        detector: ModelRef | BoxProposer | None = None,
        segmenter: ModelRef | MaskSegmenter | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        proposer: str = "grounding_dino",
        proposer_options: dict[str, Any] | None = None,
        compile: bool = False,
    ) -> None:
        from .availability import require_models
        from .devices import resolve_device
        from .proposers import PROPOSERS, proposer_class
        from .proposers.clip import ClipProposer
        from .proposers.grounding_dino import GroundingDinoProposer
        from .registry import list_models
        from .segmenters import load_segmenter
        from .segmenters.sam import SamSegmenter

        if proposer not in PROPOSERS:
            raise ValueError(f"proposer: expected one of {sorted(PROPOSERS)}, got {proposer!r}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile: expected True or False, got {compile!r}")
        if detector is None:
            detector = PROPOSERS[proposer]
        options = dict(proposer_options or {})
        if segmenter is None:
            segmenter = default_segmenter(proposer, detector)
        elif proposer == "sam3" and isinstance(detector, (str, os.PathLike)):
            options.setdefault("return_masks", False)  # boxes only: the named segmenter masks them
        resolve_device(device)  # a device this machine lacks fails now, not after loading
        # every model by name is checked before any loads: all missing ones named at once
        named = ((detector, "detector"), (segmenter, "segmenter"))
        sources = require_models(
            [(m, role) for m, role in named if isinstance(m, (str, os.PathLike))]
        )
        for source in sources:  # a registry model of another route is a bad argument
            family = source.spec.family if source.spec else None
            if source.spec and source.spec.role == "detector" and family != proposer:
                valid = [s.name for s in list_models("detector") if s.family == proposer]
                raise ValueError(
                    f"detector {source.label!r} is a {family} model; the {proposer!r} route "
                    f"needs one of: {', '.join(valid)} (or a folder of such a model)"
                )
        if isinstance(segmenter, (str, os.PathLike)):
            segmenter = load_segmenter(segmenter, device=device, dtype=dtype, compile=compile)
        elif segmenter is None and compile:
            raise ValueError(f"compile: the {proposer!r} route runs no segmenter to compile")
        elif compile:
            raise ValueError(
                "compile applies when the segmenter is loaded by name or path; pass "
                "SamSegmenter.from_pretrained(..., compile=True) instead"
            )
        elif segmenter is not None and not isinstance(segmenter, MaskSegmenter):
            raise TypeError(
                f"segmenter: expected a model name, a path or a MaskSegmenter, got "
                f"{type(segmenter).__name__}"
            )
        if proposer_options and not isinstance(detector, (str, os.PathLike)):
            raise ValueError("proposer_options apply when the detector is loaded by name or path")
        if isinstance(detector, (str, os.PathLike)):
            if proposer == "clip":
                if not isinstance(segmenter, SamSegmenter):
                    raise TypeError(
                        "the CLIP route makes its candidates with SAM's point grid: expected a "
                        f"SamSegmenter, got {type(segmenter).__name__}"
                    )
                detector = ClipProposer.from_pretrained(
                    detector, segmenter=segmenter, device=device, dtype=dtype, **options
                )
            elif proposer == "grounding_dino":
                detector = GroundingDinoProposer.from_pretrained(
                    detector, device=device, dtype=dtype, **options
                )
            else:
                detector = proposer_class(proposer).from_pretrained(
                    detector, device=device, dtype=dtype, **options
                )
        elif not isinstance(detector, BoxProposer):
            raise TypeError(
                f"detector: expected a model name, a path or a BoxProposer, got "
                f"{type(detector).__name__}"
            )
        self.proposer: BoxProposer = detector
        # None on the sam3 route: SAM 3's proposals carry their masks
        self.segmenter: MaskSegmenter | None = segmenter
        self._image: np.ndarray | None = None
        self._proposer_state: Any = None
        self._segmenter_state: Any = None

    def set_image(
        self,
        image: ImageInput,
        image_format: str = "RGB",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        """Set the image that following ``predict`` calls answer about.

        ``image`` is a path, a PIL image or a uint8 ``(H, W, 3)`` array in ``image_format`` order
        (``"RGB"``, or ``"BGR"`` for OpenCV). It is validated and copied; the caller's object is
        never modified. The per-image model work runs on the first ``predict`` that needs it.
        An image of more than ``max_pixels`` pixels (default 100 million; ``None``: no limit)
        is refused with ``ValueError`` before it is decoded.
        """
        self._set_rgb(load_image(image, image_format=image_format, max_pixels=max_pixels))

    def _set_rgb(self, rgb: np.ndarray) -> None:
        """:meth:`set_image` for an array :func:`load_image` has just made (a fresh C-contiguous
        RGB uint8 ``(H, W, 3)`` copy, never the user's object): kept as it is, not checked or
        copied again. For ``segment()`` and the other internal callers that decoded it already."""
        self._image = rgb
        self._proposer_state = self.proposer.encode_image(rgb)
        # shared when the proposer already prepared the image for SAM (the CLIP route);
        # otherwise SAM's preprocessing waits until a box needs it
        self._segmenter_state = getattr(self._proposer_state, "segmenter_state", None)

    def reset_image(self) -> None:
        """Forget the current image and its cached features."""
        self._image = None
        self._proposer_state = None
        self._segmenter_state = None

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the current image; ``RuntimeError`` if none is set."""
        return self._require_image().shape[:2]

    def _require_segmenter(self) -> MaskSegmenter:
        if self.segmenter is None:
            raise RuntimeError(
                f"the proposer {type(self.proposer).__name__} returned boxes without masks and "
                "this GroundedSAM has no segmenter: pass segmenter= (e.g. 'sam-vit-base')"
            )
        return self.segmenter

    def _require_image(self) -> np.ndarray:
        if self._image is None:
            raise RuntimeError(
                "An image must be set with .set_image(image) before calling .predict(prompt)."
            )
        return self._image

    def predict(
        self,
        prompt: PromptInput | Prompt,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        max_detections: int | None = DEFAULT_MAX_DETECTIONS,
    ) -> sv.Detections:
        """Find and segment what ``prompt`` names in the current image.

        ``prompt``: free text (``"the running girl"``), dot-separated classes (``"cat. dog."``) or
        a list of classes (``["cat", "potted plant"]``), normalised by ``normalize_prompt``.
        ``box_threshold``: keep a box when its best token probability exceeds it.
        ``text_threshold``: a word joins a box's ``phrase`` when its probability exceeds it.
        ``max_detections``: at most this many, the best by score (``None``: no cap); it bounds
        the work (SAM decodes one mask per box) and the memory whatever the threshold.

        Returns ``supervision.Detections`` in pixels of the original image: ``xyxy`` (N, 4)
        float32, clipped; ``mask`` (N, H, W) bool; ``confidence`` (N,) in [0, 1]; ``class_id``
        (N,) index into the prompt's classes; ``data["class_name"]`` exactly one of those classes;
        ``data["phrase"]`` the words that grounded the box; ``data["mask_score"]`` SAM's predicted
        IoU. Nothing found: empty Detections with these shapes, and SAM does not run.
        """
        image = self._require_image()
        normalized = normalize_prompt(prompt)
        box_threshold = check_threshold("box_threshold", box_threshold)
        text_threshold = check_threshold("text_threshold", text_threshold)
        max_detections = check_limit("max_detections", max_detections)
        proposals = self.proposer.propose(
            self._proposer_state,
            normalized,
            box_threshold,
            text_threshold,
            max_detections=max_detections,
        ).top(max_detections)  # whatever a third-party proposer returns
        if len(proposals) and proposals.masks is None and self._segmenter_state is None:
            self._segmenter_state = self._require_segmenter().encode_image(image)
        return self._detections(image, proposals, self._segmenter_state, normalized, box_threshold)

    def explain(
        self,
        prompt: PromptInput | Prompt,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        max_detections: int | None = DEFAULT_MAX_DETECTIONS,
    ) -> Any:
        """Grounding DINO's four stages on the current image for ``prompt``: an
        ``Explanation`` (see ``grounded_seg.explain``), reusing the cached backbone features.
        Needs the Grounding DINO route."""
        from .explain import explain_state
        from .proposers.grounding_dino import GroundingDinoProposer

        image = self._require_image()
        if not isinstance(self.proposer, GroundingDinoProposer):
            raise TypeError(
                "explain shows Grounding DINO's stages: expected the grounding_dino route, got "
                f"a {type(self.proposer).__name__}"
            )
        return explain_state(
            self.proposer,
            self._proposer_state,
            image,
            normalize_prompt(prompt),
            check_threshold("box_threshold", box_threshold),
            check_threshold("text_threshold", text_threshold),
            check_limit("max_detections", max_detections),
        )

    def prepare(
        self,
        image: ImageInput | PreparedImage,
        image_format: str = "RGB",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> PreparedImage:
        """Check, decode and preprocess one image for both models, without running either.

        The work a batch must not wait for: decoding, resizing, normalising (for Grounding DINO
        and SAM: their ``encode_image``). Safe to call from worker threads while the models run
        (``label_images`` does), then hand the results to :meth:`predict_batch`. Arguments as
        in :meth:`set_image`; a ``PreparedImage`` is returned as it is.
        """
        if isinstance(image, PreparedImage):
            return image
        return self._prepare_rgb(
            load_image(image, image_format=image_format, max_pixels=max_pixels)
        )

    def _prepare_rgb(self, rgb: np.ndarray) -> PreparedImage:
        """:meth:`prepare` for an array :func:`load_image` made, kept as it is (see
        :meth:`_set_rgb`)."""
        proposer_state = self.proposer.encode_image(rgb)
        segmenter_state = getattr(proposer_state, "segmenter_state", None)
        if segmenter_state is None and self.segmenter is not None:
            segmenter_state = self.segmenter.encode_image(rgb)
        return PreparedImage(rgb, proposer_state, segmenter_state)

    def predict_batch(
        self,
        images: Sequence[ImageInput | PreparedImage],
        prompt: PromptInput | Prompt,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        max_detections: int | None = DEFAULT_MAX_DETECTIONS,
        image_format: str = "RGB",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> list[sv.Detections]:
        """:meth:`predict` for several images at once; one ``Detections`` per image, in order.

        ``images``: a list of paths, PIL images, ``(H, W, 3)`` uint8 arrays in ``image_format``
        order, or :meth:`prepare` results; they may differ in size. With Grounding DINO all
        images go through the detector as one zero-padded batch with a ``pixel_mask`` (as
        transformers batches them; the prompt is tokenised once), and the images with boxes
        through SAM's image encoder as one batch. A proposer or segmenter without batch support
        (``propose_batch`` / ``embed_batch``) runs image by image. The CLIP route embeds the
        batch with SAM in one call, then makes and scores each image's candidates on their own.

        Results equal one-by-one :meth:`predict` calls: for images of one size up to float
        rounding; for mixed sizes the padding changes the Swin backbone's features near the
        padded edge a little (its windows and convolutions see the zeros), so scores and boxes
        may move slightly (see ``tests/test_batch.py`` for the measured differences). The
        current image of :meth:`set_image` is left as it was.
        """
        if isinstance(images, (str, bytes, os.PathLike, np.ndarray)) or not isinstance(
            images, Sequence
        ):
            raise TypeError(
                f"images: expected a list of images, got {type(images).__name__}; for one "
                "image use set_image() and predict()"
            )
        normalized = normalize_prompt(prompt)
        box_threshold = check_threshold("box_threshold", box_threshold)
        text_threshold = check_threshold("text_threshold", text_threshold)
        max_detections = check_limit("max_detections", max_detections)
        prepared = [self.prepare(image, image_format, max_pixels) for image in images]
        if not prepared:
            return []
        states = [p.proposer_state for p in prepared]
        propose_batch = getattr(self.proposer, "propose_batch", None)
        embed_batch = getattr(self.segmenter, "embed_batch", None)
        if propose_batch is not None:
            found = propose_batch(
                states, normalized, box_threshold, text_threshold, max_detections=max_detections
            )
        else:
            if embed_batch is not None and all(  # the CLIP route: SAM embeds every image
                getattr(state, "segmenter_state", None) is not None for state in states
            ):
                embed_batch([p.segmenter_state for p in prepared])
            found = [
                self.proposer.propose(
                    state, normalized, box_threshold, text_threshold, max_detections=max_detections
                )
                for state in states
            ]
        if len(found) != len(prepared):
            raise RuntimeError(
                f"{type(self.proposer).__name__}.propose_batch returned {len(found)} results "
                f"for {len(prepared)} images"
            )
        found = [proposals.top(max_detections) for proposals in found]
        need_sam = [
            p.segmenter_state
            for p, proposals in zip(prepared, found, strict=True)
            if len(proposals) and proposals.masks is None
        ]
        if need_sam and embed_batch is not None:
            embed_batch(need_sam)
        return [
            self._detections(p.image, proposals, p.segmenter_state, normalized, box_threshold)
            for p, proposals in zip(prepared, found, strict=True)
        ]

    def _detections(
        self,
        image: np.ndarray,
        proposals: Proposals,
        segmenter_state: Any,
        prompt: Prompt,
        box_threshold: float,
    ) -> sv.Detections:
        """Masks for the proposals (SAM, unless the proposer made them) and the result."""
        height, width = image.shape[:2]
        if len(proposals) == 0:
            logger.info("%s; SAM not run", nothing_found(prompt, proposals, box_threshold))
            masks, mask_scores = np.zeros((0, height, width), bool), np.zeros(0, np.float32)
        elif proposals.masks is not None:  # the proposer's regions are SAM masks already
            masks, mask_scores = proposals.masks, proposals.mask_scores
        else:
            segmenter = self._require_segmenter()
            masks, mask_scores = segmenter.segment(segmenter_state, proposals.xyxy)
        detections = build_detections(proposals, masks, mask_scores, prompt.classes, height, width)
        # why there is little or nothing: the best score seen, the words the model cannot read
        detections.metadata.update(
            box_threshold=box_threshold,
            best_score=proposals.best_score,
            unknown_words=list(proposals.unknown_words),
        )
        return detections

"""CLIP as a box proposer: SAM's candidate regions, each crop scored against the prompt by CLIP.

Route A of the lecture: CLIP knows images and words but proposes no boxes, so candidates come
from SAM's automatic mode (a point grid on the segmenter's own image embedding, deduplicated),
each candidate is cropped (its box plus a margin; optionally the background outside its mask
blanked) and all crops are embedded in batched CLIP forwards. A crop's class probabilities are

    softmax_j( exp(t) * cos(crop, text_j) )   over the prompt's classes + neutral background texts

with ``t`` CLIP's learned log temperature (``logit_scale``), the seed lecture's formula. A crop is
kept when its best text is a class (not a background text) with probability above
``box_threshold``. With ``crop_views`` 2 or 4, a crop's embedding is the mean of the crop's and
its rotations' (180 degrees; or 90, 180 and 270), for a model whose classes do not change when
turned. Candidates, crop embeddings and the SAM masks depend only on the image, so they
are computed once per image; each prompt then costs one text forward.
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
from ..boxes import DEFAULT_NMS_THRESHOLD, class_aware_nms
from ..checks import check_nms_threshold
from ..clip import projected_features
from ..devices import ModelHolder, autocast, resolve_device, resolve_dtype
from ..prompts import Prompt
from ..segmenters.sam import SamImageState, SamSegmenter, read_model_settings
from ..segmenters.sam_auto import AutoMaskConfig, MaskCandidates, generate_candidates
from .base import Proposals

logger = logging.getLogger(__name__)

DEFAULT_BACKGROUND_TEXTS = ("background", "a plain background", "a texture")


class ClipScorer(ModelHolder):
    """CLIP's two encoders and temperature: normalised embeddings and scaled similarities."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        image_processor: Any,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        self.model = model
        # None: the weights' own dtype; bfloat16/float16: forward passes under autocast
        self.compute_dtype = None if dtype is None else resolve_dtype(dtype, self.device)
        self.tokenizer = tokenizer
        # a fast tokenizer keeps its padding and truncation settings in state that every call
        # sets: two threads calling it at once got each other's settings (and errors), so calls
        # take turns; the model itself is shared freely
        self._tokenizer_lock = threading.Lock()
        self.image_processor = image_processor
        self.max_text_len = int(model.config.text_config.max_position_embeddings)

    @property
    def logit_scale(self) -> float:
        """``exp(t)``: the factor that multiplies cosine similarities (CLIP caps it at 100)."""
        return float(self.model.logit_scale.detach().float().exp().clamp(max=100.0))

    @torch.inference_mode()
    def embed_images(self, images: Sequence[np.ndarray], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised embeddings ``(N, D)`` of RGB uint8 crops, ``batch_size`` per forward."""
        chunks = []
        for start in range(0, len(images), batch_size):
            inputs = self.image_processor(
                images=list(images[start : start + batch_size]), return_tensors="pt"
            )
            pixels = inputs["pixel_values"].to(self.device, next(self.model.parameters()).dtype)
            with autocast(self.device, self.compute_dtype):
                features = self.model.get_image_features(pixel_values=pixels)
            chunks.append(projected_features(features).float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1).cpu()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings ``(T, D)``; a text longer than CLIP's window is refused."""
        with self._tokenizer_lock:
            for text in texts:
                length = len(self.tokenizer(text, split_special_tokens=True)["input_ids"])
                if length > self.max_text_len:
                    raise ValueError(
                        f"text {text!r} is {length} tokens; CLIP reads at most {self.max_text_len}"
                    )
            # user text is text: "<|endoftext|>" in a class is characters, not the end token
            inputs = self.tokenizer(
                list(texts), padding=True, return_tensors="pt", split_special_tokens=True
            )
        inputs = inputs.to(self.device)
        with autocast(self.device, self.compute_dtype):
            output = self.model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            )
        features = projected_features(output)
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()


def crop_regions(
    image: np.ndarray,
    boxes_xyxy: np.ndarray,
    margin: float = 0.1,
    masks: np.ndarray | None = None,
    fill: Sequence[int] = (127, 127, 127),
) -> list[np.ndarray]:
    """One RGB crop per box: the box grown by ``margin`` of its size on each side, clipped.

    With ``masks`` ``(N, H, W)``, pixels outside each mask are set to ``fill`` first.
    """
    height, width = image.shape[:2]
    crops = []
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes_xyxy, dtype=np.float64)):
        dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
        left, top = int(max(0, np.floor(x1 - dx))), int(max(0, np.floor(y1 - dy)))
        right = int(min(width, np.ceil(x2 + dx)))
        bottom = int(min(height, np.ceil(y2 + dy)))
        right, bottom = max(right, left + 1), max(bottom, top + 1)
        crop = image[top:bottom, left:right].copy()
        if masks is not None:
            crop[~masks[i, top:bottom, left:right]] = fill
        crops.append(crop)
    return crops


@dataclass
class ClipImageState:
    """One image, its SAM state (shared with the segmenter) and the per-image CLIP work."""

    image: np.ndarray
    segmenter_state: SamImageState
    candidates: MaskCandidates | None = None
    crop_embeddings: torch.Tensor | None = None
    text_cache: dict[tuple[str, ...], torch.Tensor] = field(default_factory=dict)


class ClipProposer:
    """Boxes for a prompt from SAM candidates scored by CLIP (see the module doc).

    ``segmenter`` is the pipeline's SAM: its image embedding makes the candidates, and its masks
    are returned with the boxes, so SAM's decoder is not run twice.
    """

    def __init__(
        self,
        scorer: ClipScorer,
        segmenter: SamSegmenter,
        auto_config: AutoMaskConfig | dict | None = None,
        template: str = "a photo of a {}.",
        background_texts: Sequence[str] = DEFAULT_BACKGROUND_TEXTS,
        distractors: Sequence[str] = (),
        crop_margin: float = 0.1,
        blank_background: bool = False,
        nms_threshold: float | None = DEFAULT_NMS_THRESHOLD,
        crop_views: int = 1,
    ) -> None:
        if "{}" not in template:
            raise ValueError(f"template: expected a format string with '{{}}', got {template!r}")
        if isinstance(crop_views, bool) or crop_views not in (1, 2, 4):
            raise ValueError(f"crop_views: expected 1, 2 or 4, got {crop_views!r}")
        self.scorer = scorer
        self.segmenter = segmenter
        if isinstance(auto_config, dict):
            auto_config = AutoMaskConfig(**auto_config)
        elif auto_config is not None and not isinstance(auto_config, AutoMaskConfig):
            raise TypeError(
                f"auto_config: expected an AutoMaskConfig, a dict or None, got "
                f"{type(auto_config).__name__}"
            )
        # the fields given override; the rest are the segmenter's calibrated filters, else
        # SAM's defaults (a denser grid alone keeps the calibration)
        self.auto_config = (auto_config or AutoMaskConfig()).resolved(
            getattr(segmenter, "auto_mask", None)
        )
        self.template = template
        self.background_texts = tuple(background_texts)
        self.distractors = tuple(distractors)
        self.crop_margin = crop_margin
        self.blank_background = blank_background
        self.nms_threshold = check_nms_threshold(nms_threshold)
        self.crop_views = int(crop_views)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "clip-vit-base-patch32",
        segmenter: SamSegmenter | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> ClipProposer:
        """Load a CLIP registry name or folder (strict); ``segmenter`` defaults to sam-vit-base.

        A ``grounded_seg.json`` in the model folder may set ``template``, ``background_texts``,
        ``distractors`` and ``crop_views`` calibrated for that model; ``kwargs`` override them."""
        compute_dtype = resolve_dtype(dtype, resolve_device(device), warn=False)
        model, parts = load_pretrained(
            name_or_path,
            "detector",
            "clip",
            "CLIPModel",
            {"tokenizer": "AutoTokenizer", "image_processor": "AutoImageProcessor"},
            device,
        )
        tokenizer, image_processor = parts["tokenizer"], parts["image_processor"]
        if segmenter is None:
            segmenter = SamSegmenter.from_pretrained(device=model.device, dtype=compute_dtype)
        settings = read_model_settings(name_or_path, "clip_route", role="detector") or {}
        unknown = set(settings) - {"template", "background_texts", "distractors", "crop_views"}
        if unknown:
            raise ValueError(f"{name_or_path}: unknown clip_route settings {sorted(unknown)}")
        kwargs = {**settings, **kwargs}
        return cls(
            ClipScorer(model, tokenizer, image_processor, compute_dtype), segmenter, **kwargs
        )

    def encode_image(self, image: np.ndarray) -> ClipImageState:
        """Keep the image and prepare SAM's input; candidates are made on the first prompt."""
        return ClipImageState(image=image, segmenter_state=self.segmenter.encode_image(image))

    def candidates(self, state: ClipImageState) -> MaskCandidates:
        """SAM's deduplicated candidate regions of the image (computed once per image)."""
        if state.candidates is None:
            state.candidates = generate_candidates(
                self.segmenter, state.segmenter_state, self.auto_config
            )
            logger.info("%d candidate regions from SAM's point grid", len(state.candidates))
        return state.candidates

    def crop_embeddings(self, state: ClipImageState) -> torch.Tensor:
        """CLIP embeddings ``(N, D)`` of the candidates' crops (computed once per image): with
        ``crop_views`` > 1, the normalised mean over the crop's rotations."""
        if state.crop_embeddings is None:
            found = self.candidates(state)
            masks = found.masks if self.blank_background else None
            crops = crop_regions(state.image, found.xyxy, self.crop_margin, masks)
            if self.crop_views == 1:
                state.crop_embeddings = self.scorer.embed_images(crops)
            else:
                turns = [k * 4 // self.crop_views for k in range(self.crop_views)]  # quarter turns
                views = [
                    self.scorer.embed_images([np.ascontiguousarray(np.rot90(c, t)) for c in crops])
                    for t in turns
                ]
                mean = torch.stack(views).mean(dim=0)
                state.crop_embeddings = torch.nn.functional.normalize(mean, dim=-1)
        return state.crop_embeddings

    def competing_texts(self, prompt: Prompt) -> tuple[str, ...]:
        """The texts a crop may match instead of a class: distractor classes (those not in the
        prompt, templated) then the background texts."""
        others = tuple(self.template.format(d) for d in self.distractors if d not in prompt.classes)
        return others + self.background_texts

    def class_probabilities(self, state: ClipImageState, prompt: Prompt) -> torch.Tensor:
        """``(N, C + K)`` softmax over the prompt's C classes then the K competing texts."""
        texts = tuple(self.template.format(c) for c in prompt.classes)
        texts += self.competing_texts(prompt)
        if texts not in state.text_cache:
            state.text_cache[texts] = self.scorer.embed_texts(texts)
        similarity = self.crop_embeddings(state) @ state.text_cache[texts].T
        return torch.softmax(self.scorer.logit_scale * similarity, dim=-1)

    def propose(
        self,
        state: ClipImageState,
        prompt: Prompt,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        max_detections: int | None = None,
    ) -> Proposals:
        """Candidates whose best text is one of the prompt's classes with probability above
        ``box_threshold`` (``text_threshold`` is not used by this route), the
        ``max_detections`` best (``None``: all). Masks come along."""
        found = self.candidates(state)
        if len(found) == 0:
            return Proposals.empty()
        probs = self.class_probabilities(state, prompt)
        n_classes = len(prompt.classes)
        best_prob, best = probs.max(dim=-1)
        best_score = float(probs[:, :n_classes].max())  # the best any region gave a class
        keep = (best < n_classes) & (best_prob > box_threshold)
        if not bool(keep.any()):
            return Proposals.empty(best_score)
        index = torch.nonzero(keep).flatten()
        if self.nms_threshold is None:
            order = torch.argsort(best_prob[index], descending=True, stable=True)
        else:
            order = class_aware_nms(
                torch.from_numpy(found.xyxy[index.numpy()]),
                best_prob[index],
                best[index],
                self.nms_threshold,
            )
        index = index[order[:max_detections]].numpy()
        class_ids = best[index].numpy().astype(np.int64)
        return Proposals(
            xyxy=found.xyxy[index],
            scores=best_prob[index].numpy().astype(np.float32),
            class_ids=class_ids,
            phrases=[prompt.classes[i] for i in class_ids],
            masks=found.masks[index],
            mask_scores=found.scores[index],
            best_score=best_score,
        )

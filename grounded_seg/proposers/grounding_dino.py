"""Grounding DINO as a box proposer, on ``transformers.GroundingDinoForObjectDetection``.

The lecture's four stages and where they run in the transformers model:

1. backbones: ``model.model.backbone`` (Swin, multi-scale) and ``model.model.text_backbone`` (BERT);
2. feature enhancer: ``model.model.encoder.layers[i]`` (text self-attention, deformable image
   self-attention, bidirectional image<->text cross-attention, FFN);
3. language-guided query selection: top-k encoder tokens by best text-token score
   (``enc_outputs_class``) become the decoder queries;
4. cross-modality decoder: ``model.model.decoder.layers[i]`` (self-attention, image and text
   cross-attention, FFN), boxes refined layer by layer.

The image backbone does not depend on the text, so its output is computed once per image and
reused by every prompt (and every pass of a long prompt) on that image.
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
from ..boxes import (
    DEFAULT_NMS_THRESHOLD,
    class_aware_nms,
    normalized_cxcywh_to_pixels,
)
from ..checks import check_nms_threshold
from ..devices import ModelHolder, autocast, resolve_device, resolve_dtype
from ..preprocessing import grounding_dino_pixels
from ..prompts import Prompt, TextPass, class_scores, phrase_for, plan_text_passes
from .backbone_cache import backbone_cache, install_backbone_cache
from .base import Proposals
from .deformable import install_deformable_sampler
from .fusion import install_factored_fusion

logger = logging.getLogger(__name__)

# the model types this proposer runs and their transformers classes: MM-Grounding-DINO (an open
# re-training with a biased, scaled contrastive head and unshared decoder heads) has the same
# inputs and outputs
MODEL_CLASSES = {
    "grounding-dino": "GroundingDinoForObjectDetection",
    "mm-grounding-dino": "MMGroundingDinoForObjectDetection",
}


@dataclass
class GroundingDinoImageState:
    """One preprocessed image: model inputs, original size and the cached backbone output."""

    pixel_values: torch.Tensor  # (1, 3, h, w), model dtype, on the model's device
    pixel_mask: torch.Tensor  # (1, h, w)
    height: int  # original image size, pixels
    width: int
    backbone_cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class GroundingDinoBatch:
    """Several preprocessed images as one padded batch (made by ``GroundingDinoProposer.stack``).

    ``pixel_values`` ``(B, 3, h, w)``, zero-padded bottom and right to the largest image;
    ``pixel_mask`` ``(B, h, w)``, 1 over each image's own pixels; ``sizes`` the original
    ``(height, width)`` of each image, pixels; ``backbone_cache`` the batch's backbone output.
    """

    pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    sizes: list[tuple[int, int]]
    backbone_cache: dict[str, Any] = field(default_factory=dict)


def decode_pass(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    text_pass: TextPass,
    height: int,
    width: int,
    box_threshold: float,
    text_threshold: float,
    max_detections: int | None = None,
) -> Proposals:
    """Turn one pass's raw outputs into proposals in pixels of the original image.

    ``logits`` is ``(Q, T)`` (token logits, padding ``-inf``), ``boxes`` ``(Q, 4)`` normalised
    (cx, cy, w, h). A query is kept when its best token probability (over the whole caption, as
    the official implementation does) exceeds ``box_threshold``; that probability is its score.
    Its class is the class whose tokens score highest for it; its phrase the words of that class
    above ``text_threshold``. Class ids are those of the prompt (``text_pass.class_ids``).
    Only the ``max_detections`` best are decoded (``None``: all), so a pass never hands more
    than that to the merge, whatever the threshold.
    """
    probs = logits.float().sigmoid()
    scores = probs.max(dim=-1).values
    best_score = float(scores.max()) if scores.numel() else None
    keep = scores > box_threshold
    if not bool(keep.any()):
        return Proposals.empty(best_score)
    probs, scores = probs[keep], scores[keep]
    if max_detections is not None and len(scores) > max_detections:
        best = torch.argsort(scores, descending=True, stable=True)[:max_detections].sort().values
        probs, scores, boxes = probs[best], scores[best], boxes[keep][best]
    else:
        boxes = boxes[keep]
    local_class = class_scores(probs, text_pass).argmax(dim=-1)
    xyxy = normalized_cxcywh_to_pixels(boxes, height, width)
    order = torch.argsort(scores, descending=True, stable=True)
    class_map = torch.tensor(text_pass.class_ids, dtype=torch.long)
    phrases = [
        phrase_for(probs[i], text_pass, int(local_class[i]), text_threshold) for i in order.tolist()
    ]
    return Proposals(
        xyxy=xyxy[order].cpu().numpy().astype(np.float32),
        scores=scores[order].cpu().numpy().astype(np.float32),
        class_ids=class_map[local_class[order].cpu()].numpy().astype(np.int64),
        phrases=phrases,
        best_score=best_score,
    )


def merge_passes(
    parts: list[Proposals], nms_threshold: float | None, max_detections: int | None = None
) -> Proposals:
    """Merge the proposals of one or more passes: class-aware NMS at ``nms_threshold`` (``None``:
    none, the official output), sorted by score, the ``max_detections`` best kept (``None``:
    all). Passes hold disjoint classes, so the NMS removes duplicates *within* a pass: the
    decoder often returns one object twice with nearly the same box."""
    seen = [p.best_score for p in parts if p.best_score is not None]
    best_score = max(seen) if seen else None
    parts = [p for p in parts if len(p)]
    if not parts:
        return Proposals.empty(best_score)
    if len(parts) == 1 and nms_threshold is None:
        return parts[0].top(max_detections)
    xyxy = np.concatenate([p.xyxy for p in parts])
    scores = np.concatenate([p.scores for p in parts])
    class_ids = np.concatenate([p.class_ids for p in parts])
    phrases = [phrase for p in parts for phrase in p.phrases]
    if nms_threshold is None:
        keep = np.argsort(-scores, kind="stable")
    else:
        keep = class_aware_nms(
            torch.from_numpy(xyxy),
            torch.from_numpy(scores),
            torch.from_numpy(class_ids),
            nms_threshold,
        ).numpy()
    merged = Proposals(
        xyxy[keep], scores[keep], class_ids[keep], [phrases[i] for i in keep], best_score=best_score
    )
    return merged.top(max_detections)


class GroundingDinoProposer(ModelHolder):
    """Boxes from a text prompt with Grounding DINO.

    >>> proposer = GroundingDinoProposer.from_pretrained("grounding-dino-tiny")  # doctest: +SKIP
    >>> state = proposer.encode_image(rgb)                                        # doctest: +SKIP
    >>> found = proposer.propose(state, normalize_prompt("cat. dog."))        # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        image_processor: Any,
        nms_threshold: float | None = DEFAULT_NMS_THRESHOLD,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        self.model = model
        # None: the weights' own dtype; bfloat16/float16: forward passes under autocast
        self.compute_dtype = None if dtype is None else resolve_dtype(dtype, self.device)
        self.tokenizer = tokenizer
        # a fast tokenizer keeps its padding and truncation settings in state that every call
        # sets: calls from several threads must take turns (see ClipScorer.embed_texts)
        self._tokenizer_lock = threading.Lock()
        self.image_processor = image_processor
        # class-aware NMS within each pass (None: the official output, duplicates and all)
        self.nms_threshold = check_nms_threshold(nms_threshold)
        self.max_text_len = int(model.config.max_text_len)
        # a leaner deformable-attention kernel, float32 under half precision (see .deformable),
        # and the image<->text attention re-associated through the text side (see .fusion):
        # the same outputs up to float32 rounding, the same state dict
        install_deformable_sampler(model)
        install_factored_fusion(model)
        # the image backbone's output reused by every prompt on an image, through a cache
        # that travels with each call (see .backbone_cache): safe when threads share the model
        install_backbone_cache(model)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "grounding-dino-tiny",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        nms_threshold: float | None = DEFAULT_NMS_THRESHOLD,
    ) -> GroundingDinoProposer:
        """Load a registry name or a local folder (strict weights, clear errors): Grounding DINO
        or MM-Grounding-DINO, whichever the folder's ``config.json`` holds.

        ``dtype`` bfloat16/float16 is the opt-in fast path: float32 weights, forward passes under
        autocast (see ``grounded_seg.devices.resolve_dtype`` for where each is allowed).
        """
        compute_dtype = resolve_dtype(dtype, resolve_device(device), warn=False)
        model, parts = load_pretrained(
            name_or_path,
            "detector",
            tuple(MODEL_CLASSES),
            MODEL_CLASSES,
            {"tokenizer": "AutoTokenizer", "image_processor": "AutoImageProcessor"},
            device,
        )
        tokenizer, image_processor = parts["tokenizer"], parts["image_processor"]
        return cls(
            model, tokenizer, image_processor, nms_threshold=nms_threshold, dtype=compute_dtype
        )

    def encode_image(self, image: np.ndarray) -> GroundingDinoImageState:
        """Resize and normalise an RGB uint8 ``(H, W, 3)`` image as GroundingDINO does (short side
        to the processor's ``shortest_edge``, e.g. 800, long side at most ``longest_edge``)."""
        size = self.image_processor.size
        pixels = grounding_dino_pixels(
            image,
            shortest=int(size["shortest_edge"]),
            longest=int(size["longest_edge"]),
            mean=self.image_processor.image_mean,
            std=self.image_processor.image_std,
        )
        return GroundingDinoImageState(
            pixel_values=pixels.to(self.device, self.dtype),
            pixel_mask=torch.ones(
                pixels.shape[:1] + pixels.shape[2:], dtype=torch.long, device=self.device
            ),
            height=int(image.shape[0]),
            width=int(image.shape[1]),
        )

    def text_passes(self, prompt: Prompt) -> list[TextPass]:
        """The passes the prompt needs (one unless it exceeds the text encoder's window)."""
        with self._tokenizer_lock:
            return plan_text_passes(prompt, self.tokenizer, self.max_text_len)

    @torch.inference_mode()
    def forward_pass(
        self, state: GroundingDinoImageState, text_pass: TextPass
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model for one pass: ``(Q, T)`` token logits and ``(Q, 4)`` normalised boxes."""
        logits, boxes = self._forward(
            state.pixel_values, state.pixel_mask, state.backbone_cache, text_pass
        )
        return logits[0], boxes[0]

    @torch.inference_mode()
    def _forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor,
        cache: dict[str, Any],
        text_pass: TextPass,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, Q, T)`` float32 logits and ``(B, Q, 4)`` boxes for ``B`` images and one pass
        (the same text for every image). Boxes are normalised to each image's valid region
        (transformers scales proposals and reference points by ``pixel_mask``'s valid ratios),
        so padding does not move them."""
        batch = pixel_values.shape[0]
        input_ids = torch.tensor([text_pass.input_ids], device=self.device).expand(batch, -1)
        with backbone_cache(cache), autocast(self.device, self.compute_dtype):
            outputs = self.model(
                pixel_values=pixel_values,
                pixel_mask=pixel_mask,
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                token_type_ids=torch.zeros_like(input_ids),
            )
        return outputs.logits.float(), outputs.pred_boxes.float()

    def propose(
        self,
        state: GroundingDinoImageState,
        prompt: Prompt,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        max_detections: int | None = None,
    ) -> Proposals:
        """Boxes for ``prompt``; several passes for a long prompt, merged with class-aware NMS;
        at most ``max_detections`` per pass and in all (``None``: no cap)."""
        batch = self.stack([state])  # a batch of one, with the image's own backbone cache
        return self.propose_batch(batch, prompt, box_threshold, text_threshold, max_detections)[0]

    def stack(self, states: Sequence[GroundingDinoImageState]) -> GroundingDinoBatch:
        """Several preprocessed images as one batch: pixels zero-padded at the bottom and right
        to the largest ``(h, w)``, ``pixel_mask`` 0 over the padding (as transformers' image
        processor batches them). Images of one size are stacked as they are."""
        if not states:
            raise ValueError("states: expected at least one image state, got none")
        if len(states) == 1:
            only = states[0]
            return GroundingDinoBatch(  # the image's own cache: its other prompts reuse it
                only.pixel_values, only.pixel_mask, [(only.height, only.width)], only.backbone_cache
            )
        sizes = [(s.height, s.width) for s in states]
        if len({s.pixel_values.shape for s in states}) == 1:  # one size: no padding
            pixels = torch.cat([s.pixel_values for s in states])
            return GroundingDinoBatch(pixels, torch.cat([s.pixel_mask for s in states]), sizes, {})
        height = max(s.pixel_values.shape[-2] for s in states)
        width = max(s.pixel_values.shape[-1] for s in states)
        first = states[0].pixel_values
        pixels = first.new_zeros((len(states), first.shape[1], height, width))
        mask = states[0].pixel_mask.new_zeros((len(states), height, width))
        for i, state in enumerate(states):
            h, w = state.pixel_values.shape[-2:]
            pixels[i, :, :h, :w] = state.pixel_values[0]
            mask[i, :h, :w] = state.pixel_mask[0]
        return GroundingDinoBatch(pixels, mask, sizes, {})

    def propose_batch(
        self,
        batch: GroundingDinoBatch | Sequence[GroundingDinoImageState],
        prompt: Prompt,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        max_detections: int | None = None,
    ) -> list[Proposals]:
        """:meth:`propose` for several images at once: one forward pass per text pass for the
        whole batch (the prompt is tokenised and planned once). Returns one ``Proposals`` per
        image, in order. ``batch`` is :meth:`stack`'s result or the images' states."""
        if not isinstance(batch, GroundingDinoBatch):
            batch = self.stack(list(batch))
        passes = self.text_passes(prompt)
        unknown = self.unknown_words(passes)
        if unknown:
            logger.info(
                "the detector's vocabulary has no tokens for %s: it reads them as unknown and "
                "cannot ground them", ", ".join(repr(w) for w in unknown)
            )  # fmt: skip
        parts: list[list[Proposals]] = [[] for _ in batch.sizes]
        for text_pass in passes:
            logits, boxes = self._forward(
                batch.pixel_values, batch.pixel_mask, batch.backbone_cache, text_pass
            )
            for i, (height, width) in enumerate(batch.sizes):
                parts[i].append(
                    decode_pass(
                        logits[i],
                        boxes[i],
                        text_pass,
                        height,
                        width,
                        box_threshold,
                        text_threshold,
                        max_detections,
                    )
                )
        merged = [merge_passes(p, self.nms_threshold, max_detections) for p in parts]
        for proposals in merged:
            proposals.unknown_words = unknown
        return merged

    def unknown_words(self, passes: list[TextPass]) -> tuple[str, ...]:
        """Words of the prompt the text encoder has no token for: read as the unknown token, or
        spelled out letter by letter (a compact vocabulary like shapes-gdino's keeps letters
        so that any word tokenises; the model never saw such words). Real BERT spells out only
        strings it has no piece for either."""
        unk = getattr(self.tokenizer, "unk_token_id", None)
        words = []
        for text_pass in passes:
            for word in text_pass.words:
                ids = list(text_pass.input_ids[word.start : word.end])
                pieces = self.tokenizer.convert_ids_to_tokens(ids)
                spelled = word.char_end - word.char_start > 1 and all(
                    len(piece.removeprefix("##")) == 1 for piece in pieces
                )
                if unk in ids or spelled:
                    words.append(text_pass.caption[word.char_start : word.char_end])
        return tuple(dict.fromkeys(words))

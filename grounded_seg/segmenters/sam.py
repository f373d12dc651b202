"""SAM as the mask segmenter, on ``transformers.SamModel``.

The image encoder runs once per image (lazily, on the first boxes); every box of a prompt goes
to the mask decoder in one call; low-resolution mask logits are resized back to the original
image by the SAM image processor's own ``post_process_masks``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._loading import load_pretrained
from ..devices import ModelHolder, resolve_device, resolve_dtype
from ..errors import InvalidWeightsError
from ..preprocessing import sam_pixels
from ..registry import resolve_model
from .rel_pos import contiguous_rel_pos

logger = logging.getLogger(__name__)


@dataclass
class SamImageState:
    """One preprocessed image and, once computed, its embedding."""

    pixel_values: torch.Tensor  # (1, 3, 1024, 1024): resized longest side, normalised, padded
    original_size: tuple[int, int]  # (H, W) of the original image, pixels
    reshaped_size: tuple[int, int]  # (h, w) after resizing, before padding
    embeddings: torch.Tensor | None = None  # (1, C, 64, 64) for the standard SAM


SETTINGS_FILE = "grounded_seg.json"


def read_model_settings(
    name_or_path: str | os.PathLike, key: str, role: str = "segmenter"
) -> dict | None:
    """``key`` of the model folder's ``grounded_seg.json`` (settings calibrated for that model,
    e.g. the automatic mode's filters for a small SAM), or ``None`` when there is none."""
    source = resolve_model(name_or_path, role)
    path = source.local_dir / SETTINGS_FILE if source.local_dir else None
    if path is None or not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InvalidWeightsError(f"{path}: not valid JSON: {err}") from err
    value = settings.get(key)
    if value is not None and not isinstance(value, dict):
        raise InvalidWeightsError(f"{path}: {key!r} must be an object, got {type(value).__name__}")
    return value


def scale_boxes(
    boxes_xyxy: np.ndarray, original_size: tuple[int, int], reshaped_size: tuple[int, int]
) -> np.ndarray:
    """Map ``(N, 4)`` xyxy boxes from original-image pixels to the resized SAM input's pixels.

    ``original_size`` and ``reshaped_size`` are ``(height, width)``. x scales by ``w / W``, y by
    ``h / H``, as segment-anything's ``ResizeLongestSide.apply_boxes`` does.
    """
    (height, width), (new_h, new_w) = original_size, reshaped_size
    scale = np.array([new_w / width, new_h / height, new_w / width, new_h / height])
    return (np.asarray(boxes_xyxy, dtype=np.float64) * scale).astype(np.float32)


class SamSegmenter(ModelHolder):
    """Box-prompted masks with SAM.

    >>> segmenter = SamSegmenter.from_pretrained("sam-vit-base")          # doctest: +SKIP
    >>> state = segmenter.encode_image(rgb)                               # doctest: +SKIP
    >>> masks, scores = segmenter.segment(state, np.array([[10, 20, 200, 240]]))  # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        image_processor: Any,
        auto_mask: dict | None = None,
        boxes_per_call: int = 64,
        dtype: str | torch.dtype | None = None,
        compile: bool = False,
    ) -> None:
        if not isinstance(boxes_per_call, int) or boxes_per_call < 1:
            raise ValueError(f"boxes_per_call: expected an int >= 1, got {boxes_per_call!r}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile: expected True or False, got {compile!r}")
        self.model = model
        self.image_processor = image_processor
        self.compiled = compile
        if compile:
            # opt-in: torch.compile the image encoder (the one fixed-shape, heavy stage), as
            # segment-anything-fast does; in place, so the state dict keeps its names. The
            # compiled graph lays out the relative-position bias itself.
            vision_encoder = getattr(model, "vision_encoder", None)
            if not isinstance(vision_encoder, torch.nn.Module):
                raise TypeError(
                    "compile: expected a SamModel with a vision_encoder, got "
                    f"{type(model).__name__}"
                )
            vision_encoder.compile(dynamic=False)
        else:
            contiguous_rel_pos(model)  # the same bias, built without a second copy (see .rel_pos)
        # None: the weights' own dtype; bfloat16/float16: forward passes under autocast
        self.compute_dtype = None if dtype is None else resolve_dtype(dtype, self.device)
        # the mask decoder runs on a copy of the image embedding per box ((N, 256, 64, 64) for
        # N boxes, ~4 MB each in fp32): more boxes than this go through it in several calls
        self.boxes_per_call = boxes_per_call
        # automatic-mode filters calibrated for this model (None: segment-anything's defaults)
        self.auto_mask = dict(auto_mask or {})
        self.encoder_calls = 0  # how many images were embedded; lets callers check the cache

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "sam-vit-base",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        compile: bool = False,
    ) -> SamSegmenter:
        """Load a registry name or a local folder (strict weights, clear errors).

        ``dtype`` bfloat16/float16 is the opt-in fast path: float32 weights, forward passes under
        autocast. ``compile=True`` runs the image encoder through ``torch.compile`` (inductor:
        a C++ compiler on the CPU, triton on CUDA): the first image pays the compilation (30-45 s
        for SAM-B on 2 CPU threads with a cold inductor cache), later images run faster where
        inductor helps. SAM-B encoder on 2 CPU threads (``benchmarks/compile_sam.py``):
        bfloat16 2.05 -> 1.77 s (1.16x); float32 no gain. Not yet measured on CUDA.
        """
        compute_dtype = resolve_dtype(dtype, resolve_device(device), warn=False)
        model, parts = load_pretrained(
            name_or_path,
            "segmenter",
            "sam",
            "SamModel",
            {"image_processor": "AutoImageProcessor"},
            device,
        )
        image_processor = parts["image_processor"]
        return cls(
            model,
            image_processor,
            auto_mask=read_model_settings(name_or_path, "auto_mask"),
            dtype=compute_dtype,
            compile=compile,
        )

    def encode_image(self, image: np.ndarray) -> SamImageState:
        """Preprocess an RGB uint8 ``(H, W, 3)`` image as segment-anything does (long side to the
        processor's ``longest_edge``, normalised, zero-padded); the embedding comes on first use."""
        processor = self.image_processor
        pixels, reshaped = sam_pixels(
            image,
            long_side=int(processor.size["longest_edge"]),
            pad_to=int(processor.pad_size["height"]),
            mean=processor.image_mean,
            std=processor.image_std,
        )
        return SamImageState(
            pixel_values=pixels.to(self.device, self.dtype),
            original_size=(int(image.shape[0]), int(image.shape[1])),
            reshaped_size=reshaped,
        )

    @torch.inference_mode()
    def image_embeddings(self, state: SamImageState) -> torch.Tensor:
        """The image embedding, computed once per state."""
        if state.embeddings is None:
            with self.autocast():
                state.embeddings = self.model.get_image_embeddings(state.pixel_values)
            self.encoder_calls += 1
        return state.embeddings

    @torch.inference_mode()
    def embed_batch(self, states: Sequence[SamImageState]) -> None:
        """Embed the images of ``states`` that have no embedding yet in one encoder call.

        All SAM inputs are ``(3, 1024, 1024)`` (resized and zero-padded), so a batch needs no
        extra padding and each image's embedding equals its own call's up to float rounding.
        With ``compile=True`` each new batch size compiles once more.
        """
        todo = [state for state in states if state.embeddings is None]
        if not todo:
            return
        pixels = torch.cat([state.pixel_values for state in todo])
        with self.autocast():
            embeddings = self.model.get_image_embeddings(pixels)
        for i, state in enumerate(todo):
            state.embeddings = embeddings[i : i + 1]
        self.encoder_calls += len(todo)

    @torch.inference_mode()
    def segment(
        self, state: SamImageState, boxes_xyxy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One mask per box, up to ``boxes_per_call`` boxes in one decoder call.

        ``boxes_xyxy`` is ``(N, 4)`` in pixels of the original image. Returns bool masks
        ``(N, H, W)`` at the original size and SAM's predicted IoU per mask, clipped to [0, 1].
        """
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        height, width = state.original_size
        if len(boxes) == 0:
            return np.zeros((0, height, width), bool), np.zeros(0, np.float32)
        embeddings = self.image_embeddings(state)
        input_boxes = torch.from_numpy(scale_boxes(boxes, state.original_size, state.reshaped_size))
        # the result is filled in place: a list of chunks joined at the end held every mask twice
        masks = np.zeros((len(boxes), height, width), bool)
        scores = np.zeros(len(boxes), np.float32)
        for start in range(0, len(input_boxes), self.boxes_per_call):
            stop = min(start + self.boxes_per_call, len(input_boxes))
            with self.autocast():
                outputs = self.model(
                    image_embeddings=embeddings,
                    input_boxes=input_boxes[None, start:stop].to(self.device, self.dtype),
                    multimask_output=False,
                )
            self.upscale_masks(outputs.pred_masks[0, :, 0], state, out=masks[start:stop])
            scores[start:stop] = outputs.iou_scores[0, :, 0].float().clamp(0, 1).cpu().numpy()
        return masks, scores

    def upscale_masks(
        self,
        low_res_logits: torch.Tensor,
        state: SamImageState,
        out: np.ndarray | None = None,
        budget_bytes: int = 256 * 2**20,
    ) -> np.ndarray:
        """Low-res mask logits ``(N, h, w)`` -> bool masks ``(N, H, W)`` at the original size.

        Uses the SAM image processor's own ``post_process_masks`` (upsample to the padded input,
        crop the padding, resize to the original, threshold at 0) on as many masks at a time as
        keep its float32 intermediates within ``budget_bytes`` (at 4000 x 3000 that is a few
        masks; at most 16). Writes into ``out`` when given.
        """
        height, width = state.original_size
        if out is None:
            out = np.zeros((len(low_res_logits), height, width), bool)
        padded = int(self.image_processor.pad_size["height"]) * int(
            self.image_processor.pad_size["width"]
        )
        per_mask = 4 * (2 * padded + 2 * height * width)  # float32 upsampled, cropped, resized
        chunk = max(1, min(16, budget_bytes // per_mask))
        for start in range(0, len(low_res_logits), chunk):
            part = low_res_logits[start : start + chunk].float().cpu()
            masks = self.image_processor.post_process_masks(
                part[None, :, None],
                original_sizes=[state.original_size],
                reshaped_input_sizes=[state.reshaped_size],
                binarize=True,
            )[0]  # (n, 1, H, W)
            out[start : start + len(part)] = masks[:, 0].numpy()
        return out

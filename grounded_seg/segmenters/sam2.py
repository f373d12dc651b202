"""SAM 2.1 as the mask segmenter, on ``transformers.Sam2Model``, answering as the official
``SAM2ImagePredictor`` does.

The official image path (``sam2/sam2_image_predictor.py``), followed step by step:

* ``set_image``: the RGB image goes to [0, 1] (``/ 255``), is resized to ``S x S`` (1024 for the
  official models) *without* keeping its aspect ratio (bilinear, antialiased, on float32), and
  normalised with the ImageNet mean and std; no padding. The image encoder gives three feature
  maps: two high-resolution ones (strides 4 and 8, already projected by the decoder's
  ``conv_s0`` / ``conv_s1``) and the image embedding (stride 16, plus the no-memory token's
  embedding). All three are cached in the state.
* ``predict(box=..., normalize_coords=True)``: an ``(N, 4)`` xyxy box in original pixels becomes
  ``box / (W, H, W, H) * S`` (x and y scale apart, since the resize did not keep the aspect);
  all boxes go through the decoder in one call.
* ``multimask_output=False``: ``build_sam2`` builds the predictor's decoder with
  ``dynamic_multimask_via_stability`` on (delta 0.05, threshold 0.98): the single-mask token's
  mask is returned unless its stability score is below 0.98, then the best-scored of the three
  multimask outputs is. ``Sam2MaskDecoder`` implements the same rule, on by default, and the
  folders converted from official checkpoints record it, so ``multimask_output=False`` here *is*
  the official single-mask choice (checked by ``tests/test_sam2_parity.py``).
* The ``(N, 1, S/4, S/4)`` low-resolution logits are upsampled bilinearly straight to the original
  ``(H, W)`` (no padding to crop) and thresholded at 0; hole filling and sprinkle removal are off
  in the official predictor's defaults and here.

Preprocessing runs here, from the model folder's ``preprocessor_config.json`` (size, mean, std),
not through transformers' ``Sam2ImageProcessor``: that class needs torchvision, which
grounded_seg does not depend on, and resizes uint8 pixels, not the official float32 ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from .._loading import load_pretrained
from ..devices import ModelHolder, resolve_device, resolve_dtype
from ..errors import InvalidWeightsError
from ..preprocessing import _check_rgb

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sam2Preprocessor:
    """The official SAM 2 input transform: ``S x S`` resize, ``/ 255``, ImageNet normalisation.

    Read from a model folder's (or hub id's) ``preprocessor_config.json`` by ``from_pretrained``.
    """

    size: int = 1024  # S: the square side every image is resized to, pixels
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # for [0, 1] pixels
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    rescale_factor: float = 1 / 255

    @classmethod
    def from_pretrained(cls, location: str | os.PathLike, **kwargs: Any) -> Sam2Preprocessor:
        """Read ``preprocessor_config.json`` (``kwargs``: transformers' ``local_files_only``,
        ``revision``...). ``ValueError`` for a config that is not a SAM 2 one."""
        from transformers.image_processing_base import ImageProcessingMixin

        kwargs.pop("trust_remote_code", None)  # nothing here runs code from the folder
        config, _ = ImageProcessingMixin.get_image_processor_dict(location, **kwargs)
        kind = str(config.get("image_processor_type", ""))
        if not kind.startswith("Sam2"):
            raise ValueError(f"expected a Sam2ImageProcessor config, got {kind or 'no type'!r}")
        for flag in ("do_resize", "do_rescale", "do_normalize"):
            if config.get(flag) is False:
                raise ValueError(f"{flag}: expected true (the official SAM 2 transform), got false")
        size = config.get("size") or {"height": 1024, "width": 1024}
        if not isinstance(size, dict) or size.get("height") != size.get("width"):
            raise ValueError(f"size: expected a square {{'height': S, 'width': S}}, got {size!r}")
        return cls(
            size=int(size["height"]),
            image_mean=tuple(float(m) for m in config.get("image_mean", cls.image_mean)),
            image_std=tuple(float(s) for s in config.get("image_std", cls.image_std)),
            rescale_factor=float(config.get("rescale_factor", cls.rescale_factor)),
        )

    def pixels(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 ``(H, W, 3)`` -> float32 ``(1, 3, S, S)``, as ``SAM2Transforms`` computes it
        (``ToTensor``, ``Resize((S, S))`` with antialiasing, ``Normalize``), bit for bit."""
        _check_rgb(image)
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        x = x.div(1.0 / self.rescale_factor)[None]
        if x.shape[-2:] != (self.size, self.size):
            size = (self.size, self.size)
            x = functional.interpolate(
                x, size=size, mode="bilinear", align_corners=False, antialias=True
            )
        mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.image_std, dtype=torch.float32)[:, None, None]
        return (x - mean) / std


@dataclass
class Sam2ImageState:
    """One preprocessed image and, once computed, its three feature maps."""

    pixel_values: torch.Tensor  # (1, 3, S, S): resized without keeping the aspect, normalised
    original_size: tuple[int, int]  # (H, W) of the original image, pixels
    # [(1, C/8, S/4, S/4), (1, C/4, S/8, S/8), (1, C, S/16, S/16)]: the two high-resolution maps
    # the mask decoder adds while upscaling, then the image embedding; None until computed
    features: list[torch.Tensor] | None = None

    @property
    def embeddings(self) -> torch.Tensor | None:
        return None if self.features is None else self.features[-1]


def scale_boxes(boxes_xyxy: np.ndarray, original_size: tuple[int, int], size: int) -> torch.Tensor:
    """``(N, 4)`` xyxy boxes in original pixels -> float32 boxes in the ``size x size`` input.

    x is divided by the width W and y by the height H, then both multiplied by ``size``, in
    float32 and in that order, as ``SAM2Transforms.transform_boxes(normalize=True)`` does.
    """
    height, width = original_size
    # a copy: the caller's array may be a view with negative strides (boxes[::-1])
    coords = torch.tensor(np.array(boxes_xyxy, np.float32)).reshape(-1, 2, 2)
    coords[..., 0] = coords[..., 0] / width
    coords[..., 1] = coords[..., 1] / height
    return (coords * size).reshape(-1, 4)


def check_boxes(boxes_xyxy: Any) -> np.ndarray:
    """``(N, 4)`` finite xyxy boxes with ``x2 >= x1`` and ``y2 >= y1`` as float32; ``ValueError``
    (or ``TypeError`` for non-numbers) saying what came otherwise. An empty list is ``(0, 4)``."""
    try:
        boxes = np.asarray(boxes_xyxy, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(f"boxes_xyxy: expected an (N, 4) array of numbers, got {err}") from err
    if boxes.size == 0:
        return np.zeros((0, 4), np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes_xyxy: expected shape (N, 4), got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes_xyxy: expected finite coordinates, got NaN or inf")
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        raise ValueError(
            f"boxes_xyxy: expected x1 <= x2 and y1 <= y2 (xyxy order), got {boxes[bad][0].tolist()}"
        )
    return boxes


class Sam2Segmenter(ModelHolder):
    """Box-prompted masks with SAM 2.1, as the official ``SAM2ImagePredictor``.

    >>> segmenter = Sam2Segmenter.from_pretrained("sam2.1-hiera-tiny")    # doctest: +SKIP
    >>> state = segmenter.encode_image(rgb)                               # doctest: +SKIP
    >>> masks, scores = segmenter.segment(state, np.array([[10, 20, 200, 240]]))  # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        image_processor: Sam2Preprocessor,
        boxes_per_call: int = 64,
        dtype: str | torch.dtype | None = None,
        compile: bool = False,
    ) -> None:
        if not isinstance(boxes_per_call, int) or boxes_per_call < 1:
            raise ValueError(f"boxes_per_call: expected an int >= 1, got {boxes_per_call!r}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile: expected True or False, got {compile!r}")
        if not isinstance(image_processor, Sam2Preprocessor):
            raise TypeError(
                "image_processor: expected a Sam2Preprocessor, got "
                f"{type(image_processor).__name__}"
            )
        expected = int(model.config.prompt_encoder_config.image_size)
        if image_processor.size != expected:
            raise InvalidWeightsError(
                f"SAM 2 preprocessor size: expected the model's input side {expected}, got "
                f"{image_processor.size}"
            )
        self.model = model
        self.image_processor = image_processor
        self.compiled = compile
        if compile:  # opt-in, as SamSegmenter: the fixed-shape image encoder, in place
            model.vision_encoder.compile(dynamic=False)
        self.compute_dtype = None if dtype is None else resolve_dtype(dtype, self.device)
        # the decoder runs on a copy of the image embedding per box: more boxes than this go
        # through it in several calls
        self.boxes_per_call = boxes_per_call
        self.encoder_calls = 0  # how many images were embedded; lets callers check the cache

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "sam2.1-hiera-tiny",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        compile: bool = False,
    ) -> Sam2Segmenter:
        """Load a registry name, a model folder, a hub id or an official ``sam2.1_*.pt`` (converted
        once and cached), strictly. ``dtype`` bfloat16/float16: float32 weights, forward passes
        under autocast; ``compile=True``: the image encoder through ``torch.compile``."""
        compute_dtype = resolve_dtype(dtype, resolve_device(device), warn=False)
        model, parts = load_pretrained(
            name_or_path,
            "segmenter",
            "sam2",
            "Sam2Model",
            {"image_processor": Sam2Preprocessor},
            device,
        )
        return cls(model, parts["image_processor"], dtype=compute_dtype, compile=compile)

    def encode_image(self, image: np.ndarray) -> Sam2ImageState:
        """Preprocess an RGB uint8 ``(H, W, 3)`` image (cheap); the features come on first use."""
        pixels = self.image_processor.pixels(image)
        return Sam2ImageState(
            pixel_values=pixels.to(self.device, self.dtype),
            original_size=(int(image.shape[0]), int(image.shape[1])),
        )

    @torch.inference_mode()
    def features(self, state: Sam2ImageState) -> list[torch.Tensor]:
        """The three feature maps of the image (see :class:`Sam2ImageState`), computed once."""
        if state.features is None:
            with self.autocast():
                state.features = list(self.model.get_image_embeddings(state.pixel_values))
            self.encoder_calls += 1
        return state.features

    def image_embeddings(self, state: Sam2ImageState) -> torch.Tensor:
        """The image embedding ``(1, C, S/16, S/16)`` (256 x 64 x 64 for the official models)."""
        return self.features(state)[-1]

    @torch.inference_mode()
    def embed_batch(self, states: Sequence[Sam2ImageState]) -> None:
        """Embed the images of ``states`` that have no features yet in one encoder call (every
        input is ``(3, S, S)``, so a batch needs no padding)."""
        todo = [state for state in states if state.features is None]
        if not todo:
            return
        pixels = torch.cat([state.pixel_values for state in todo])
        with self.autocast():
            maps = self.model.get_image_embeddings(pixels)
        for i, state in enumerate(todo):
            state.features = [level[i : i + 1] for level in maps]
        self.encoder_calls += len(todo)

    @torch.inference_mode()
    def low_res_logits(
        self, state: Sam2ImageState, boxes_xyxy: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder outputs for ``(N, 4)`` xyxy boxes in original pixels: float32 low-res mask logits
        ``(N, S/4, S/4)`` and predicted IoU ``(N,)``, up to ``boxes_per_call`` boxes a call."""
        boxes = check_boxes(boxes_xyxy)
        side = self.image_processor.size // 4
        if len(boxes) == 0:
            return torch.zeros(0, side, side), torch.zeros(0)
        features = self.features(state)
        input_boxes = scale_boxes(boxes, state.original_size, self.image_processor.size)
        logits, scores = [], []
        for start in range(0, len(input_boxes), self.boxes_per_call):
            chunk = input_boxes[None, start : start + self.boxes_per_call]
            with self.autocast():
                out = self.model(
                    image_embeddings=features,
                    input_boxes=chunk.to(self.device, self.dtype),
                    multimask_output=False,  # the official single-mask choice (module docstring)
                )
            logits.append(out.pred_masks[0, :, 0].float().cpu())
            scores.append(out.iou_scores[0, :, 0].float().cpu())
        return torch.cat(logits), torch.cat(scores)

    def segment(
        self, state: Sam2ImageState, boxes_xyxy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One mask per box. ``boxes_xyxy`` is ``(N, 4)`` in pixels of the original image.

        Returns bool masks ``(N, H, W)`` at the original size and the predicted IoU per mask in
        [0, 1]. ``ValueError`` for boxes that are not ``(N, 4)``, finite, x1 <= x2, y1 <= y2.
        """
        height, width = state.original_size
        logits, scores = self.low_res_logits(state, boxes_xyxy)
        if len(logits) == 0:
            return np.zeros((0, height, width), bool), np.zeros(0, np.float32)
        return self.upscale_masks(logits, state), scores.clamp(0, 1).numpy()

    def upscale_masks(
        self,
        low_res_logits: torch.Tensor,
        state: Sam2ImageState,
        out: np.ndarray | None = None,
        budget_bytes: int = 256 * 2**20,
    ) -> np.ndarray:
        """Low-res logits ``(N, h, w)`` -> bool masks ``(N, H, W)``: bilinear upsampling straight
        to the original size, then ``> 0`` (``SAM2Transforms.postprocess_masks``), as many masks
        at a time as keep the float32 intermediate within ``budget_bytes`` (at most 16)."""
        height, width = state.original_size
        if out is None:
            out = np.zeros((len(low_res_logits), height, width), bool)
        chunk = max(1, min(16, budget_bytes // (4 * height * width)))
        for start in range(0, len(low_res_logits), chunk):
            part = low_res_logits[start : start + chunk].float().cpu()[:, None]
            up = functional.interpolate(part, (height, width), mode="bilinear", align_corners=False)
            out[start : start + len(part)] = (up[:, 0] > 0).numpy()
        return out

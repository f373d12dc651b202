"""SAM-HQ as the mask segmenter, on ``transformers.SamHQModel``.

SAM-HQ (Ke et al., "Segment Anything in High Quality", NeurIPS 2023) is SAM with one more output
token in the mask decoder. That token's mask is computed on an HQ feature map made from two
images of the scene: the image embedding (the ViT's final output after the neck) and the output
of the ViT's *first global-attention block* (an early feature, finer edges). So the per-image
cache keeps both: :class:`SamHQImageState` adds that early feature (``(1, 64, 64, C)``: 12.6 MB
in float32 for ViT-B, 21 MB for ViT-H, beside the 4 MB embedding) to SAM's state; the other
global blocks' outputs, which transformers also returns, are used by neither implementation and
are not kept.

Everything else is SAM's (:class:`~.sam.SamSegmenter`): the same preprocessing, box scaling,
one decoder call for many boxes, and the image processor's ``post_process_masks``.

``hq_token_only``: the official ``segment_anything_hq.SamPredictor.predict`` and
``predict_torch`` default to ``False``, as does ``SamHQModel.forward``: with
``multimask_output=False`` the returned logits are SAM's single-mask output *plus* the HQ token's
mask. That default is kept here; ``hq_token_only=True`` returns the HQ token's mask alone. The
score is SAM's predicted IoU of its single mask in both cases (the HQ token has no IoU head), as
officially.

**The mask decoder runs through :func:`decode_boxes`, not ``SamHQModel.forward``.** In
transformers 4.57 and 5.x, ``SamHQMaskDecoder.forward`` drops the image tokens its two-way
transformer returns (``point_embedding, iou_token_out = self.transformer(...)``, then overwritten)
and upscales the image embedding as it was *before* the transformer, with height and width swapped
(``transpose(2, 3)`` on an ``(N, C, h, w)`` tensor). Its masks are then not SAM-HQ's: on the
official ViT-B with random weights the low-res logits differ from the official predictor's by up
to 1.5 (tests/test_sam_hq_parity.py). :func:`decode_boxes` runs the same transformers submodules
(prompt encoder, two-way transformer, convolutions, MLPs; no weights or layers of its own) in the
official order, and matches the official outputs to float rounding. The image encoder is
transformers' own (``get_image_embeddings``).

SAM's automatic mode (its point grid, which the CLIP route uses) is refused for SAM-HQ: see
:attr:`SamHQSegmenter.auto_mask`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from .._loading import load_pretrained
from ..devices import resolve_device, resolve_dtype
from .sam import SamImageState, SamSegmenter, scale_boxes

logger = logging.getLogger(__name__)

# The HQ path keeps several (N, 32..64, 256, 256) float32 maps per box besides SAM's (~40 MB per
# box for the 256-wide decoder, about three times SAM's), so fewer boxes share one decoder call.
DEFAULT_BOXES_PER_CALL = 16

AUTO_MASK_REFUSAL = (
    "SamHQSegmenter has no automatic mask mode (SAM's point grid, used by the CLIP route): its "
    "decoder calls would leave out the early ViT feature the HQ token needs, and for three masks "
    "per point transformers' SamHQModel adds the HQ mask to each where the official SAM-HQ keeps "
    "the best one. Use a SAM segmenter (e.g. 'sam-vit-base') for the automatic mode"
)


def _conv_stack(
    conv1: torch.nn.Module, norm: torch.nn.Module, conv2: torch.nn.Module, x: torch.Tensor
) -> torch.Tensor:
    """``conv2(gelu(norm(conv1(x))))``: the three HQ feature blocks (official ``nn.Sequential``
    of a (transposed) convolution, LayerNorm2d, GELU, convolution)."""
    return conv2(torch.nn.functional.gelu(norm(conv1(x))))


def decode_boxes(
    model: torch.nn.Module,
    image_embeddings: torch.Tensor,
    vit_features: torch.Tensor | None,
    input_boxes: torch.Tensor,
    hq_token_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM-HQ's single-mask output for box prompts on one image, as the official
    ``MaskDecoderHQ`` computes it, from the submodules of a transformers ``SamHQModel``.

    ``image_embeddings`` ``(1, C, h, w)``; ``vit_features`` ``(1, h, w, C_vit)`` (the first
    global-attention block's output, channels last; ``None`` leaves that term out, as
    transformers does); ``input_boxes`` ``(1, N, 4)`` xyxy in pixels of the resized (and padded)
    model input. Returns low-res mask logits ``(N, 4h, 4w)`` (SAM's mask plus the HQ token's, or
    the HQ token's alone with ``hq_token_only``) and SAM's predicted IoU ``(N,)``.
    """
    decoder = model.mask_decoder
    gelu = torch.nn.functional.gelu
    sparse, dense = model.prompt_encoder(
        input_points=None, input_labels=None, input_boxes=input_boxes, input_masks=None
    )  # (1, N, 2, C) box-corner tokens; (1, C, h, w) the "no mask" embedding
    count, (_, channels, height, width) = sparse.shape[1], image_embeddings.shape
    # the HQ feature map: the image embedding and the early ViT feature, upscaled 4x
    hq_features = _conv_stack(
        decoder.encoder_conv1, decoder.encoder_norm, decoder.encoder_conv2, image_embeddings
    )
    if vit_features is not None:
        hq_features = hq_features + _conv_stack(
            decoder.compress_vit_conv1,
            decoder.compress_vit_norm,
            decoder.compress_vit_conv2,
            vit_features.permute(0, 3, 1, 2),
        )
    # output tokens (IoU, SAM's mask tokens, the HQ token) then the prompt's, per box
    output_tokens = torch.cat(
        [decoder.iou_token.weight, decoder.mask_tokens.weight, decoder.hq_token.weight]
    )
    tokens = torch.cat([output_tokens.expand(1, count, -1, -1), sparse], dim=2)
    image = (image_embeddings + dense).repeat_interleave(count, 0)  # (N, C, h, w)
    position = model.get_image_wide_positional_embeddings().repeat_interleave(count, 0)
    tokens_out, image_out = decoder.transformer(
        point_embeddings=tokens.to(decoder.iou_token.weight.dtype),
        image_embeddings=image,
        image_positional_embeddings=position,
        attention_similarity=None,
    )  # (1, N, T, C) and (N, 1, h * w, C): the image tokens *after* the transformer
    image_out = image_out.transpose(2, 3).reshape(count, channels, height, width)
    upscaled = decoder.upscale_conv1(image_out)
    upscaled = gelu(decoder.upscale_conv2(gelu(decoder.upscale_layer_norm(upscaled))))
    upscaled_hq = (
        _conv_stack(decoder.mask_conv1, decoder.mask_norm, decoder.mask_conv2, upscaled)
        + hq_features
    )
    hq_token = decoder.num_mask_tokens - 1  # the last output token after the IoU token
    hyper_hq = decoder.hq_mask_mlp(tokens_out[0, :, 1 + hq_token])  # (N, C / 8)
    logits = torch.einsum("nc,nchw->nhw", hyper_hq, upscaled_hq)
    if not hq_token_only:  # plus SAM's single-mask output (its first mask token)
        hyper_sam = decoder.output_hypernetworks_mlps[0](tokens_out[0, :, 1])
        logits = logits + torch.einsum("nc,nchw->nhw", hyper_sam, upscaled)
    iou = decoder.iou_prediction_head(tokens_out[0, :, 0])[:, 0]
    return logits, iou


@dataclass
class SamHQImageState(SamImageState):
    """SAM's image state plus the early ViT feature SAM-HQ's HQ token reads."""

    # (1, h, w, C): the output of the ViT's first global-attention block (h = w = 64 and
    # C = 768 / 1024 / 1280 for ViT-B / L / H), channels last; None until embedded, and None
    # after it when the ViT has no global-attention block
    vit_features: torch.Tensor | None = None


class SamHQSegmenter(SamSegmenter):
    """Box-prompted masks with SAM-HQ; the same surface as :class:`SamSegmenter`.

    >>> segmenter = SamHQSegmenter.from_pretrained("sam-hq-vit-base")     # doctest: +SKIP
    >>> state = segmenter.encode_image(rgb)                               # doctest: +SKIP
    >>> masks, scores = segmenter.segment(state, np.array([[10, 20, 200, 240]]))  # doctest: +SKIP

    ``masks`` are bool ``(N, H, W)`` at the original image's size, ``scores`` ``(N,)`` in [0, 1].
    The image encoder runs once per state, however many ``segment`` calls follow.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        image_processor: Any,
        boxes_per_call: int = DEFAULT_BOXES_PER_CALL,
        dtype: str | torch.dtype | None = None,
        compile: bool = False,
        hq_token_only: bool = False,
    ) -> None:
        decoder = getattr(model, "mask_decoder", None)
        if not hasattr(decoder, "hq_token"):
            raise TypeError(
                f"model: expected a transformers SamHQModel, got {type(model).__name__}"
            )
        if not isinstance(hq_token_only, bool):
            raise TypeError(f"hq_token_only: expected True or False, got {hq_token_only!r}")
        super().__init__(
            model, image_processor, boxes_per_call=boxes_per_call, dtype=dtype, compile=compile
        )
        self.hq_token_only = hq_token_only

    @property
    def auto_mask(self) -> dict:
        """Refused: ``TypeError`` (see the module doc). SAM's automatic mode
        (``sam_auto.generate_candidates``) and the CLIP route read this first, so both stop here
        with the reason instead of running the grid without the HQ token's inputs."""
        raise TypeError(AUTO_MASK_REFUSAL)

    @auto_mask.setter
    def auto_mask(self, value: dict) -> None:
        if value:
            logger.warning("SAM-HQ has no automatic mask mode; auto_mask settings are ignored")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "sam-hq-vit-base",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        compile: bool = False,
        *,
        hq_token_only: bool = False,
    ) -> SamHQSegmenter:
        """Load a registry name, a folder (``model_type`` ``"sam_hq"``), an official
        ``sam_hq_vit_*.pth`` or a hub id, strictly; ``InvalidWeightsError`` names what a folder
        of another kind holds. ``dtype`` and ``compile`` as in :meth:`SamSegmenter.from_pretrained`;
        ``hq_token_only`` as in the module doc (default ``False``, the official default)."""
        compute_dtype = resolve_dtype(dtype, resolve_device(device), warn=False)
        model, parts = load_pretrained(
            name_or_path,
            "segmenter",
            "sam_hq",
            "SamHQModel",
            {"image_processor": "AutoImageProcessor"},
            device,
        )
        return cls(
            model,
            parts["image_processor"],
            dtype=compute_dtype,
            compile=compile,
            hq_token_only=hq_token_only,
        )

    def encode_image(self, image: np.ndarray) -> SamHQImageState:
        """Preprocess an RGB uint8 ``(H, W, 3)`` image exactly as SAM does (long side to the
        processor's ``longest_edge``, normalised, zero-padded bottom and right); the embedding
        and the early ViT feature come on first use."""
        state = super().encode_image(image)
        return SamHQImageState(**{f.name: getattr(state, f.name) for f in fields(state)})

    @staticmethod
    def _checked(state: Any) -> SamHQImageState:
        if not isinstance(state, SamHQImageState):
            raise TypeError(
                "state: expected a SamHQImageState from SamHQSegmenter.encode_image, got "
                f"{type(state).__name__}"
            )
        return state

    def _encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, 3, S, S)`` pixels -> image embeddings ``(B, 256, s, s)`` and the first
        global-attention block's output ``(B, s, s, C)`` (``None`` without such a block)."""
        with self.autocast():
            embeddings, intermediate = self.model.get_image_embeddings(pixel_values)
        return embeddings, (intermediate[0] if len(intermediate) else None)

    @torch.inference_mode()
    def image_embeddings(self, state: SamImageState) -> torch.Tensor:
        """The image embedding ``(1, 256, 64, 64)``, computed once per state (together with the
        early ViT feature, :meth:`vit_features`)."""
        state = self._checked(state)
        if state.embeddings is None:
            state.embeddings, state.vit_features = self._encode(state.pixel_values)
            self.encoder_calls += 1
        return state.embeddings

    def vit_features(self, state: SamHQImageState) -> torch.Tensor | None:
        """The early ViT feature ``(1, 64, 64, C)`` (channels last) the HQ token reads,
        computed once per state with the embedding."""
        self.image_embeddings(state)
        return state.vit_features

    @torch.inference_mode()
    def embed_batch(self, states: Sequence[SamImageState]) -> None:
        """Embed the images of ``states`` that have no embedding yet in one encoder call; each
        state gets its embedding and early ViT feature (equal to its own call's up to float
        rounding: all inputs are the same padded square)."""
        todo = [self._checked(state) for state in states if state.embeddings is None]
        if not todo:
            return
        embeddings, features = self._encode(torch.cat([state.pixel_values for state in todo]))
        for i, state in enumerate(todo):
            state.embeddings = embeddings[i : i + 1]
            state.vit_features = None if features is None else features[i : i + 1]
        self.encoder_calls += len(todo)

    @torch.inference_mode()
    def segment(
        self, state: SamImageState, boxes_xyxy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One mask per box, up to ``boxes_per_call`` boxes in one decoder call.

        ``boxes_xyxy`` is ``(N, 4)`` xyxy in pixels of the original image (scaled to the
        resized input as SAM does, :func:`~.sam.scale_boxes`). Returns bool masks ``(N, H, W)``
        at the original size and SAM's predicted IoU per mask, clipped to [0, 1]. Masks are
        SAM's single mask plus the HQ token's (or the HQ token's alone with ``hq_token_only``).
        """
        state = self._checked(state)
        boxes = np.asarray(boxes_xyxy, dtype=np.float32)
        if boxes.size % 4 or boxes.ndim > 2 or (boxes.ndim == 2 and boxes.shape[1] != 4):
            raise ValueError(f"boxes_xyxy: expected shape (N, 4) xyxy pixels, got {boxes.shape}")
        boxes = boxes.reshape(-1, 4)
        height, width = state.original_size
        if len(boxes) == 0:
            return np.zeros((0, height, width), bool), np.zeros(0, np.float32)
        embeddings = self.image_embeddings(state)
        input_boxes = torch.from_numpy(scale_boxes(boxes, state.original_size, state.reshaped_size))
        masks = np.zeros((len(boxes), height, width), bool)
        scores = np.zeros(len(boxes), np.float32)
        for start in range(0, len(input_boxes), self.boxes_per_call):
            stop = min(start + self.boxes_per_call, len(input_boxes))
            with self.autocast():
                logits, iou = decode_boxes(
                    self.model,
                    embeddings,
                    state.vit_features,
                    input_boxes[None, start:stop].to(self.device, self.dtype),
                    self.hq_token_only,
                )
            self.upscale_masks(logits, state, out=masks[start:stop])
            scores[start:stop] = iou.float().clamp(0, 1).cpu().numpy()
        return masks, scores

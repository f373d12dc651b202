"""SAM 3 as a proposer: every instance of each class, with its box and its mask.

Runs on ``transformers.Sam3Model`` (``facebook/sam3``, gated on the hub). SAM 3 reads one noun
phrase at a time, so a prompt's classes are separate texts, batched ``text_batch_size`` at a
time against the image's vision features, which are computed once per image (on the first
``propose``) and reused by every class and every prompt. For each class the DETR-style decoder
gives ``Q`` instances (boxes, mask logits) and the mask head their masks; an instance's score is

    sigmoid(pred_logit) * sigmoid(presence_logit)

the detection score times the class's presence score, as both transformers'
``Sam3Processor.post_process_instance_segmentation`` and the official ``sam3`` package compute
it. Post-processing is done here in torch/numpy (transformers' image processor imports
torchvision, an optional dependency): boxes are scaled from normalised xyxy to pixels of the
original image; masks are upsampled bilinearly as probabilities and kept where above 0.5 (as
transformers does; the official package upsamples the logits: the two differ at edges only).

Files: a SAM 3 folder holds ``config.json`` (``model_type`` ``sam3``, or ``sam3_video`` as on
the hub: its detector is loaded, the tracker's weights are skipped), ``model.safetensors``,
``preprocessor_config.json`` and the CLIP BPE tokenizer, ``vocab.json`` + ``merges.txt`` (or
``tokenizer.json``). The ``sam3`` PyPI package ships no vocabulary file (its
``bpe_simple_vocab_16e6.txt.gz`` is not in the wheel), so the tokenizer files come from the hub
repository with the weights: ``hf download facebook/sam3 --local-dir <weights dir>/sam3``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._loading import LOAD_LOCK, load_pretrained
from ..boxes import DEFAULT_NMS_THRESHOLD, class_aware_nms, clip_boxes
from ..checks import check_count, check_limit, check_nms_threshold, check_threshold
from ..devices import ModelHolder, autocast, resolve_device, resolve_dtype
from ..errors import InvalidWeightsError, WeightsNotFoundError
from ..prompts import Prompt
from .base import Proposals

logger = logging.getLogger(__name__)

TEXT_LEN = 32
"""Tokens per text: SAM 3's processor pads every text to 32 (start and end tokens included)."""
MASK_THRESHOLD = 0.5
"""A pixel is in a mask when its upsampled mask probability exceeds this (transformers' default)."""
MODEL_TYPES = ("sam3", "sam3_video")
_TOKENIZER_FILES = ("vocab.json", "merges.txt")


def _access_hint(hub_id: str | None) -> str:
    repo = hub_id or "facebook/sam3"
    return (
        f"SAM 3 weights are gated: request access on https://huggingface.co/{repo} (log in "
        "with `hf auth login` once it is granted), then download them with "
        f"`hf download {repo} --local-dir <weights dir>/sam3` (the weights dir is "
        "$GROUNDED_SEG_WEIGHTS or ./weights); the folder must hold config.json, "
        "model.safetensors, preprocessor_config.json, vocab.json and merges.txt"
    )


@dataclass(frozen=True)
class Sam3ImageSettings:
    """SAM 3's image preprocessing, read from ``preprocessor_config.json``: a resize of the
    whole image to ``height x width`` pixels (aspect ratio not kept), bilinear with
    antialiasing, then ``(pixel * rescale_factor - mean) / std`` per channel."""

    height: int = 1008
    width: int = 1008
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255

    @classmethod
    def from_pretrained(cls, location: str | os.PathLike, **kwargs: Any) -> Sam3ImageSettings:
        """Read a folder's (or hub repository's) ``preprocessor_config.json``; ``OSError`` when
        it is missing, ``ValueError`` when it is not SAM 3's."""
        from transformers.utils import cached_file

        kwargs.pop("trust_remote_code", None)
        path = cached_file(location, "preprocessor_config.json", **kwargs)
        if path is None:
            raise OSError(f"{location} has no preprocessor_config.json")
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        size = config.get("size", {"height": cls.height, "width": cls.width})
        if not isinstance(size, dict) or not {"height", "width"} <= set(size):
            raise ValueError(f"{path}: expected size {{'height': h, 'width': w}}, got {size!r}")
        return cls(
            height=int(size["height"]),
            width=int(size["width"]),
            mean=tuple(float(v) for v in config.get("image_mean", cls.mean)),
            std=tuple(float(v) for v in config.get("image_std", cls.std)),
            rescale_factor=float(config.get("rescale_factor", cls.rescale_factor)),
        )

    def pixels(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 ``(H, W, 3)`` -> normalised float32 ``(1, 3, height, width)``.

        The arithmetic of transformers' ``Sam3ImageProcessor`` (and of the official ``v2.Resize``)
        without torchvision: torch's uint8 antialiased bilinear resize (the kernel torchvision
        calls), then ``(pixel - mean / rescale_factor) / (std / rescale_factor)`` in float32.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
            raise TypeError(
                "image: expected a uint8 (H, W, 3) RGB array, got "
                f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
            )
        if image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"image: expected shape (H, W, 3) with H, W >= 1, got {image.shape}")
        pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        if image.shape[:2] != (self.height, self.width):
            pixels = torch.nn.functional.interpolate(
                pixels,
                size=(self.height, self.width),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        mean = torch.tensor(self.mean) * (1.0 / self.rescale_factor)
        std = torch.tensor(self.std) * (1.0 / self.rescale_factor)
        return (pixels.float() - mean[:, None, None]) / std[:, None, None]


@dataclass
class Sam3ImageState:
    """One image: its preprocessed pixels, original size and (after the first ``propose``) the
    vision encoder's output, shared by every class and prompt on the image."""

    pixel_values: torch.Tensor  # (1, 3, h, w) float32, CPU
    height: int  # original image size, pixels
    width: int
    vision: Any = None  # Sam3VisionEncoderOutput, batch 1, on the model's device
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class Sam3Proposer(ModelHolder):
    """Instances of each class of a prompt, with masks, from SAM 3 (see the module doc).

    ``return_masks=False`` returns boxes only (``Proposals.masks`` is ``None``), so the
    pipeline's segmenter makes the masks. ``nms_threshold``: greedy NMS on box IoU (xyxy
    pixels) over all classes' instances together (``class_agnostic_nms=True``, the default: one
    object found by two overlapping classes, "cat" and "kitten", is kept once, under the class
    that scores it higher) or class by class; ``None``: no NMS. ``text_batch_size`` classes run
    through the detector at once.

    >>> proposer = Sam3Proposer.from_pretrained("sam3")                    # doctest: +SKIP
    >>> state = proposer.encode_image(rgb)                                 # doctest: +SKIP
    >>> found = proposer.propose(state, normalize_prompt("cat. dog."), 0.5, 0.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        image_settings: Sam3ImageSettings,
        nms_threshold: float | None = DEFAULT_NMS_THRESHOLD,
        dtype: str | torch.dtype | None = None,
        return_masks: bool = True,
        text_batch_size: int = 8,
        class_agnostic_nms: bool = True,
    ) -> None:
        for name, flag in (
            ("return_masks", return_masks),
            ("class_agnostic_nms", class_agnostic_nms),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name}: expected True or False, got {flag!r}")
        if not isinstance(image_settings, Sam3ImageSettings):
            raise TypeError(
                f"image_settings: expected Sam3ImageSettings, got {type(image_settings).__name__}"
            )
        self.model = model
        self.compute_dtype = None if dtype is None else resolve_dtype(dtype, self.device)
        self.tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()  # fast tokenizers keep per-call state
        self.image_settings = image_settings
        self.nms_threshold = check_nms_threshold(nms_threshold)
        self.return_masks = return_masks
        self.text_batch_size = check_count("text_batch_size", text_batch_size)
        self.class_agnostic_nms = class_agnostic_nms

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "sam3",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        nms_threshold: float | None = DEFAULT_NMS_THRESHOLD,
        return_masks: bool = True,
        **kwargs: Any,
    ) -> Sam3Proposer:
        """Load the registry name ``sam3``, a hub id or a local SAM 3 folder (strict weights).

        ``WeightsNotFoundError`` (weights absent offline, or the hub refuses: gated) says how to
        request access and where to put the files; ``InvalidWeightsError`` when the folder lacks
        the tokenizer (``vocab.json`` + ``merges.txt``) or ``preprocessor_config.json``.
        ``kwargs``: ``text_batch_size``, ``class_agnostic_nms``.
        """
        from ..registry import resolve_model

        compute_dtype = resolve_dtype(dtype, resolve_device(device), warn=False)
        with LOAD_LOCK:
            source = resolve_model(name_or_path, "detector")
            if source.local_dir is not None:
                _check_tokenizer_files(source.local_dir, source.label)
            try:
                model, parts = load_pretrained(
                    name_or_path,
                    "detector",
                    MODEL_TYPES,
                    "Sam3Model",
                    {"tokenizer": "AutoTokenizer", "image_settings": Sam3ImageSettings},
                    device,
                )
            except WeightsNotFoundError as err:
                raise WeightsNotFoundError(f"{err}. {_access_hint(source.hub_id)}") from err
        tokenizer = parts["tokenizer"]
        _check_tokenizer(tokenizer, model, source.label)
        return cls(
            model,
            tokenizer,
            parts["image_settings"],
            nms_threshold=nms_threshold,
            dtype=compute_dtype,
            return_masks=return_masks,
            **kwargs,
        )

    @property
    def returns_masks(self) -> bool:
        """Whether ``propose`` returns masks (the pipeline then runs no segmenter)."""
        return self.return_masks

    def encode_image(self, image: np.ndarray) -> Sam3ImageState:
        """Preprocess an RGB uint8 ``(H, W, 3)`` image; the vision encoder runs on the first
        ``propose`` and its output is kept in the state."""
        pixels = self.image_settings.pixels(image)
        return Sam3ImageState(pixels, int(image.shape[0]), int(image.shape[1]))

    @torch.inference_mode()
    def vision_features(self, state: Sam3ImageState) -> Any:
        """The vision encoder's output for the state's image (computed once, thread-safe)."""
        if not isinstance(state, Sam3ImageState):
            raise TypeError(
                f"state: expected a Sam3ImageState from encode_image, got {type(state).__name__}"
            )
        with state.lock:
            if state.vision is None:
                pixels = state.pixel_values.to(self.device, self.dtype)
                with autocast(self.device, self.compute_dtype):
                    state.vision = self.model.get_vision_features(pixel_values=pixels)
                logger.debug("SAM 3 vision features of a %dx%d image", state.height, state.width)
        return state.vision

    def text_inputs(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` ``(T, 32)`` on the model's device; a text of
        more than 32 tokens is refused (``ValueError``), never cut."""
        with self._tokenizer_lock:
            # user text is text: "<|endoftext|>" in a class is characters, not the end token
            encoded = self.tokenizer(
                texts, padding="max_length", max_length=TEXT_LEN, split_special_tokens=True
            )
        for text, ids in zip(texts, encoded["input_ids"], strict=True):
            if len(ids) > TEXT_LEN:
                raise ValueError(
                    f"class {text!r} is {len(ids)} tokens; SAM 3 reads at most {TEXT_LEN}"
                )
        ids = torch.tensor(encoded["input_ids"], dtype=torch.long, device=self.device)
        mask = torch.tensor(encoded["attention_mask"], dtype=torch.long, device=self.device)
        return ids, mask

    @torch.inference_mode()
    def _detect(self, vision: Any, texts: list[str]) -> Any:
        """The detector and mask head for ``texts`` against one image's vision features."""
        ids, mask = self.text_inputs(texts)
        batch = len(texts)
        expanded = type(vision)(
            fpn_hidden_states=tuple(t.expand(batch, -1, -1, -1) for t in vision.fpn_hidden_states),
            fpn_position_encoding=tuple(
                t.expand(batch, -1, -1, -1) for t in vision.fpn_position_encoding
            ),
        )
        with autocast(self.device, self.compute_dtype):
            return self.model(vision_embeds=expanded, input_ids=ids, attention_mask=mask)

    def propose(
        self,
        state: Sam3ImageState,
        prompt: Prompt,
        box_threshold: float = 0.5,
        text_threshold: float = 0.25,
        max_detections: int | None = None,
    ) -> Proposals:
        """Each class's instances scoring above ``box_threshold`` (``text_threshold`` is not used
        by this route: a class is one text, read whole), NMS, the ``max_detections`` best.

        Boxes are xyxy pixels of the original image, clipped; ``class_ids`` index
        ``prompt.classes`` and ``phrases`` are those classes; ``masks`` ``(N, H, W)`` bool at the
        original size (``None`` with ``return_masks=False``), ``mask_scores`` the instance
        scores (SAM 3 predicts no separate mask quality).
        """
        if not isinstance(prompt, Prompt):
            raise TypeError(f"prompt: expected a Prompt, got {type(prompt).__name__}")
        box_threshold = check_threshold("box_threshold", box_threshold)
        max_detections = check_limit("max_detections", max_detections)
        vision = self.vision_features(state)
        height, width = state.height, state.width
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes, scores, class_ids, mask_logits = [], [], [], []
        best_score: float | None = None
        classes = list(prompt.classes)
        for start in range(0, len(classes), self.text_batch_size):
            out = self._detect(vision, classes[start : start + self.text_batch_size])
            found = out.pred_logits.float().sigmoid()
            if out.presence_logits is not None:
                found = found * out.presence_logits.float().sigmoid()  # (B, Q) * (B, 1)
            found = found.cpu()
            for row in range(found.shape[0]):
                row_scores = found[row]
                if row_scores.numel():
                    best_score = max(best_score or 0.0, float(row_scores.max()))
                keep = torch.nonzero(row_scores > box_threshold).flatten()
                keep = keep[torch.argsort(row_scores[keep], descending=True, stable=True)]
                keep = keep[:max_detections]
                if not len(keep):
                    continue
                pixels = out.pred_boxes[row, keep.to(out.pred_boxes.device)].float().cpu() * scale
                boxes.append(clip_boxes(pixels, height, width))
                scores.append(row_scores[keep])
                class_ids.append(torch.full((len(keep),), start + row, dtype=torch.long))
                if self.return_masks:
                    mask_logits.append(out.pred_masks[row, keep.to(out.pred_masks.device)])
        if not boxes:
            return Proposals.empty(best_score)
        xyxy, score, class_id = torch.cat(boxes), torch.cat(scores), torch.cat(class_ids)
        if self.nms_threshold is None:
            order = torch.argsort(score, descending=True, stable=True)
        else:
            groups = torch.zeros_like(class_id) if self.class_agnostic_nms else class_id
            order = class_aware_nms(xyxy, score, groups, self.nms_threshold)
        order = order[:max_detections]
        masks = mask_scores = None
        if self.return_masks:
            low_res = torch.cat(mask_logits)[order.to(mask_logits[0].device)]
            masks = upsample_masks(low_res, height, width)
            mask_scores = score[order].numpy().astype(np.float32)
        ids = class_id[order].numpy().astype(np.int64)
        return Proposals(
            xyxy=xyxy[order].numpy().astype(np.float32),
            scores=score[order].numpy().astype(np.float32),
            class_ids=ids,
            phrases=[classes[i] for i in ids],
            masks=masks,
            mask_scores=mask_scores,
            best_score=best_score,
        )


def upsample_masks(logits: torch.Tensor, height: int, width: int, chunk: int = 16) -> np.ndarray:
    """SAM 3's mask logits ``(N, h, w)`` -> bool masks ``(N, height, width)``: probabilities
    upsampled bilinearly (``align_corners=False``) and kept above :data:`MASK_THRESHOLD`, as
    transformers' post-processing does; ``chunk`` masks at a time bound the memory."""
    masks = np.zeros((len(logits), height, width), dtype=bool)
    for start in range(0, len(logits), chunk):
        probs = logits[start : start + chunk].float().sigmoid()[None]
        probs = torch.nn.functional.interpolate(
            probs, size=(height, width), mode="bilinear", align_corners=False
        )[0]
        masks[start : start + chunk] = (probs > MASK_THRESHOLD).cpu().numpy()
    return masks


def _check_tokenizer_files(folder: Any, label: str) -> None:
    """``InvalidWeightsError`` naming the files when a SAM 3 folder holds no CLIP tokenizer."""
    has_pair = all((folder / name).is_file() for name in _TOKENIZER_FILES)
    if has_pair or (folder / "tokenizer.json").is_file():
        return
    missing = [name for name in _TOKENIZER_FILES if not (folder / name).is_file()]
    raise InvalidWeightsError(
        f"detector {label!r}: {folder} has no SAM 3 tokenizer: expected vocab.json and "
        f"merges.txt (CLIP's BPE; or tokenizer.json) there, missing {', '.join(missing)}. The "
        "sam3 package ships no vocabulary; get them with the weights: `hf download "
        f"facebook/sam3 vocab.json merges.txt tokenizer_config.json --local-dir {folder}` "
        "(gated: request access on https://huggingface.co/facebook/sam3 first)"
    )


def _check_tokenizer(tokenizer: Any, model: torch.nn.Module, label: str) -> None:
    """``InvalidWeightsError`` when the tokenizer cannot feed the model's text encoder."""
    vocab_size = int(model.config.text_config.vocab_size)
    size = len(tokenizer)
    if size < 3 or tokenizer.eos_token_id is None or size > vocab_size:
        raise InvalidWeightsError(
            f"detector {label!r}: its tokenizer ({size} tokens, end token "
            f"{tokenizer.eos_token!r}) does not fit the text encoder ({vocab_size} tokens): "
            "expected SAM 3's CLIP BPE vocab.json and merges.txt in the model folder"
        )

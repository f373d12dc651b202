"""Grounding DINO's four stages, made visible for one image and one prompt.

The numbers are the model's own, read from one forward pass of transformers'
``GroundingDinoForObjectDetection`` (with the per-image backbone cache, so explaining an image
the predictor already holds does not run the backbone again):

1. backbones: the Swin feature maps (``model.model.backbone``), as the L2 norm of each token's
   feature vector per level: where the image has structure;
2. feature enhancer + 3. language-guided query selection: ``enc_outputs_class``, the score of
   every enhanced image token (all levels, flattened) against every text token; per class, its
   best token's probability is the *query-selection map*, and the ``num_queries`` tokens with
   the highest score over all text become the decoder's queries;
4. cross-modality decoder: each query's box after every decoder layer (the refinement path,
   computed as transformers computes ``pred_boxes``, with the model's own ``bbox_embed`` of each
   layer), and the final token-by-detection probabilities (which words lit which box).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import supervision as sv
import torch
from torch.nn import functional

from ..boxes import normalized_cxcywh_to_pixels
from ..devices import autocast
from ..prompts import Prompt
from ..proposers.backbone_cache import backbone_cache
from ..proposers.grounding_dino import (
    GroundingDinoImageState,
    GroundingDinoProposer,
    decode_pass,
    merge_passes,
)


@dataclass
class Explanation:
    """What Grounding DINO computed for one image and one prompt, stage by stage.

    Coordinates are pixels of the original image, x to the right and y down from the top-left
    corner; maps have the image's size ``(H, W)`` (bilinear upsampling of each token grid, a
    token covering ``H / h`` x ``W / w`` pixels of its level's ``(h, w)`` grid).

    - ``image``: ``(H, W, 3)`` uint8 RGB; ``classes``: the prompt's ``C`` classes.
    - ``level_shapes``: the ``(h, w)`` token grid of each of the ``L`` feature levels (finest
      first; the last ones may be extra levels made from the backbone's coarsest map).
    - ``feature_norms``: ``(Lb, H, W)`` float32, the L2 norm of the backbone's feature vector
      at each token of its ``Lb`` levels (stage 1), upsampled.
    - ``selection``: ``(C, L, H, W)`` float32 in [0, 1]: for each class and level, each image
      token's best probability over the class's text tokens after the feature enhancer (stages 2
      and 3), upsampled. ``selection_grids``: the same at each level's own ``(C, h, w)`` grid.
    - ``query_xy``: ``(K, 2)`` float32, the centre (x, y) of each of the ``K`` image tokens
      selected as decoder queries; ``query_level`` ``(K,)`` their level; ``query_score`` ``(K,)``
      their best probability over all text tokens (the selection's key), highest first.
    - ``detections``: the final boxes (``xyxy``, ``confidence``, ``class_id``, ``class_name``,
      ``phrase``), as ``GroundedSAM.predict`` gives them, without masks.
    - ``query_index``: ``(N,)`` the decoder query each detection came from.
    - ``box_path``: ``(N, 1 + D, 4)`` float32 xyxy: each detection's box from query selection
      (index 0: the selected token's proposal) and after each of the ``D`` decoder layers (stage
      4); ``box_path[:, -1]`` equals ``detections.xyxy``.
    - ``tokens``: the ``T`` text tokens (``[CLS]``, words, ``.``, ``[SEP]``); ``token_class``
      ``(T,)`` the class index of each token (-1 for ``[CLS]``, separators and ``[SEP]``);
      ``token_scores`` ``(N, T)`` float32, each detection's probability for each token.
    """

    image: np.ndarray
    classes: list[str]
    level_shapes: list[tuple[int, int]]
    feature_norms: np.ndarray
    selection: np.ndarray
    selection_grids: list[np.ndarray]
    query_xy: np.ndarray
    query_level: np.ndarray
    query_score: np.ndarray
    detections: sv.Detections
    query_index: np.ndarray
    box_path: np.ndarray
    tokens: list[str]
    token_class: np.ndarray
    token_scores: np.ndarray

    def figure(self, **options):
        """One matplotlib figure of the four stages (see :func:`grounded_seg.explain.draw`)."""
        from .figure import draw

        return draw(self, **options)

    def save(self, path, *, overwrite: bool = False, **options) -> None:
        """Write :meth:`figure` to ``path`` (PNG, JPEG, PDF, SVG ...), atomically; an existing
        file is not replaced without ``overwrite``."""
        from .figure import save

        save(self, path, overwrite=overwrite, **options)


def level_shapes(backbone_maps: list[torch.Tensor], levels: int) -> list[tuple[int, int]]:
    """The token grids of all ``levels``: the backbone's maps, then extra levels, each made by
    a stride-2, 3x3, padding-1 convolution of the one before (transformers' ``input_proj``)."""
    shapes = [(int(m.shape[-2]), int(m.shape[-1])) for m in backbone_maps]
    while len(shapes) < levels:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def _upsample(grid: torch.Tensor, height: int, width: int) -> np.ndarray:
    """``(C, h, w)`` -> ``(C, H, W)`` float32, bilinear (pixel centres aligned as OpenCV does)."""
    up = functional.interpolate(grid[None].float(), size=(height, width), mode="bilinear",
                       align_corners=False)  # fmt: skip
    return up[0].cpu().numpy().astype(np.float32)


@torch.inference_mode()
def explain_state(
    proposer: GroundingDinoProposer,
    state: GroundingDinoImageState,
    image: np.ndarray,
    prompt: Prompt,
    box_threshold: float,
    text_threshold: float,
    max_detections: int | None,
) -> Explanation:
    """The :class:`Explanation` of ``prompt`` on one prepared image (see the module doc)."""
    passes = proposer.text_passes(prompt)
    if len(passes) != 1:
        raise ValueError(
            f"prompt: explain shows one text pass, and these {len(prompt.classes)} classes need "
            f"{len(passes)} (the text encoder reads {proposer.max_text_len} tokens at a time); "
            "explain fewer classes at once"
        )
    text_pass = passes[0]
    height, width = image.shape[:2]
    model = proposer.model
    ids = torch.tensor([text_pass.input_ids], device=proposer.device)
    with backbone_cache(state.backbone_cache), autocast(proposer.device, proposer.compute_dtype):
        out = model(
            pixel_values=state.pixel_values,
            pixel_mask=state.pixel_mask,
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            token_type_ids=torch.zeros_like(ids),
        )
        cached = state.backbone_cache.get("output")
        if cached is None:  # the stock backbone kept (grounded_seg._equivalents): ask it again
            cached = model.model.backbone(state.pixel_values, state.pixel_mask)
        features = [f for f, _ in cached[0]]
        path = _box_path(model, out)  # (1 + D, Q, 4) normalised cxcywh
    shapes = level_shapes(features, int(model.config.num_feature_levels))
    token_probs = out.enc_outputs_class[0].float().sigmoid()  # (N, T), -inf text padding -> 0
    if token_probs.shape[0] != sum(h * w for h, w in shapes):
        raise RuntimeError(
            f"the encoder has {token_probs.shape[0]} image tokens, not the {shapes} grids' "
            f"{sum(h * w for h, w in shapes)}: this transformers version lays them out otherwise"
        )
    per_class = torch.stack(  # (N, C): each token's best probability over each class's tokens
        [token_probs[:, a:b].max(dim=-1).values for a, b in text_pass.class_token_spans], dim=-1
    )
    grids, maps, start = [], [], 0
    for h, w in shapes:
        grid = per_class[start : start + h * w].T.reshape(-1, h, w)
        grids.append(grid.cpu().numpy().astype(np.float32))
        maps.append(_upsample(grid, height, width))
        start += h * w
    order = _class_order(text_pass, len(prompt.classes))
    selection = np.stack(maps, axis=1)[order]  # (C, L, H, W) in the prompt's class order
    grids = [g[order] for g in grids]

    key = token_probs.max(dim=-1).values
    picked = torch.topk(key, int(model.config.num_queries)).indices
    query_xy, query_level = _token_centres(picked.cpu().numpy(), shapes, height, width)

    logits, boxes = out.logits[0].float(), out.pred_boxes[0].float()
    found = merge_passes(
        [decode_pass(logits, boxes, text_pass, height, width, box_threshold, text_threshold,
                     max_detections)],
        proposer.nms_threshold,
        max_detections,
    )  # fmt: skip
    pixel_path = normalized_cxcywh_to_pixels(path.float().reshape(-1, 4), height, width)
    pixel_path = pixel_path.reshape(path.shape[0], path.shape[1], 4).cpu().numpy()  # (1+D, Q, 4)
    query_index = _match_queries(found.xyxy, pixel_path[-1])
    tokens = len(text_pass.input_ids)  # the logits' other columns are padding
    detection_probs = logits.sigmoid()[torch.as_tensor(query_index, dtype=torch.long), :tokens]
    token_class = np.full(len(text_pass.input_ids), -1, np.int64)
    for class_id, (a, b) in zip(text_pass.class_ids, text_pass.class_token_spans, strict=True):
        token_class[a:b] = class_id
    detections = sv.Detections(
        xyxy=found.xyxy.astype(np.float32).reshape(-1, 4),
        confidence=found.scores.astype(np.float32),
        class_id=found.class_ids.astype(np.int64),
        data={
            "class_name": np.array([prompt.classes[i] for i in found.class_ids], dtype=str),
            "phrase": np.array(found.phrases, dtype=str),
        },
    )
    return Explanation(
        image=image,
        classes=list(prompt.classes),
        level_shapes=shapes,
        feature_norms=np.stack(
            [_upsample(f[0].float().norm(dim=0, keepdim=True), height, width)[0] for f in features]
        ),
        selection=selection,
        selection_grids=grids,
        query_xy=query_xy,
        query_level=query_level,
        query_score=key[picked].cpu().numpy().astype(np.float32),
        detections=detections,
        query_index=query_index,
        box_path=pixel_path[:, query_index].transpose(1, 0, 2).astype(np.float32),
        tokens=proposer.tokenizer.convert_ids_to_tokens(list(text_pass.input_ids)),
        token_class=token_class,
        token_scores=detection_probs.cpu().numpy().astype(np.float32).reshape(-1, tokens),
    )


def _box_path(model: torch.nn.Module, out) -> torch.Tensor:
    """``(1 + D, Q, 4)`` normalised cxcywh: the selected proposals, then each decoder layer's
    boxes, made with that layer's ``bbox_embed`` from its input reference (as transformers makes
    the final ``pred_boxes``, which the last entry equals)."""
    hidden = out.intermediate_hidden_states[0]  # (D, Q, dim)
    references = [out.init_reference_points[0], *out.intermediate_reference_points[0][:-1]]
    path = [out.init_reference_points[0]]
    for layer, reference in enumerate(references):
        delta = model.bbox_embed[layer](hidden[layer])
        path.append((delta + torch.special.logit(reference, eps=1e-5)).sigmoid())
    return torch.stack(path)


def _class_order(text_pass, count: int) -> list[int]:
    """Rows of the pass's classes in the prompt's class order."""
    position = {class_id: row for row, class_id in enumerate(text_pass.class_ids)}
    return [position[c] for c in range(count)]


def _token_centres(
    indices: np.ndarray, shapes: list[tuple[int, int]], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flattened token indices -> ``(K, 2)`` pixel centres (x, y) and ``(K,)`` levels."""
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    levels = np.searchsorted(starts, indices, side="right") - 1
    xy = np.zeros((len(indices), 2), np.float32)
    for k, (index, level) in enumerate(zip(indices, levels, strict=True)):
        h, w = shapes[level]
        row, col = divmod(int(index - starts[level]), w)
        xy[k] = ((col + 0.5) * width / w, (row + 0.5) * height / h)
    return xy, levels.astype(np.int64)


def _match_queries(xyxy: np.ndarray, query_boxes: np.ndarray) -> np.ndarray:
    """The decoder query of each final box: the one whose final box it is (to float rounding)."""
    if not len(xyxy):
        return np.zeros(0, np.int64)
    distance = np.abs(xyxy[:, None, :] - query_boxes[None, :, :]).max(axis=-1)
    return distance.argmin(axis=1).astype(np.int64)

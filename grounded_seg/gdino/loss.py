"""The lecture's Grounding DINO losses, on the transformers model.

Per matched query (Hungarian matching on the same costs): L1 + GIoU on the normalised
(cx, cy, w, h) box, and the contrastive token-level classification loss, a sigmoid focal loss on
the query-token dot products whose targets are the tokens of the matched object's phrase. They
apply to every decoder layer and to the queries chosen by language-guided query selection.

Two defects of the loss shipped with transformers (5.x) are corrected here, using its own
matcher and criterion classes and its documented ``model.loss_function`` hook:

1. **Wrong targets in batches.** ``GroundingDinoImageLoss._get_target_classes_one_hot`` offsets
   image ``i``'s phrase indices by image ``i``'s own phrase count instead of the count of all
   images before it, so from the second image of a batch on, the classification targets point
   at another image's phrases (or past the end: an ``IndexError``). :class:`BatchedImageLoss`
   offsets by the cumulative count. A test checks batched losses equal per-image ones.
2. **Query selection is never trained.** The model's two-stage ("_enc") term is computed on
   tensors it has detached, so it cannot train the encoder heads that choose the decoder
   queries. :func:`query_selection_loss` scores the same top-k proposals before detaching, as
   the official implementation does, from the model's ``enc_outputs_class`` /
   ``enc_outputs_coord_logits``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch

CLASS_WEIGHT = 2.0  # the model's own weight for loss_ce


@functools.cache
def _criterion_class() -> type:
    from transformers.loss.loss_grounding_dino import GroundingDinoImageLoss

    class BatchedImageLoss(GroundingDinoImageLoss):
        """transformers' criterion with phrase indices offset by the phrases of earlier images."""

        def _get_target_classes_one_hot(self, outputs, targets, indices):
            logits = outputs["logits"]
            counts = [len(m) for m in outputs["label_maps"]]
            offsets = [sum(counts[:i]) for i in range(len(counts))]
            class_labels = torch.cat(
                [
                    t["class_labels"][j] + offsets[i]
                    for i, (t, (_, j)) in enumerate(zip(targets, indices, strict=True))
                ]
            )
            label_maps = torch.cat(outputs["label_maps"], dim=0)
            idx = self._get_source_permutation_idx(indices)
            onehot = torch.zeros_like(logits, dtype=torch.long)
            onehot[idx] = label_maps[class_labels].to(torch.long)
            return onehot

    return BatchedImageLoss


def make_criterion(config: Any, losses: tuple[str, ...] = ("labels", "boxes")) -> Any:
    """The corrected criterion, with the config's matching costs and focal alpha."""
    from transformers.loss.loss_grounding_dino import GroundingDinoHungarianMatcher

    matcher = GroundingDinoHungarianMatcher(
        class_cost=config.class_cost, bbox_cost=config.bbox_cost, giou_cost=config.giou_cost
    )
    return _criterion_class()(matcher=matcher, focal_alpha=config.focal_alpha, losses=list(losses))


def _weighted(parts: dict[str, torch.Tensor], config: Any) -> torch.Tensor:
    return (
        CLASS_WEIGHT * parts["loss_ce"]
        + config.bbox_loss_coefficient * parts["loss_bbox"]
        + config.giou_loss_coefficient * parts["loss_giou"]
    )


def decoder_loss_function(
    logits: torch.Tensor,
    labels: list[dict[str, torch.Tensor]],
    device: torch.device,
    pred_boxes: torch.Tensor,
    config: Any,
    label_maps: tuple[torch.Tensor, ...],
    text_mask: torch.Tensor,
    outputs_class: torch.Tensor | None = None,
    outputs_coord: torch.Tensor | None = None,
    **_: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A drop-in ``model.loss_function``: the corrected criterion on the last decoder layer and
    on every earlier one (``outputs_class`` / ``outputs_coord`` ``(L, B, Q, ...)``), summed with
    the model's weights. The detached two-stage term is left to :func:`query_selection_loss`."""
    criterion = make_criterion(config).to(device)
    layers = [(logits, pred_boxes)]
    if outputs_class is not None and outputs_coord is not None:
        layers += list(zip(outputs_class[:-1], outputs_coord[:-1], strict=True))
    total = logits.new_zeros(())
    loss_dict: dict[str, torch.Tensor] = {}
    for index, (layer_logits, layer_boxes) in enumerate(layers):
        parts = criterion(
            {"logits": layer_logits, "pred_boxes": layer_boxes, "label_maps": label_maps,
             "text_mask": text_mask},
            labels,
        )  # fmt: skip
        total = total + _weighted(parts, config)
        suffix = "" if index == 0 else f"_{index - 1}"
        loss_dict.update({f"{k}{suffix}": v for k, v in parts.items()})
    return total, loss_dict, []


@contextlib.contextmanager
def corrected_loss(model: Any) -> Iterator[None]:
    """Within the block, ``model(..., labels=...)`` computes :func:`decoder_loss_function`."""
    had = "_loss_function" in vars(model)
    previous = vars(model).get("_loss_function")
    model.loss_function = decoder_loss_function
    try:
        yield
    finally:
        if had:
            model.loss_function = previous
        else:
            del model._loss_function


def query_selection_loss(
    outputs: Any,
    labels: list[dict[str, torch.Tensor]],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of the ``num_queries`` proposals the encoder selects, with gradients.

    ``outputs``: the model's output (``enc_outputs_class`` ``(B, HW, max_text_len)`` token
    logits, ``enc_outputs_coord_logits`` ``(B, HW, 4)``); ``labels``: the model's label format.
    Returns the weighted sum and its parts (``loss_ce``, ``loss_bbox``, ``loss_giou``).
    """
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        build_label_maps,
        build_text_mask,
    )

    enc_class = outputs.enc_outputs_class
    enc_coord = outputs.enc_outputs_coord_logits
    if enc_class is None or enc_coord is None:
        raise ValueError("query_selection_loss needs a two-stage model (config.two_stage=True)")
    top = enc_class.max(-1).values.topk(config.num_queries, dim=1).indices  # (B, K)
    logits = torch.gather(enc_class, 1, top[..., None].expand(-1, -1, enc_class.shape[-1]))
    boxes = torch.gather(enc_coord, 1, top[..., None].expand(-1, -1, 4)).sigmoid()
    selected = {
        "logits": logits,
        "pred_boxes": boxes,
        "label_maps": build_label_maps(logits, input_ids),
        "text_mask": build_text_mask(logits, attention_mask),
    }
    parts = make_criterion(config).to(logits.device)(selected, labels)
    return _weighted(parts, config), parts


def grounding_losses(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch (see :class:`~grounded_seg.gdino.GroundingCollator`).

    Every decoder layer (:func:`decoder_loss_function`) plus :func:`query_selection_loss`.
    Returns the total and a few parts as floats, for logging: ``loss`` (total), ``decoder_ce`` /
    ``decoder_bbox`` / ``decoder_giou`` (last decoder layer), ``selection``.
    """
    with corrected_loss(model):
        outputs = model(**batch)
    selection, _ = query_selection_loss(
        outputs, batch["labels"], batch["input_ids"], batch["attention_mask"], model.config
    )
    total = outputs.loss + selection
    parts = outputs.loss_dict
    return total, {
        "loss": float(total.detach()),
        "decoder_ce": float(parts["loss_ce"].detach()),
        "decoder_bbox": float(parts["loss_bbox"].detach()),
        "decoder_giou": float(parts["loss_giou"].detach()),
        "selection": float(selection.detach()),
    }

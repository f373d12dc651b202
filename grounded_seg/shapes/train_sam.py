"""Train a tiny SAM (``transformers.SamModel``) on the shapes world: box prompt -> mask.

Prompts alternate step by step between boxes (the pipeline's prompts: ground-truth boxes
jittered by up to ``box_jitter`` of their size, as a detector's would be) and single points inside
an object (the prompts of SAM's automatic mode, which the CLIP route uses), which get SAM's three
masks, the best of them trained. Loss per mask: focal + dice on the mask logits (upsampled to the
image), plus the squared error between SAM's predicted IoU and the IoU it really reached, so
``mask_score`` and the automatic mode's IoU filter mean something.

Two of ``SamConfig``'s defaults do not train from scratch and are changed:
the vision initializer range (1e-10 -> 0.02) and the prompt encoder's random positional matrix
(drawn with std ``hidden_size // 2`` -> 1.0).

    python -m grounded_seg.shapes.train_sam weights/shapes/sam --steps 4000
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from ..training import markdown_table, run_training, thin_rows, write_json, write_run
from .world import HELD_OUT_SEEDS, TRAIN_SEEDS, make_scene

logger = logging.getLogger(__name__)

IMAGE_SIZE = 128
CHECKPOINT = "checkpoint.pt"
AUTO_MASK = {
    "points_per_side": 16,
    "pred_iou_thresh": 0.6,
    "stability_score_thresh": 0.8,
    "min_mask_region_area": 200,
}
"""The automatic mode's filters for this small SAM (segment-anything's 0.88 / 0.95 suit the real
one): box recall 1.0 at IoU 0.5 on held-out seeds 1003000-1003039, ~6 candidates per scene.
``min_mask_region_area`` 200 drops the few stray pixels its point masks carry away from the
object, which stretched candidate boxes: on held-out seeds 1008000-1008199 the CLIP route's mask
AP50 went from 0.693 / 0.744 to 0.783 / 0.787 (100 / 400 px: 0.772 / 0.789 on the first 100)."""


def shapes_sam_config(hidden: int = 64, layers: int = 3, patch: int = 8) -> Any:
    """A tiny SAM for 128 x 128 scenes: ``(128 / patch)^2`` embedding, 4x that for low-res masks."""
    from transformers import SamConfig

    return SamConfig(
        vision_config=dict(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=patch,
            output_channels=hidden,
            global_attn_indexes=[layers - 1],
            window_size=4,
            mlp_dim=hidden * 4,
            num_pos_feats=hidden // 2,
            initializer_range=0.02,
        ),
        prompt_encoder_config=dict(hidden_size=hidden, image_size=IMAGE_SIZE, patch_size=patch),
        mask_decoder_config=dict(
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            mlp_dim=hidden * 4,
            iou_head_hidden_dim=hidden,
        ),
    )


def _new_model(seed: int) -> Any:
    from transformers import SamModel

    torch.manual_seed(seed)
    model = SamModel(shapes_sam_config())
    with torch.no_grad():
        positional = model.shared_image_embedding.positional_embedding
        positional.copy_(torch.randn_like(positional))
    return model


def _batch(rng: np.random.Generator, batch_size: int, boxes_per_image: int, jitter: float):
    """Images ``(B, 128, 128, 3)``, jittered boxes ``(B, K, 4)``, one point inside each chosen
    object ``(B, K, 2)`` (x, y pixels) and the objects' masks ``(B, K, 128, 128)``."""
    images, boxes, points, masks = [], [], [], []
    for _ in range(batch_size):
        scene = make_scene(int(rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop)), IMAGE_SIZE)
        pick = rng.integers(0, len(scene.objects), boxes_per_image)
        chosen = scene.boxes[pick].astype(np.float64)
        size = np.repeat(chosen[:, 2:] - chosen[:, :2], 2, axis=1)
        chosen += rng.uniform(-jitter, jitter, chosen.shape) * size
        inside = []
        for mask in scene.masks[pick]:
            ys, xs = np.nonzero(mask)
            k = int(rng.integers(len(xs)))
            inside.append((xs[k] + 0.5, ys[k] + 0.5))
        images.append(scene.image)
        boxes.append(np.clip(chosen, 0, IMAGE_SIZE))
        points.append(inside)
        masks.append(scene.masks[pick])
    return (
        np.stack(images),
        np.stack(boxes).astype(np.float32),
        np.array(points, np.float32),
        np.stack(masks),
    )


def _mask_losses(logits: torch.Tensor, target: torch.Tensor):
    """Per mask: focal x 20 + dice on ``(M, H, W)`` logits, and the IoU it reached."""
    target = target.float()
    prob = logits.sigmoid()
    bce = functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    focal = (0.25 * target + 0.75 * (1 - target)) * (1 - p_t) ** 2 * bce
    focal = focal.flatten(1).mean(1)
    inter = (prob * target).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (prob.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)
    hard = logits > 0
    union = (hard | target.bool()).flatten(1).sum(1).clamp(min=1)
    iou = (hard & target.bool()).flatten(1).sum(1) / union
    return 20 * focal + dice, iou


def _losses(logits: torch.Tensor, target: torch.Tensor, iou_pred: torch.Tensor):
    """Mean mask loss, the IoU head's squared error and the mean IoU, for ``(M, H, W)`` logits
    and ``(M,)`` predicted IoUs."""
    mask_loss, iou = _mask_losses(logits, target)
    return mask_loss.mean(), ((iou_pred - iou.detach()) ** 2).mean(), iou.mean()


def _step_loss(model: Any, pixels: torch.Tensor, batch: tuple, use_points: bool):
    """Box prompts: one mask each. Point prompts: SAM's three masks, the best one trained (the
    others are ambiguous answers), the IoU head trained on all three."""
    _, boxes, points, masks = batch
    target = torch.from_numpy(masks).flatten(0, 1)
    if not use_points:
        outputs = model(
            pixel_values=pixels, input_boxes=torch.from_numpy(boxes), multimask_output=False
        )
        logits = _upsample(outputs.pred_masks[:, :, 0]).flatten(0, 1)
        return _losses(logits, target, outputs.iou_scores.flatten())
    labels = torch.ones(points.shape[0], points.shape[1], 1, dtype=torch.long)
    outputs = model(
        pixel_values=pixels,
        input_points=torch.from_numpy(points)[:, :, None, :],
        input_labels=labels,
        multimask_output=True,
    )
    logits = _upsample(outputs.pred_masks.flatten(1, 2)).unflatten(1, (-1, 3)).flatten(0, 1)
    per_mask, iou = _mask_losses(logits.flatten(0, 1), target.repeat_interleave(3, dim=0))
    per_mask, iou = per_mask.view(-1, 3), iou.view(-1, 3)
    iou_loss = ((outputs.iou_scores.flatten(0, 1) - iou.detach()) ** 2).mean()
    best = per_mask.min(dim=1)
    return best.values.mean(), iou_loss, iou.gather(1, best.indices[:, None]).mean()


def _upsample(low_res: torch.Tensor) -> torch.Tensor:
    """``(B, K, h, w)`` low-res logits -> ``(B, K, 128, 128)``."""
    return functional.interpolate(low_res, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")


def evaluate_sam(segmenter: Any, seeds: range) -> float:
    """Mean mask IoU from ground-truth boxes over the scenes of ``seeds``, through the public
    ``SamSegmenter.segment`` path (preprocessing, one decoder call, resize to the original)."""
    ious = []
    for scene in (make_scene(seed, IMAGE_SIZE) for seed in seeds):
        state = segmenter.encode_image(scene.image)
        masks, _ = segmenter.segment(state, scene.boxes)
        for pred, true in zip(masks, scene.masks, strict=True):
            ious.append((pred & true).sum() / max(1, (pred | true).sum()))
    return float(np.mean(ious))


def train_shapes_sam(
    out_dir: str | Path,
    *,
    steps: int = 4000,
    batch_size: int = 8,
    boxes_per_image: int = 2,
    learning_rate: float = 2e-3,
    box_jitter: float = 0.1,
    seed: int = 0,
    threads: int = 1,
    resume: bool = True,
    log_every: int = 100,
    eval_scenes: int = 200,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train, evaluate on held-out scenes and save a shapes SAM in ``out_dir`` (HF format).

    A run interrupted after a checkpoint continues from it when ``resume`` is true (same seed,
    same result). Returns the report also written to ``out_dir/train_log.json``.
    """
    from transformers import SamImageProcessorPil

    from ..segmenters.sam import SETTINGS_FILE, SamSegmenter

    out = Path(out_dir)
    if (out / "model.safetensors").exists() and not overwrite:
        raise FileExistsError(f"{out} holds a trained model; pass overwrite=True to replace it")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    processor = SamImageProcessorPil(
        size={"longest_edge": IMAGE_SIZE}, pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    model = _new_model(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    rng = np.random.default_rng(seed)

    def batch_of(step: int) -> tuple:
        return _batch(rng, batch_size, boxes_per_image, box_jitter)

    def loss_of(batch: tuple, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        pixels = processor(images=list(batch[0]), return_tensors="pt")["pixel_values"]
        mask_loss, iou_loss, iou = _step_loss(model, pixels, batch, use_points=step % 2 == 1)
        return mask_loss + iou_loss, {"train_iou": float(iou)}

    result = run_training(
        model, loss_of, optimizer, batches=batch_of, steps=steps, rng=rng, scheduler=scheduler,
        grad_clip=1.0, log_every=log_every, checkpoint=out / CHECKPOINT, resume=resume,
        settings={"steps": steps, "batch_size": batch_size, "boxes_per_image": boxes_per_image,
                  "learning_rate": learning_rate, "box_jitter": box_jitter, "seed": seed},
        logger=logger,
    )  # fmt: skip
    model.save_pretrained(out)
    processor.save_pretrained(out)
    write_json(out / SETTINGS_FILE, {"auto_mask": AUTO_MASK})
    segmenter = SamSegmenter.from_pretrained(out, device="cpu")
    held_out = range(HELD_OUT_SEEDS.start, HELD_OUT_SEEDS.start + eval_scenes)
    mean_iou = evaluate_sam(segmenter, held_out)
    report = {
        "model": "shapes-sam",
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "batch_size": batch_size,
        "boxes_per_image": boxes_per_image,
        "learning_rate": learning_rate,
        "box_jitter": box_jitter,
        "seed": seed,
        "threads": threads,
        "device": "cpu",
        "train_seeds": f"drawn from range({TRAIN_SEEDS.start}, {TRAIN_SEEDS.stop})",
        "eval_seeds": f"range({held_out.start}, {held_out.stop})",
        "held_out_mean_iou_from_true_boxes": round(mean_iou, 4),
        "train_seconds": result.seconds,
        "resumed_at": result.resumed_at,
        "curve": result.curve,
    }
    write_run(out, report, _card(report))
    (out / CHECKPOINT).unlink(missing_ok=True)
    logger.info("held-out mean IoU %.4f after %.0f s", mean_iou, result.seconds)
    return report


def _card(report: dict[str, Any]) -> str:
    curve = markdown_table(
        ["step", "minutes", "loss", "train IoU"],
        [
            (row["step"], f"{row['seconds'] / 60:.1f}", f"{row['loss']:.4f}",
             f"{row['train_iou']:.3f}")
            for row in thin_rows(report["curve"])
        ],
    )  # fmt: skip
    command = (
        f"grounded-seg train shapes --model sam --steps {report['steps']} "
        f"--seed {report['seed']} --threads {report['threads']}"
    )
    return f"""# shapes-sam

A tiny `transformers.SamModel` trained by grounded_seg on the shapes world
(box or point prompt -> mask).

- parameters: {report["parameters"]:,}; config: vision hidden 64, 3 layers, patch 8, 128 x 128
  input (16 x 16 embedding, 64 x 64 low-res masks); mask decoder hidden 64, 2 layers
- data: scenes from the training seeds ({report["train_seeds"]}); prompts alternate per step
  between ground-truth boxes jittered by up to {report["box_jitter"]:.0%} of their size and one
  point inside the object (3 masks, the best trained); {report["steps"]} steps x
  {report["batch_size"]} scenes x {report["boxes_per_image"]} prompts; AdamW lr
  {report["learning_rate"]}, cosine
- loss: focal x 20 + dice on the mask, + squared error of the predicted IoU
- automatic mode (the CLIP route's candidates): `grounded_seg.json` sets {AUTO_MASK}
- reproduce: `{command}` ({report["device"]}, {report["threads"]} thread(s), seed {report["seed"]})
- training time: {report["train_seconds"]:.0f} s
- held-out mean mask IoU from ground-truth boxes ({report["eval_seeds"]}):
  **{report["held_out_mean_iou_from_true_boxes"]:.4f}**

Training curve (loss and train IoU: means since the previous row):

{curve}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the shapes-world SAM.")
    parser.add_argument("out_dir")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = train_shapes_sam(
        args.out_dir, steps=args.steps, seed=args.seed, threads=args.threads,
        overwrite=args.overwrite,
    )  # fmt: skip
    logger.info("%s", json.dumps({k: v for k, v in report.items() if k != "curve"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The SAM-HQ oracle: runs the official ``segment_anything_hq`` code, unchanged.

Run by the *oracle* Python (the environment of ``official_runner.py``, with segment-anything-hq
installed), never imported by the tests. It builds the official SAM-HQ of a variant with random
weights (every parameter perturbed, as ``official_runner.perturb`` does, so a wrong mapping cannot
hide behind zeros or ones), saves it as the official ``.pth`` (a plain state dict, as the released
``sam_hq_vit_b.pth`` is), runs the official ``SamPredictor`` on an image and a batch of boxes and
saves what it saw, stage by stage, with ``torch.save``:

    python sam_hq_runner.py run --variant vit_b --checkpoint sam_hq.pth --image img.png \
        --boxes boxes.json --out sam_hq_out.pt
    python sam_hq_runner.py save --variant vit_l --checkpoint sam_hq_l.pth

The official predictor's default ``hq_token_only=False`` (SAM's mask plus the HQ token's mask) is
what ``low_res_logits`` / ``mask_logits`` / ``masks`` hold; ``hq_only_low_res_logits`` is the same
call with ``hq_token_only=True``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Add noise to every parameter (buffers, e.g. the pixel mean and std, stay as they are)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.parameters():
            noise = torch.randn(tensor.shape, generator=gen) * 0.02
            tensor.add_(noise.to(tensor.dtype))


def build_sam_hq(variant: str, seed: int) -> torch.nn.Module:
    from segment_anything_hq import sam_model_registry

    torch.manual_seed(seed)
    sam = sam_model_registry[variant]().eval()
    perturb(sam, seed)
    return sam


def official_default_hq_token_only() -> bool:
    """The default of ``SamPredictor.predict_torch(hq_token_only=...)`` in this install."""
    from segment_anything_hq import SamPredictor

    return bool(inspect.signature(SamPredictor.predict_torch).parameters["hq_token_only"].default)


def run_sam_hq(sam: torch.nn.Module, image: np.ndarray, boxes_xyxy: np.ndarray) -> dict:
    """The official ``SamPredictor`` path: set_image, then predict_torch on all boxes at once."""
    from segment_anything_hq import SamPredictor

    predictor = SamPredictor(sam)
    seen = {}
    hook = sam.image_encoder.register_forward_hook(
        lambda _m, args, out: seen.update(pixel_values=args[0].clone())
    )
    predictor.set_image(image)
    hook.remove()
    boxes = predictor.transform.apply_boxes_torch(
        torch.as_tensor(boxes_xyxy, dtype=torch.float), image.shape[:2]
    )
    default = official_default_hq_token_only()
    with torch.no_grad():
        logits, iou, low_res = predictor.predict_torch(
            point_coords=None,
            point_labels=None,
            boxes=boxes,
            multimask_output=False,
            return_logits=True,
        )  # hq_token_only left at the official default
        _, hq_iou, hq_low_res = predictor.predict_torch(
            point_coords=None,
            point_labels=None,
            boxes=boxes,
            multimask_output=False,
            return_logits=True,
            hq_token_only=True,
        )
    return {
        "hq_token_only_default": default,
        "pixel_values": seen["pixel_values"],
        "embeddings": predictor.features.clone(),
        # the outputs of the global-attention blocks, (B, h, w, C) each; the HQ path reads [0]
        "interm": torch.stack([f.clone() for f in predictor.interm_features]),
        "sam_boxes": boxes,
        "low_res_logits": low_res[:, 0],
        "mask_logits": logits[:, 0],
        "masks": (logits > sam.mask_threshold)[:, 0],
        "iou": iou[:, 0],
        "hq_only_low_res_logits": hq_low_res[:, 0],
        "hq_only_iou": hq_iou[:, 0],
    }


def run_main(args: argparse.Namespace) -> None:
    sam = build_sam_hq(args.variant, args.seed)
    torch.save(sam.state_dict(), args.checkpoint)
    image = np.asarray(Image.open(args.image).convert("RGB"))
    boxes = np.asarray(json.loads(Path(args.boxes).read_text()), dtype=np.float32)
    torch.save(run_sam_hq(sam, image, boxes), args.out)


def save_main(args: argparse.Namespace) -> None:
    """Only build and save the official model of a variant, no inference."""
    torch.save(build_sam_hq(args.variant, args.seed).state_dict(), args.checkpoint)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("ORACLE_THREADS", "2")))
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--image", required=True)
    run.add_argument("--boxes", required=True, help="JSON list of xyxy pixel boxes")
    run.add_argument("--out", required=True)
    save = sub.add_parser("save")
    for p in (run, save):
        p.add_argument("--variant", default="vit_b", help="vit_b, vit_l, vit_h (or vit_tiny)")
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    {"run": run_main, "save": save_main}[args.command](args)


if __name__ == "__main__":
    main()

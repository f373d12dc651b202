"""The SAM 2.1 oracle: runs the official ``sam2`` package (SAM2ImagePredictor), unchanged.

Run by the *oracle* Python (torch + torchvision, sam2 with its hydra configs), never imported by
the tests. ``run`` builds the official model of a config with random weights (every parameter
perturbed, as ``official_runner.perturb`` does), saves ``{"model": state_dict}`` as the released
``.pt`` files are, runs ``set_image`` + ``predict(box=..., multimask_output=False,
return_logits=True)`` for all boxes at once and saves what it saw with ``torch.save``.
``describe`` records, for the four official sizes, every tensor's shape and each trunk block's
hyperparameters (no weights are saved).

    python sam2_runner.py run --config sam2.1_hiera_t.yaml --checkpoint t.pt --image img.png \
        --boxes boxes.json --out out.pt
    python sam2_runner.py describe --out shapes.pt
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CONFIGS = (
    "sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l.yaml",
)


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Add noise to every parameter, so no tensor is all zeros or all ones (as
    ``official_runner.perturb``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.parameters():
            noise = torch.randn(tensor.shape, generator=gen) * 0.02
            tensor.add_(noise.to(tensor.dtype))


def build(config: str, seed: int, device: str = "cpu"):
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    return build_sam2(config_file=f"configs/sam2.1/{config}", ckpt_path=None, device=device)


def run_main(args: argparse.Namespace) -> None:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model = build(args.config, args.seed)
    perturb(model, args.seed)
    torch.save({"model": model.state_dict()}, args.checkpoint)
    image = np.asarray(Image.open(args.image).convert("RGB"))
    boxes = np.asarray(json.loads(Path(args.boxes).read_text()), dtype=np.float32)

    predictor = SAM2ImagePredictor(model)
    seen: dict = {}
    hook = model.image_encoder.register_forward_hook(
        lambda _m, args_, _out: seen.update(pixel_values=args_[0].clone())
    )
    predictor.set_image(image)
    hook.remove()
    features = predictor._features
    _, _, _, unnorm_box = predictor._prep_prompts(None, None, boxes, None, True)
    masks, iou, _ = predictor.predict(
        box=boxes, multimask_output=False, return_logits=True, normalize_coords=True
    )
    # the unclamped low-res logits (predict returns them clamped to +-32), from the same call
    with torch.no_grad():
        _, _, raw_low_res = predictor._predict(
            None, None, unnorm_box, None, multimask_output=False, return_logits=True
        )
    decoder = model.sam_mask_decoder
    masks_t = torch.from_numpy(masks).reshape(len(boxes), *masks.shape[-2:])
    torch.save(
        {
            "pixel_values": seen["pixel_values"],
            "image_embed": features["image_embed"].clone(),
            "high_res_feats": [f.clone() for f in features["high_res_feats"]],
            "boxes_1024": unnorm_box.reshape(-1, 4).clone(),
            "low_res_logits": raw_low_res[:, 0].clone(),
            "iou": torch.from_numpy(iou).reshape(len(boxes)),
            "mask_logits": masks_t,  # (N, H, W) at the original size, before the threshold
            "masks": masks_t > predictor.mask_threshold,
            "dynamic_multimask_via_stability": decoder.dynamic_multimask_via_stability,
        },
        args.out,
    )


def describe_main(args: argparse.Namespace) -> None:
    out = {}
    for config in CONFIGS:
        model = build(config, 0)  # not on "meta": Hiera's init calls .item()
        trunk = model.image_encoder.trunk
        out[config] = {
            "shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()},
            "blocks": [
                (b.dim, b.dim_out, b.attn.num_heads, b.window_size, tuple(b.q_stride or ()))
                for b in trunk.blocks
            ],
            "decoder_heads": model.sam_mask_decoder.transformer.layers[0].self_attn.num_heads,
            "stability": (
                model.sam_mask_decoder.dynamic_multimask_via_stability,
                model.sam_mask_decoder.dynamic_multimask_stability_delta,
                model.sam_mask_decoder.dynamic_multimask_stability_thresh,
            ),
        }
    torch.save(out, args.out)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("ORACLE_THREADS", "2")))
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--config", default="sam2.1_hiera_t.yaml", choices=CONFIGS)
    run.add_argument("--checkpoint", required=True)
    run.add_argument("--image", required=True)
    run.add_argument("--boxes", required=True, help="JSON list of xyxy pixel boxes")
    run.add_argument("--out", required=True)
    run.add_argument("--seed", type=int, default=0)
    describe = sub.add_parser("describe")
    describe.add_argument("--out", required=True)
    args = parser.parse_args()
    {"run": run_main, "describe": describe_main}[args.command](args)


if __name__ == "__main__":
    main()

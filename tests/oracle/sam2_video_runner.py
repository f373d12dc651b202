"""The SAM 2.1 video oracle: runs the official ``sam2`` package's ``SAM2VideoPredictor``, unchanged.

Run by the *oracle* Python (torch, sam2 with its hydra configs), never imported by the tests.
``run`` builds the official video predictor of a config with random weights (every parameter
perturbed, as ``official_runner.perturb`` does, then the object score head's output bias raised
by ``--object-bias``: with plain random weights the prompted objects score about 0, are judged
absent on frame 0 and every mask is the no-object fill, which would prove little), saves
``{"model": state_dict}`` as the released ``.pt`` files are, loads a folder of JPEG frames
with ``init_state`` (the official ``load_video_frames``), adds one box per object on frame 0
with ``add_new_points_or_box`` and records what ``propagate_in_video`` computes on every frame:
the low-resolution mask logits each object's output holds, its object score, and the logits at
the video's resolution.

    python sam2_video_runner.py run --config sam2.1_hiera_t.yaml --checkpoint t.pt \
        --frames DIR --boxes boxes.json --out out.pt
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import torch


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Add noise to every parameter (as ``official_runner.perturb``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.parameters():
            noise = torch.randn(tensor.shape, generator=gen) * 0.02
            tensor.add_(noise.to(tensor.dtype))


def run_main(args: argparse.Namespace) -> None:
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(args.seed)
    predictor = build_sam2_video_predictor(f"configs/sam2.1/{args.config}", None, device="cpu")
    perturb(predictor, args.seed)
    with torch.no_grad():  # the prompted objects present (random weights score them about 0)
        predictor.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(args.object_bias)
    torch.save({"model": predictor.state_dict()}, args.checkpoint)
    boxes = json.loads(Path(args.boxes).read_text())
    with warnings.catch_warnings(record=True) as caught:  # hole filling: no CUDA extension
        warnings.simplefilter("always")
        state = predictor.init_state(video_path=args.frames)
        for i, box in enumerate(boxes):
            predictor.add_new_points_or_box(state, frame_idx=0, obj_id=i + 1, box=box)
        low_res, scores, video_res = [], [], []
        for t, obj_ids, masks in predictor.propagate_in_video(state):
            per_obj = []
            per_score = []
            for obj_idx in range(len(obj_ids)):
                outputs = state["output_dict_per_obj"][obj_idx]
                out = outputs["cond_frame_outputs"].get(t) or outputs["non_cond_frame_outputs"][t]
                per_obj.append(out["pred_masks"][0, 0].clone())
                per_score.append(out["object_score_logits"].reshape(()).clone())
            low_res.append(torch.stack(per_obj))
            scores.append(torch.stack(per_score))
            video_res.append(masks[:, 0].clone())
    images = state["images"]
    torch.save(
        {
            "pixel_values": torch.stack([images[0], images[len(images) - 1]]).clone(),
            "low_res_logits": torch.stack(low_res),  # (T, N, S/4, S/4)
            "object_scores": torch.stack(scores),  # (T, N)
            "mask_logits": torch.stack(video_res),  # (T, N, H, W) before the > 0 threshold
            "fill_hole_area": predictor.fill_hole_area,
            "hole_filling_skipped": any(
                "Skipping the post-processing" in str(w.message) for w in caught
            ),
            "num_frames": state["num_frames"],
        },
        args.out,
    )


def main() -> None:
    torch.set_num_threads(int(os.environ.get("ORACLE_THREADS", "2")))
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--config", default="sam2.1_hiera_t.yaml")
    run.add_argument("--checkpoint", required=True)
    run.add_argument("--frames", required=True, help="folder of 00000.jpg, 00001.jpg, ...")
    run.add_argument("--boxes", required=True, help="JSON list of xyxy pixel boxes on frame 0")
    run.add_argument("--out", required=True)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--object-bias",
        type=float,
        default=2.0,
        help="added to the object score head's output bias after the perturbation",
    )
    args = parser.parse_args()
    {"run": run_main}[args.command](args)


if __name__ == "__main__":
    main()

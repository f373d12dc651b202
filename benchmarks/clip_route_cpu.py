"""Seconds per image of the CLIP route (SAM point grid -> candidates -> CLIP crop scoring).

Full-size architectures with random weights (nothing can be downloaded here): CLIP ViT-B/32
(``CLIPConfig()`` defaults, 151M parameters) and SAM ViT-B (the folder ``e2e_cpu.py`` builds, with
its image-encoder weights at the real scale). The CLIP tokenizer is the byte-level one the tests
build offline (``tests/tiny_clip.py``); it changes token ids, not the amount of work.

Random SAM weights predict near-zero IoU for every mask, so segment-anything's filters (predicted
IoU > 0.88, stability > 0.95) keep nothing; the run therefore opens the filters (both thresholds
-1) so that the whole path runs, and reports how many candidates survived box NMS. That count is
a property of random weights, not of real images (real SAM keeps tens to ~100 regions), so CLIP's
cost is also measured on a fixed batch of 64 crops.

    python benchmarks/clip_route_cpu.py [--repeats 3] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the offline CLIP tokenizer builder

logger = logging.getLogger("clip_route_cpu")

CLIP_DIR = "clip-vit-b32-random"


def build_clip(folder: Path, seed: int) -> Path:
    """CLIP ViT-B/32 with random weights, a byte-level tokenizer and the default processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from tiny_clip import write_clip_tokenizer

    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = write_clip_tokenizer(folder)
    config = CLIPConfig()
    for key, value in (
        ("bos_token_id", tokenizer.bos_token_id),
        ("eos_token_id", tokenizer.eos_token_id),
        ("pad_token_id", tokenizer.pad_token_id),
    ):
        setattr(config.text_config, key, value)
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessorPil().save_pretrained(folder)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE / "out")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import numpy as np
    import torch
    from _machine import machine_line, versions, versions_text
    from _synthetic import ensure_models, find_vocab, make_image

    from grounded_seg import GroundedSAM
    from grounded_seg.segmenters.sam_auto import AutoMaskConfig

    torch.set_num_threads(args.threads)
    _, sam_dir = ensure_models(args.out_dir, args.seed, find_vocab(None), args.threads)
    clip_dir = build_clip(args.out_dir / CLIP_DIR, args.seed)
    prompt = ["cat", "dog", "potted plant"]
    rows = []
    for side in (16, 32):
        config = AutoMaskConfig(points_per_side=side, pred_iou_thresh=-1, stability_score_thresh=-1)
        gs = GroundedSAM(
            detector=clip_dir,
            segmenter=sam_dir,
            device=args.device,
            proposer="clip",
            proposer_options={"auto_config": config},
        )
        times, second, counts = [], [], []
        for run in range(args.repeats + 1):  # run 0 warms up
            image = make_image(args.seed + run)
            start = time.perf_counter()
            gs.set_image(image)
            det = gs.predict(prompt, box_threshold=0.0)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            gs.predict(["bird", "car"], box_threshold=0.0)
            warm = time.perf_counter() - start
            candidates = len(gs._proposer_state.candidates)
            logger.info("%dx%d grid run %d: %.2f s, %d candidates, %d kept; second prompt %.3f s",
                        side, side, run, cold, candidates, len(det), warm)  # fmt: skip
            if run:
                times.append(cold)
                second.append(warm)
                counts.append(candidates)
        rows.append((f"{side}x{side} point grid ({side * side} prompts)", times, second, counts))

    scorer = gs.proposer.scorer
    rng = np.random.default_rng(args.seed)
    crops = [rng.integers(0, 255, (int(h), int(w), 3), dtype=np.uint8)
             for h, w in rng.integers(40, 400, (64, 2))]  # fmt: skip
    scorer.embed_images(crops[:8])  # warm-up
    crop_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        scorer.embed_images(crops)
        crop_times.append(time.perf_counter() - start)

    lines = [
        f"- machine: {machine_line(torch.device(args.device))}",
        "- versions: " + versions_text(versions()),
        f"- command: `python benchmarks/clip_route_cpu.py --repeats {args.repeats}`",
        "- models: CLIP ViT-B/32 and SAM ViT-B, full size, random weights; filters opened "
        "(random SAM keeps nothing at IoU 0.88 / stability 0.95); 1200x800 image",
        "",
        "| case | median s / image | min s | max s | 2nd prompt s (median) | candidates |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, times, second, counts in rows:
        lines.append(
            f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} | "
            f"{statistics.median(second):.3f} | {sorted(set(counts))} |"
        )
    lines.append(
        f"| CLIP ViT-B/32, 64 crops, one batch | {statistics.median(crop_times):.2f} | "
        f"{min(crop_times):.2f} | {max(crop_times):.2f} | | |"
    )
    table = "\n".join(lines)
    print(table)
    results = HERE / "RESULTS.md"
    text = results.read_text() if results.is_file() else "# Benchmarks\n"
    begin, end = "<!-- BEGIN clip_route_cpu -->", "<!-- END clip_route_cpu -->"
    block = f"{begin}\n## CLIP route, {args.device}\n\n{table}\n{end}"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    results.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

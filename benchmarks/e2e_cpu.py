"""End-to-end timing of ``grounded_seg`` with full-size, randomly initialised models.

No real weights can be downloaded here, so the two models are built from their default configs
(the real architectures and sizes) with random weights, saved once in the Hugging Face format and
then loaded by ``GroundedSAM`` from those folders exactly as real checkpoints would be:

* detector: ``GroundingDinoConfig()`` defaults = Grounding DINO with a Swin-T image backbone and a
  BERT-base text encoder (~172M parameters), ``GroundingDinoImageProcessorPil()`` defaults (short
  side 800, long side at most 1333) and ``BertTokenizer`` on the real bert-base-uncased vocabulary;
* segmenter: ``SamConfig()`` defaults = SAM ViT-B (~94M parameters), ``SamImageProcessorPil()``
  defaults (longest side 1024, padded to 1024 x 1024).

Random weights need two corrections to time what real weights would cost (``config.json`` stays
the defaults; only weight values change, never shapes or FLOPs):

* ``SamVisionConfig`` initialises with ``initializer_range=1e-10``: the random ViT-B then carries
  activations so small that float32 subnormals appear in its attention and MLPs, and x86 handles
  those ~100x slower (the image encoder took ~120 s instead of ~8 s on 2 cores). The image
  encoder's Linear/Conv weights are re-drawn from N(0, 0.02) (``SamConfig().initializer_range``),
  the scale of real weights;
* Grounding DINO's token logits are huge with random weights (std ~13; the best logit of ~220 of
  the 900 queries rounds to sigmoid = 1.0 in float32, so no threshold can pick a few boxes). The
  affine parameters of the decoder's final LayerNorm (``model.decoder.layer_norm``, which feeds
  only the class and box heads, not the decoder recurrence) are scaled by ``DECODER_NORM_SCALE``,
  giving logits of std ~0.5 and distinct scores.

The box threshold is then calibrated per prompt: the proposals are computed once at threshold 0
and the threshold is set midway between the N-th and (N+1)-th highest score, so that exactly N
boxes (``--boxes``, default 3) reach SAM.

What is timed (``time.perf_counter``, one warm-up run first, then ``--repeats`` runs):

* model load: ``GroundedSAM(detector=<folder>, segmenter=<folder>, device=...)``;
* cold call: ``set_image(image)`` + ``predict(prompt)`` on a fresh per-image state (what one
  ``segment()`` call does once the models are warm): Grounding DINO with its image backbone, then
  SAM's image encoder and mask decoder;
* second prompt: ``predict(other prompt)`` on the same image: the backbone output and the SAM
  image embedding are reused from the per-image cache.

The stages inside a call are timed by wrapping the bound methods of the loaded proposer and
segmenter instances (``encode_image``, ``propose``, ``image_embeddings``, ``segment``), so the
breakdown comes from the very calls ``GroundedSAM.predict`` makes, with no second code path. Each
stage also records the process's CPU time: CPU/wall near the thread count means the stage had
the cores to itself; much lower means it waited (serial code, or another process on the cores).

Usage (from the repository root)::

    python benchmarks/e2e_cpu.py --repeats 3               # CPU, 2 threads
    python benchmarks/e2e_cpu.py --device cuda --repeats 10

The table is printed to stdout and written into ``benchmarks/RESULTS.md`` (one block per device
type, replaced on each run; text outside the blocks is kept).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _e2e_report import markdown_table
from _e2e_timing import (
    ZERO,
    Clock,
    Sample,
    StageTimer,
    calibrate_threshold,
    instrument,
    peak_rss_mib,
)
from _machine import machine_line, set_offline_env, versions, versions_text

# write_results and SAM_VISION_INIT_STD are also imported from here by other benchmarks
from _results import write_results
from _synthetic import (
    DECODER_NORM_SCALE,
    SAM_VISION_INIT_STD,
    ensure_models,
    find_vocab,
    make_image,
)

logger = logging.getLogger("e2e_cpu")

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=HERE / "out",
        help="where the random models are saved and reused (default: benchmarks/out, git-ignored)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--dtype", default="float32", help="float32 (CUDA: float16, bfloat16)")
    parser.add_argument("--seed", type=int, default=0, help="model weights and test image seed")
    parser.add_argument("--boxes", type=int, default=3, help="boxes kept per prompt (for SAM)")
    parser.add_argument("--prompt", default="a cat. a dog.", help="prompt of the cold call")
    parser.add_argument(
        "--second-prompt", default="a bird. a car.", help="prompt answered from the cache"
    )
    parser.add_argument(
        "--vocab",
        type=Path,
        default=None,
        help="bert-base-uncased vocab.txt (default: rebuilt by tests/bert_vocab.py)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=HERE / "RESULTS.md",
        help="markdown file to write/update (default: benchmarks/RESULTS.md)",
    )
    parser.add_argument("--no-results", action="store_true", help="do not write the results file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.boxes < 1:
        parser.error("--boxes must be at least 1")
    return args


def time_loads(
    args: argparse.Namespace, clock: Clock, gdino_dir: Path, sam_dir: Path, device: Any
) -> tuple[Any, list[Sample]]:
    """(a) model load: one warm-up (fills the page cache), then the timed loads; the last
    pipeline loaded and the timed spans."""
    from grounded_seg import GroundedSAM

    loads: list[Sample] = []
    gs = None
    for i in range(args.repeats + 1):
        gs = None
        gc.collect()
        spans: list[Sample] = []
        with clock.span(spans):
            gs = GroundedSAM(detector=gdino_dir, segmenter=sam_dir, device=device, dtype=args.dtype)
        logger.info(
            "load %s: %.3f s", "warm-up" if i == 0 else f"{i}/{args.repeats}", spans[0].wall
        )
        if i:
            loads.append(spans[0])
    assert gs is not None
    return gs, loads


def time_calls(
    args: argparse.Namespace,
    gs: Any,
    image: Any,
    thresholds: dict[str, float],
    clock: Clock,
    results: dict[str, list[Sample]],
) -> tuple[dict[str, int], Sample]:
    """(b) the cold call and (c) the second prompt, one warm-up then ``args.repeats`` timed runs,
    stage by stage into ``results``; the boxes per row and the span of all the runs."""
    timer = StageTimer(clock)
    instrument(gs, timer)
    boxes: dict[str, int] = {}
    infer: list[Sample] = []
    with clock.span(infer):
        for i in range(args.repeats + 1):
            calls_before = gs.segmenter.encoder_calls

            # (b) cold: a fresh per-image state (no backbone output, no SAM embedding cached).
            timer.take()
            cold_span: list[Sample] = []
            with clock.span(cold_span):
                gs.set_image(image)
                cold = gs.predict(args.prompt, box_threshold=thresholds[args.prompt])
            cold_stages = timer.take()
            if gs.segmenter.encoder_calls != calls_before + 1:
                raise SystemExit("the cold call did not run the SAM image encoder exactly once")

            # (c) second prompt on the same image: predict only, from the per-image cache.
            warm_span: list[Sample] = []
            with clock.span(warm_span):
                warm = gs.predict(args.second_prompt, box_threshold=thresholds[args.second_prompt])
            warm_stages = timer.take()
            if gs.segmenter.encoder_calls != calls_before + 1:
                raise SystemExit("the second prompt ran the SAM image encoder again (cache miss)")
            if len(cold) != args.boxes or len(warm) != args.boxes:
                raise SystemExit(f"expected {args.boxes} boxes, got {len(cold)} and {len(warm)}")

            logger.info(
                "run %s: cold %.3f s (%d boxes), second prompt %.3f s (%d boxes)",
                "warm-up" if i == 0 else f"{i}/{args.repeats}",
                cold_span[0].wall,
                len(cold),
                warm_span[0].wall,
                len(warm),
            )
            if i == 0:
                continue
            boxes["cold_total"], boxes["warm_total"] = len(cold), len(warm)
            cold_parts = {
                "cold_gdino_pre": cold_stages["gdino_pre"],
                "cold_gdino_propose": cold_stages["gdino_propose"],
                "cold_sam_pre": cold_stages["sam_pre"],
                "cold_sam_embed": cold_stages["sam_embed"],
                "cold_sam_decode": cold_stages["sam_segment"] - cold_stages["sam_embed"],
            }
            results["cold_total"].append(cold_span[0])
            for key, value in cold_parts.items():
                results[key].append(value)
            results["cold_other"].append(cold_span[0] - sum(cold_parts.values(), ZERO))
            warm_propose, warm_segment = warm_stages["gdino_propose"], warm_stages["sam_segment"]
            results["warm_total"].append(warm_span[0])
            results["warm_gdino_propose"].append(warm_propose)
            results["warm_sam_decode"].append(warm_segment)  # includes the cached-embedding get
            results["warm_other"].append(warm_span[0] - warm_propose - warm_segment)
    return boxes, infer[0]


def run(args: argparse.Namespace) -> int:
    wall_start = time.perf_counter()
    set_offline_env(args.threads)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None

    import torch

    torch.set_num_threads(args.threads)
    from _stages import synchronizer

    from grounded_seg.devices import resolve_device

    device = resolve_device(args.device)
    clock = Clock(synchronizer(device))
    vocab = find_vocab(args.vocab)
    gdino_dir, sam_dir = ensure_models(args.out_dir.resolve(), args.seed, vocab, args.threads)

    image = make_image(args.seed)
    logger.info(
        "test image %dx%d (W x H); prompts %r (cold) and %r (cached); device %s, %d threads",
        image.shape[1],
        image.shape[0],
        args.prompt,
        args.second_prompt,
        device,
        torch.get_num_threads(),
    )

    results: dict[str, list[Sample]] = defaultdict(list)
    gs, results["load"] = time_loads(args, clock, gdino_dir, sam_dir, device)
    rss_after_load = peak_rss_mib()
    params = {
        "detector": sum(p.numel() for p in gs.proposer.model.parameters()),
        "segmenter": sum(p.numel() for p in gs.segmenter.model.parameters()),
    }
    logger.info(
        "parameters: detector %.1fM, segmenter %.1fM",
        params["detector"] / 1e6,
        params["segmenter"] / 1e6,
    )

    thresholds = {}
    for prompt in (args.prompt, args.second_prompt):
        threshold, top = calibrate_threshold(gs, image, prompt, args.boxes)
        thresholds[prompt] = threshold
        logger.info(
            "box_threshold %.6f keeps %d boxes for %r (top scores %s)",
            threshold,
            args.boxes,
            prompt,
            ", ".join(f"{s:.6f}" for s in top),
        )

    boxes, infer = time_calls(args, gs, image, thresholds, clock, results)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    rss_end = peak_rss_mib()
    total_wall = time.perf_counter() - wall_start

    # ---------------------------------------------------------------- report
    table = markdown_table(results, boxes)
    command = "python " + shlex.join(sys.argv)
    notes = [
        f"- machine: {machine_line(device)}",
        "- versions: " + versions_text(versions()),
        f"- device: {device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}",
        f"- command: `{command}`",
        f"- models (random weights, seed {args.seed}, default configs): Grounding DINO Swin-T + "
        f"BERT-base, {params['detector']:,} parameters (decoder's final LayerNorm scaled by "
        f"{DECODER_NORM_SCALE} so the random logits are not saturated); SAM ViT-B, "
        f"{params['segmenter']:,} parameters (image encoder weights drawn with std "
        f"{SAM_VISION_INIT_STD}, not the config's 1e-10, which makes float32 subnormals)",
        f"- input: {image.shape[1]}x{image.shape[0]} (W x H) synthetic RGB image; cold prompt "
        f"`{args.prompt}` (box_threshold {thresholds[args.prompt]:.6f}), second prompt "
        f"`{args.second_prompt}` (box_threshold {thresholds[args.second_prompt]:.6f}); "
        f"thresholds calibrated so that exactly {args.boxes} boxes reach SAM",
        f"- statistics: median, min and max of wall time over {args.repeats} timed runs after "
        f"1 warm-up; CPU/wall = median of (process CPU time / wall time): about "
        f"{args.threads} when a stage had its {args.threads} threads' cores to itself",
        f"- peak RSS (ru_maxrss): {rss_after_load:,.0f} MiB after the model loads, "
        f"{rss_end:,.0f} MiB at the end (the models are built in a child process, not counted)",
        f"- all inference runs (warm-up included): {infer.wall:.1f} s wall, "
        f"{infer.cpu / infer.wall:.2f} CPU/wall",
    ]
    if load_before is not None and load_after is not None:
        notes.append(
            "- load average (1/5/15 min) at start "
            + "/".join(f"{v:.2f}" for v in load_before)
            + ", at end "
            + "/".join(f"{v:.2f}" for v in load_after)
        )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        notes.append(f"- peak CUDA memory allocated: {peak:,.0f} MiB")
    notes.append(f"- total wall time of the script: {total_wall:.1f} s")
    block = "\n".join(
        [
            f"## End-to-end, {device.type}, {time.strftime('%Y-%m-%d %H:%M %Z')}",
            "",
            *notes,
            "",
            table,
            "",
        ]
    )
    print(table)
    print()
    print("\n".join(notes))
    if not args.no_results:
        write_results(args.results, device.type, block)
        logger.info("results written to %s", args.results)
    logger.info("total wall time %.1f s", total_wall)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

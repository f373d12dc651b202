"""grounded_seg against the reference Grounded-SAM pipeline: speed, memory and FLOPs, one run.

The reference is the official path users would otherwise run: groundingdino-py's ``predict``
then segment-anything's ``SamPredictor`` (``set_image`` + ``predict_torch`` with every box in
one call), fp32, as Grounded-Segment-Anything's demo strings them together. It needs the
official packages' own environment (torch + torchvision, transformers 4.x), so it runs in a
child process (``reference_worker.py``) started with that environment's Python; both pipelines
stay loaded for the whole run and are timed alternately on the same inputs (reference first on
even repeats, grounded_seg first on odd ones), after a warm-up of each.

Same weights: the worker builds the official Grounding DINO Swin-T (BERT-base) and SAM with
random weights (every tensor perturbed; ``tests/oracle/official_runner.py``) and saves them as
official ``.pth`` files, which grounded_seg loads as a user's files would load
(``GroundedSAM(detector="x.pth", segmenter="y.pth")``: converted once, then cached). Dense
compute does not depend on the weight values. Box thresholds are calibrated so that 3 boxes reach
SAM in both pipelines (random weights make the top scores nearly tie; see ``common_threshold``).
Outputs are compared in the same run (boxes matched to the nearest box;
differing mask pixels counted), so a speed-up cannot come from doing less.

Cases:

1. one image, one prompt, GDINO-T + SAM-B, 3 boxes;
2. the same with SAM-H (``--slow``);
3. one image, five prompts: grounded_seg's per-image cache (``set_image`` once, five
   ``predict``), against five cold ``segment()`` calls (warm models) and five reference calls;
4. eight images, one prompt each (thresholds calibrated per image: 3 boxes each);
5. no box found: grounded_seg does not run SAM (the reference, like the demo, embeds the image
   anyway).

Per stage (forward hooks on the same modules in both models; ``_stages.py``): Grounding DINO
image backbone, text backbone, feature enhancer, decoder; SAM image encoder, prompt encoder +
mask decoder; the rest (image decoding, preprocessing, query selection, post-processing) is the
total minus the stages. FLOPs per stage come from one extra pass under
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; deformable
attention's ``grid_sample`` is not counted). Achieved FLOP/s is shown against a measured dense
fp32 matmul on the same device and threads. Peak memory is the process's peak RSS (CPU; reset
before each run through ``/proc/self/clear_refs``) or ``torch.cuda.max_memory_allocated``.

Usage (the oracle environment from ``tests/oracle/make_env.sh``; ``benchmarks/run.sh`` does
everything from a fresh clone)::

    python benchmarks/vs_reference.py --oracle-python ORACLE/bin/python --repeats 3
    python benchmarks/vs_reference.py --device cuda --slow --repeats 10

The tables are printed and written into ``benchmarks/RESULTS.md`` (one block per device type).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import set_offline_env  # noqa: E402
from _reference_client import ReferenceProcess, run_reference  # noqa: E402
from _results import write_results  # noqa: E402
from _synthetic import find_vocab  # noqa: E402
from _vs_cases import (  # noqa: E402
    N_BOXES,
    Calibration,
    Item,
    common_threshold,
    fast_case_items,
    make_cases,
    ranked_scores,
    write_images,
)
from _vs_report import report  # noqa: E402
from _vs_runs import Run, measured_matmul_tflops, run_grounded_seg  # noqa: E402

logger = logging.getLogger("vs_reference")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    parser.add_argument(
        "--cases", default="1,3,4,5", help="comma-separated case numbers (default 1,3,4,5)"
    )
    parser.add_argument("--slow", action="store_true", help="add case 2 (SAM-H)")
    parser.add_argument(
        "--oracle-python",
        default=os.environ.get("GROUNDED_SEG_ORACLE_PYTHON"),
        help="python of the official packages' environment (default $GROUNDED_SEG_ORACLE_PYTHON)",
    )
    parser.add_argument("--vocab", type=Path, help="bert-base-uncased vocab.txt")
    parser.add_argument("--workdir", type=Path, default=HERE / "out" / "vs_reference")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--reuse-memory",
        action="store_true",
        help="both processes keep freed memory in the heap (glibc malloc mmap/trim thresholds, "
        "grounded_seg.reuse_freed_memory); its own block in RESULTS.md",
    )
    parser.add_argument(
        "--fast",
        default="bfloat16",
        help="also time grounded_seg's half-precision fast path with this dtype (autocast; "
        "default bfloat16; 'none' to skip)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's nominal peak (TFLOP/s) to compare with; default: a measured matmul",
    )
    args = parser.parse_args(argv)
    args.cases = sorted(
        {int(c) for c in args.cases.split(",") if c.strip()} | ({2} if args.slow else set())
    )
    if not set(args.cases) <= {1, 2, 3, 4, 5}:
        parser.error(f"--cases: expected numbers 1 to 5, got {args.cases}")
    args.fast = None if args.fast.strip().lower() in ("", "none", "float32", "fp32") else args.fast
    if args.repeats < 1:
        parser.error(f"--repeats: expected at least 1, got {args.repeats}")
    if not args.oracle_python or not Path(args.oracle_python).is_file():
        parser.error(
            "the reference needs the official packages' environment: pass --oracle-python or set "
            "GROUNDED_SEG_ORACLE_PYTHON (tests/oracle/make_env.sh builds it; benchmarks/run.sh "
            "does everything)"
        )
    return args


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    script_start = time.perf_counter()
    set_offline_env(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    import grounded_seg.api as api
    from grounded_seg import GroundedSAM
    from grounded_seg.devices import resolve_device

    device = resolve_device(args.device)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["GROUNDED_SEG_CACHE"] = str(workdir / "cache")  # the converted copies live here
    if args.reuse_memory:  # the same allocator settings on both sides: ours now, the worker's
        from grounded_seg import reuse_freed_memory
        from grounded_seg.allocator import ENV  # through its environment, read at its start

        if not reuse_freed_memory():
            raise SystemExit("--reuse-memory: this platform's malloc has no such settings")
        os.environ.update(ENV)

    image_paths = write_images(workdir)

    ref = ReferenceProcess(args.oracle_python, workdir / "reference.log")
    try:
        logger.info("building the official models (random weights) in the reference process")
        setup = ref.call(
            "setup",
            workdir=str(workdir),
            vocab=str(find_vocab(args.vocab)),
            device=str(device),
            threads=args.threads,
            seed=0,
        )
        os.environ["GROUNDED_SEG_BERT_TOKENIZER"] = setup["bert"]
        sam_b = ref.call("sam", variant="vit_b", workdir=str(workdir))["checkpoint"]
        detector, segmenter = setup["gdino"], sam_b
        load_start = time.perf_counter()
        # the very instance segment() keeps warm for these arguments, so the "cold segment()"
        # runs of case 3 and the per-image-cache runs share one copy of the models
        # nms_threshold None: the official pipeline has no NMS, and the outputs are compared
        key = (detector, segmenter, str(device), None, "grounding_dino", None)
        proposer, sam = api._warm.get(key)
        gs = GroundedSAM(detector=proposer, segmenter=sam)
        load_seconds = time.perf_counter() - load_start
        cold = {
            "detector": detector,
            "segmenter": segmenter,
            "device": str(device),
            "nms_threshold": None,
        }

        calibrations: list[Calibration] = []

        def threshold(image: str, prompt: str) -> float:
            answer = ref.call("calibrate", image=image, prompt=prompt, boxes=N_BOXES)
            calibration = common_threshold(answer["ranked"], ranked_scores(gs, image, prompt))
            calibrations.append(calibration)
            return calibration.threshold

        logger.info("calibrating thresholds")
        one, cases = make_cases(args.cases, image_paths, threshold)

        pipelines = {"vit_b": gs}
        if 2 in cases:
            sam_h = ref.call("sam", variant="vit_h", workdir=str(workdir))["checkpoint"]
            pipelines["vit_h"] = GroundedSAM(detector=gs.proposer, segmenter=sam_h, device=device)

        fast_pipelines = {}
        fast_items: dict[int, list[Item]] = {}
        if args.fast:
            fast_pipelines["vit_b"] = GroundedSAM(
                detector=detector,
                segmenter=segmenter,
                device=device,
                dtype=args.fast,
                proposer_options={"nms_threshold": None},
            )
            if 2 in cases:
                fast_pipelines["vit_h"] = GroundedSAM(
                    detector=fast_pipelines["vit_b"].proposer,
                    segmenter=sam_h,
                    device=device,
                    dtype=args.fast,
                )
            fast_items = fast_case_items(fast_pipelines["vit_b"], cases)

        logger.info("warm-up")
        for sam, pipeline in pipelines.items():
            run_reference(ref, one, sam, workdir / "warmup.npz")
            run_grounded_seg(pipeline, one, device)
            if sam in fast_pipelines:
                run_grounded_seg(fast_pipelines[sam], fast_items[min(fast_items)][:1], device)
        if 3 in cases:
            run_grounded_seg(gs, one, device, cold=cold)

        peak = args.peak_tflops or measured_matmul_tflops(device)
        logger.info("dense fp32 matmul: %.3f TFLOP/s", peak)
        fast_peak = None
        if args.fast:
            from grounded_seg.devices import resolve_dtype

            fast_peak = measured_matmul_tflops(device, dtype=resolve_dtype(args.fast, device))
            logger.info("dense %s matmul: %.3f TFLOP/s", args.fast, fast_peak)
        logger.info("counting FLOPs")
        flop_runs = {}
        for sam, pipeline in pipelines.items():
            flop_runs[sam] = (
                run_grounded_seg(pipeline, one, device, flops=True),
                run_reference(ref, one, sam, workdir / "flops.npz", flops=True),
            )

        results = time_cases(
            args, ref, cases, pipelines, fast_pipelines, fast_items, cold, device, workdir
        )
        info_ref = setup["versions"]
    finally:
        ref.close()

    block = report(
        args,
        device,
        cases,
        results,
        flop_runs,
        (peak, fast_peak),
        info_ref,
        load_seconds,
        calibrations,
    )
    block += f"\n- total wall time of the script: {time.perf_counter() - script_start:.0f} s\n"
    print(block)
    name = "vs_reference-reuse-memory" if args.reuse_memory else "vs_reference"
    write_results(args.results, device.type, block, name=name)
    return 0


def time_cases(
    args: argparse.Namespace,
    ref: ReferenceProcess,
    cases: dict[int, dict[str, Any]],
    pipelines: dict[str, Any],
    fast_pipelines: dict[str, Any],
    fast_items: dict[int, list[Item]],
    cold: dict[str, Any],
    device: Any,
    workdir: Path,
) -> dict[int, dict[str, list[Run]]]:
    """``args.repeats`` timed runs of every pipeline on every case, alternating: the pipelines'
    order is reversed on odd repeats."""
    results: dict[int, dict[str, list[Run]]] = {}
    for number, case in cases.items():
        logger.info("case %d: %s", number, case["title"])
        runs: dict[str, list[Run]] = {"reference": [], "grounded_seg": []}
        if case.get("cold"):
            runs["grounded_seg, cold segment() calls"] = []
        fast_name = f"grounded_seg {args.fast} (fast path)"
        if case["sam"] in fast_pipelines:
            runs[fast_name] = []
        pipeline = pipelines[case["sam"]]
        for repeat in range(args.repeats):
            order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
            for name in order:
                if name == "reference":
                    out = workdir / f"case{number}.npz"
                    runs[name].append(run_reference(ref, case["items"], case["sam"], out))
                elif name == "grounded_seg":
                    runs[name].append(run_grounded_seg(pipeline, case["items"], device))
                elif name == fast_name:
                    fast = fast_pipelines[case["sam"]]
                    runs[name].append(run_grounded_seg(fast, fast_items[number], device))
                else:
                    runs[name].append(run_grounded_seg(pipeline, case["items"], device, cold=cold))
                logger.info("  %s: %.2f s", name, runs[name][-1].seconds)
        results[number] = runs
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

"""The block ``vs_reference.py`` prints and writes: the cases' table, the targets, the fast
path, and the per-stage time and FLOPs."""

from __future__ import annotations

import sys
import time
from typing import Any

from _machine import machine_line, versions, versions_text
from _stages import STAGES
from _vs_cases import BATCH, FIVE_PROMPTS, N_BOXES, PROMPT, Calibration
from _vs_runs import Run, compare, median


def mib(n: float) -> str:
    """Bytes as ``1,234 MiB``."""
    return f"{n / 2**20:,.0f} MiB"


def stage_rows(ours: list[Run], ref: list[Run], flops: tuple[Run, Run], peak: float) -> list[str]:
    """Per stage: both sides' median seconds, the counted FLOPs (``flops``: one counted run of
    grounded_seg, one of the reference) and grounded_seg's rate against ``peak`` (TFLOP/s)."""
    lines = [
        "| stage | reference s | grounded_seg s | speed-up | GFLOP reference / grounded_seg "
        f"| grounded_seg GFLOP/s | % of {peak:.2f} TFLOP/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ours_flops, ref_flops = flops[0].flops or {}, flops[1].flops or {}
    for stage in (*STAGES, "rest", "total"):
        if stage == "total":
            o, r = median([x.seconds for x in ours]), median([x.seconds for x in ref])
        elif stage == "rest":
            o = median([x.seconds - sum(x.stages.values()) for x in ours])
            r = median([x.seconds - sum(x.stages.values()) for x in ref])
        else:
            o, r = median([x.stages[stage] for x in ours]), median([x.stages[stage] for x in ref])
        of = sum(ours_flops.values()) if stage == "total" else ours_flops.get(stage, 0)
        rf = sum(ref_flops.values()) if stage == "total" else ref_flops.get(stage, 0)
        counted = f"{rf / 1e9:,.1f} / {of / 1e9:,.1f}" if stage != "rest" else ""
        rate = of / o if o > 1e-4 and of else 0.0
        rate_cells = f"{rate / 1e9:,.1f} | {100 * rate / (peak * 1e12):.0f}%" if rate else " | "
        ratio = f"{r / o:.2f}x" if o > 1e-4 else ""
        name = f"**{stage}**" if stage == "total" else stage
        lines.append(f"| {name} | {r:.3f} | {o:.3f} | {ratio} | {counted} | {rate_cells} |")
    return lines


def target_lines(device: Any, results: dict[int, dict[str, list[Run]]]) -> list[str]:
    """The issue's CPU targets, as measured in this run."""
    if device.type != "cpu":
        return []

    def med(case: int, name: str) -> float:
        return median([r.seconds for r in results[case][name]])

    lines = []
    if 1 in results:
        ratio = med(1, "reference") / med(1, "grounded_seg")
        verdict = "met" if ratio >= 1.3 else "missed"
        lines.append(f"- target, case 1 >= 1.30x the reference: {ratio:.2f}x ({verdict})")
    if 3 in results:
        ratio = med(3, "grounded_seg, cold segment() calls") / med(3, "grounded_seg")
        verdict = "met" if ratio >= 3 else "missed"
        lines.append(
            f"- target, case 3 >= 3.00x five cold `segment()` calls: {ratio:.2f}x ({verdict})"
        )
    return lines


def fast_path_lines(
    dtype: str, results: dict[int, dict[str, list[Run]]], flop_runs: dict, fast_peak: float
) -> list[str]:
    """The fast path against the reference, and its SAM encoder against the dense half-precision
    matmul rate (the FLOPs are those of the fp32 pass: autocast changes the precision, not the
    arithmetic)."""
    name = f"grounded_seg {dtype} (fast path)"
    lines = []
    for number, runs in results.items():
        if name not in runs or not runs[name][-1].outputs:
            continue
        ref = median([r.seconds for r in runs["reference"]])
        fast = median([r.seconds for r in runs[name]])
        fp32 = median([r.seconds for r in runs["grounded_seg"]])
        same = compare(runs[name][-1], runs["grounded_seg"][-1]).line()
        lines.append(
            f"- fast path, case {number}: {ref / fast:.2f}x the reference fp32, {fp32 / fast:.2f}x "
            f"grounded_seg fp32; against grounded_seg fp32: {same}"
        )
    for sam, (ours_flops, _) in flop_runs.items():
        number = 2 if sam == "vit_h" else 1
        if number not in results or name not in results[number]:
            continue
        stage = "sam image encoder"
        seconds = median([r.stages[stage] for r in results[number][name]])
        flops = (ours_flops.flops or {}).get(stage, 0)
        if seconds > 0 and flops:
            rate = flops / seconds / 1e12
            lines.append(
                f"- fast path, case {number} SAM encoder: {flops / 1e9:,.1f} GFLOP in "
                f"{seconds:.3f} s = {rate:.3f} TFLOP/s, {100 * rate / fast_peak:.0f}% of the "
                f"measured dense {dtype} matmul ({fast_peak:.2f} TFLOP/s)"
            )
    return lines


def calibration_line(calibrations: list[Calibration]) -> str:
    """How the fp32 thresholds split both sides' scores, for the block's header."""
    if not calibrations:
        return "- box thresholds: none calibrated"
    common = [c for c in calibrations if c.common_gap]
    line = (
        f"- box thresholds ({len(calibrations)} image/prompt pairs): midway in the overlap of "
        f"both pipelines' gaps between their {N_BOXES} best query scores and the next one "
        f"({len(common)} of {len(calibrations)} overlap); the two sides' {N_BOXES + 1} best "
        f"scores differ by up to {max(c.score_diff for c in calibrations):.1e} (float32 "
        "rounding through random weights); the nearest of those scores lies "
        f"{min(c.margin for c in calibrations):.1e} from its threshold"
    )
    if len(common) < len(calibrations):
        line += "; where the gaps do not overlap, the reference's midway (box counts may differ)"
    return line


def report(
    args, device, cases, results, flop_runs, peaks, info_ref, load_seconds, calibrations
) -> str:
    peak, fast_peak = peaks
    ours_versions = versions_text(versions())
    ref_versions = versions_text(info_ref)
    peak_source = "nominal, --peak-tflops" if args.peak_tflops else "measured: dense fp32 matmul"
    command = "python benchmarks/vs_reference.py " + " ".join(sys.argv[1:])
    lines = [
        f"## grounded_seg vs the reference Grounded-SAM pipeline, {device.type}"
        + (", both processes keeping freed memory (`--reuse-memory`)" if args.reuse_memory else "")
        + ", "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- machine: {machine_line(device)}",
        f"- grounded_seg side: {ours_versions}",
        f"- reference side (its own process): {ref_versions}",
        f"- command: `{command.replace(str(args.oracle_python), 'ORACLE/bin/python')}`",
        "- models: official Grounding DINO Swin-T + BERT-base and SAM ViT-B"
        + (" / ViT-H" if 2 in cases else "")
        + ", random weights built by the official code, saved as official .pth files; "
        f"grounded_seg loads the same files ({load_seconds:.2f} s, a one-time conversion "
        "included when its cache is empty)",
        f"- inputs: {BATCH} synthetic 1200x800 PNG images (decoded by each pipeline), prompts "
        f"`{PROMPT}` and {', '.join(f'`{p}`' for p in FIVE_PROMPTS[1:])}; box thresholds "
        f"calibrated so that {N_BOXES} boxes reach SAM; fp32"
        + (f" (the fast-path rows: {args.fast} autocast, float32 weights)" if args.fast else "")
        + (f"; {args.threads} torch threads in each process" if device.type == "cpu" else ""),
        calibration_line(calibrations),
        f"- statistics: median (min, max) of {args.repeats} timed runs per pipeline, alternating, "
        "after one warm-up run of each; speed-up = reference median / grounded_seg median",
        "",
        "| case | pipeline | median s | min s | max s | speed-up | peak memory (rise in the run) "
        "| boxes | outputs against the reference (last run) |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for number, runs in results.items():
        ref_median = median([r.seconds for r in runs["reference"]])
        for name, samples in runs.items():
            times = [r.seconds for r in samples]
            med = median(times)
            speed = "" if name == "reference" else f"{ref_median / med:.2f}x"
            worst = max(samples, key=lambda r: r.peak_memory - r.base_memory)
            memory = f"{mib(worst.peak_memory)} (+{mib(worst.peak_memory - worst.base_memory)})"
            agreement = (
                "" if name == "reference" else compare(samples[-1], runs["reference"][-1]).line()
            )
            lines.append(
                f"| {number}. {cases[number]['title']} | {name} | {med:.2f} | {min(times):.2f} "
                f"| {max(times):.2f} | {speed} | {memory} | {samples[-1].boxes} | {agreement} |"
            )
        if "grounded_seg, cold segment() calls" in runs:
            cold = median([r.seconds for r in runs["grounded_seg, cold segment() calls"]])
            cached = median([r.seconds for r in runs["grounded_seg"]])
            lines.append(
                f"| | per-image cache vs cold `segment()` | | | | {cold / cached:.2f}x | | | |"
            )
    lines += ["", *target_lines(device, results)]
    if args.fast:
        lines += fast_path_lines(args.fast, results, flop_runs, fast_peak)
    for sam, (ours_flops, ref_flops) in flop_runs.items():
        number = 2 if sam == "vit_h" else 1
        if number not in results:
            continue
        runs = results[number]
        lines += [
            "",
            f"Per stage, case {number} (medians; FLOPs from one counted pass; {peak_source}):",
            "",
            *stage_rows(runs["grounded_seg"], runs["reference"], (ours_flops, ref_flops), peak),
        ]
    return "\n".join(lines)

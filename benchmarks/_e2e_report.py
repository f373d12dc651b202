"""The table of ``e2e_cpu.py``: one row per stage, median / min / max wall time and CPU/wall."""

from __future__ import annotations

import statistics

from _e2e_timing import Sample

ROWS = (
    # (key, label, indent)
    ("load", "model load: `GroundedSAM(detector=dir, segmenter=dir)`", 0),
    ("cold_total", "cold call: `set_image` + `predict` (fresh image)", 0),
    ("cold_gdino_pre", "Grounding DINO preprocessing (in `set_image`)", 1),
    ("cold_gdino_propose", "Grounding DINO propose (Swin-T + BERT + encoder/decoder)", 1),
    ("cold_sam_pre", "SAM preprocessing", 1),
    ("cold_sam_embed", "SAM ViT-B image encoder", 1),
    ("cold_sam_decode", "SAM prompt encoder + mask decoder + mask post-processing", 1),
    ("cold_other", "other (image checks, prompt, box decoding, Detections)", 1),
    ("warm_total", "second prompt: `predict` only (cached image)", 0),
    ("warm_gdino_propose", "Grounding DINO propose (image backbone output cached)", 1),
    ("warm_sam_decode", "SAM mask decoder + post-processing (embedding cached)", 1),
    ("warm_other", "other", 1),
)


def markdown_table(results: dict[str, list[Sample]], boxes: dict[str, int]) -> str:
    """The rows of ``ROWS`` that have samples, in that order."""
    lines = [
        "| stage | median s | min s | max s | CPU/wall | boxes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label, indent in ROWS:
        samples = results.get(key)
        if not samples:
            continue
        walls = [s.wall for s in samples]
        med, lo, hi = statistics.median(walls), min(walls), max(walls)
        ratios = [s.cpu / s.wall for s in samples if s.wall > 0.05]  # tiny spans: no ratio
        ratio = f"{statistics.median(ratios):.2f}" if ratios else ""
        name = ("&nbsp;&nbsp;&nbsp;&nbsp;↳ " + label) if indent else f"**{label}**"
        count = str(boxes[key]) if key in boxes else ""
        lines.append(f"| {name} | {med:.3f} | {lo:.3f} | {hi:.3f} | {ratio} | {count} |")
    return "\n".join(lines)

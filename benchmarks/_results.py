"""Writing a benchmark's block into ``benchmarks/RESULTS.md``, keeping every other block."""

from __future__ import annotations

import re
from pathlib import Path


def write_results(path: Path, device_type: str, block: str, name: str = "e2e_cpu") -> None:
    """Replace script ``name``'s block for this device type in ``path`` (or append it); keep
    everything else."""
    begin = f"<!-- BEGIN {name} device={device_type} -->"
    end = f"<!-- END {name} device={device_type} -->"
    new_block = f"{begin}\n{block.rstrip()}\n{end}"
    if path.is_file():
        text = path.read_text()
    else:
        text = (
            "# Benchmarks\n\n"
            "Written by `benchmarks/e2e_cpu.py`: end-to-end timings of `grounded_seg` with "
            "full-size Grounding DINO Swin-T (172M) and SAM ViT-B (94M) of random weights "
            "(the real architectures; no real weights are downloaded; see the script's "
            "docstring for the two weight-scale corrections). Each block below is replaced when "
            "the script runs again on that device type; text outside the blocks is kept.\n"
        )
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: new_block, text)
    else:
        text = text.rstrip() + "\n\n" + new_block + "\n"
    path.write_text(text)

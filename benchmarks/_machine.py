"""Where a benchmark ran: the offline environment every script sets, the machine and the versions.

Needs only the standard library at import, so a script can set the environment before torch
is imported (the thread pools are sized from it).
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any


def set_offline_env(threads: int) -> None:
    """Nothing may be downloaded; thread pools sized before torch is imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))


def machine_line(device: Any) -> str:
    """OS, CPU model, usable cores and RAM (and the GPU's name on CUDA), on one line."""
    cpu = platform.processor() or platform.machine()
    try:
        match = re.search(
            r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE
        )
        if match:
            cpu = match.group(1).strip()
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        ram = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        ram = ""
    line = (
        f"{platform.system()} {platform.machine()}, {cpu}, os.cpu_count()={os.cpu_count()} "
        f"(usable {usable}){ram}"
    )
    if device.type == "cuda":
        import torch

        line += f"; GPU: {torch.cuda.get_device_name(device)}"
    return line


def versions() -> dict[str, str]:
    """Python's and the main packages' versions, this environment's."""
    import numpy
    import torch
    import transformers

    import grounded_seg

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "grounded_seg": grounded_seg.__version__,
    }


def versions_text(info: dict[str, str]) -> str:
    """``name version, name version, ...``: how a block's header lists ``versions()``."""
    return ", ".join(f"{k} {v}" for k, v in info.items())

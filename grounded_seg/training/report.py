"""What a trainer leaves beside its model: ``train_log.json`` (or a fine-tuning report) and
``MODEL_CARD.md``, written atomically (:mod:`grounded_seg.outputs`), plus the pieces the cards
share: the run's environment and markdown tables of the training curve."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from ..outputs import write_all

__all__ = [
    "CARD_FILE",
    "LOG_FILE",
    "environment",
    "markdown_table",
    "thin_rows",
    "write_json",
    "write_run",
    "write_text",
]

LOG_FILE = "train_log.json"
CARD_FILE = "MODEL_CARD.md"


def _text(text: str):
    def write(handle: IO[bytes]) -> None:
        handle.write(text.encode("utf-8"))

    return write


def _json(data: Any, indent: int) -> str:
    return json.dumps(data, indent=indent) + "\n"


def write_json(path: str | os.PathLike, data: Any, *, indent: int = 2) -> Path:
    """Write ``data`` as JSON (with a final newline) to ``path`` atomically, replacing it."""
    return write_all([(path, _text(_json(data, indent)))], overwrite=True)[0]


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, replacing it."""
    return write_all([(path, _text(text))], overwrite=True)[0]


def write_run(
    out: str | os.PathLike,
    log: dict[str, Any],
    card: str,
    *,
    log_name: str = LOG_FILE,
    card_name: str = CARD_FILE,
) -> list[Path]:
    """Write a run's log (JSON) and model card (markdown) into ``out``, both or neither."""
    folder = Path(out)
    return write_all(
        [(folder / log_name, _text(_json(log, 2))), (folder / card_name, _text(card))],
        overwrite=True,
    )


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Where a run trained: device, GPU name (``None`` off CUDA), torch threads and versions."""
    import numpy as np
    import transformers

    device = torch.device(device)
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def thin_rows(curve: Sequence[dict[str, Any]], count: int = 10) -> list[dict[str, Any]]:
    """About ``count`` rows of a curve, evenly spaced from the first (a card's table)."""
    return list(curve[:: max(1, len(curve) // count)])


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "---:"
) -> str:
    """A markdown table: ``header`` names, then one line per row (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)

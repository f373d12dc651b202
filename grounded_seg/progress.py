"""Progress for long work: a bar for loops over images, an ETA in training logs, and
transformers' own per-load bar kept quiet unless progress is asked for (``-v``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3 min 12 s"``, ``"2 h 05 min"``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def eta(seconds: float, done: int, total: int) -> str:
    """``"ETA 3 min 12 s"`` at the rate so far (``seconds`` for ``done`` of ``total`` steps)."""
    if done <= 0 or total <= done:
        return "ETA 0 s" if total <= done else "ETA unknown"
    return f"ETA {format_seconds(seconds / done * (total - done))}"


def progress_bar(items: Iterable[T], total: int, description: str, show: bool) -> Iterator[T]:
    """``items`` with a tqdm bar on stderr when ``show`` (tqdm comes with transformers)."""
    if not show:
        yield from items
        return
    from tqdm.auto import tqdm

    with tqdm(items, total=total, desc=description, unit="image", leave=True) as bar:
        yield from bar


@contextlib.contextmanager
def quiet_loading_bar(logger: logging.Logger) -> Iterator[None]:
    """Within the block, transformers' "Loading weights" bar shows only when ``logger`` logs
    INFO (``-v``). Downloads keep their own bars (huggingface_hub's). The switch is
    process-wide; grounded_seg loads under one lock, so its loads do not race on it."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if was_on and not logger.isEnabledFor(logging.INFO):
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()

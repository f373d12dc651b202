"""How ``e2e_cpu.py`` times: wall and CPU spans, per-stage totals from wrapped methods, the box
threshold that keeps a fixed number of boxes, and the process's peak RSS.

Imports no torch at module level (``e2e_cpu.py`` sizes the thread pools first).
"""

from __future__ import annotations

import resource
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Sample:
    """One timed span: wall seconds and the process's CPU seconds over it."""

    wall: float
    cpu: float

    def __add__(self, other: Sample) -> Sample:
        return Sample(self.wall + other.wall, self.cpu + other.cpu)

    def __sub__(self, other: Sample) -> Sample:
        return Sample(self.wall - other.wall, self.cpu - other.cpu)


ZERO = Sample(0.0, 0.0)


class Clock:
    """Wall and CPU time, with the device synchronised at both ends of every span."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync

    @contextmanager
    def span(self, out: list[Sample]) -> Iterator[None]:
        self.sync()
        wall, cpu = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            self.sync()
            out.append(Sample(time.perf_counter() - wall, cpu_seconds() - cpu))


class StageTimer:
    """Accumulates the time of wrapped bound methods, keyed by stage name."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.stages: dict[str, Sample] = defaultdict(lambda: ZERO)

    def wrap(self, obj: Any, method: str, stage: str) -> None:
        original = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            spans: list[Sample] = []
            try:
                with self.clock.span(spans):
                    return original(*args, **kwargs)
            finally:
                self.stages[stage] += spans[0]

        setattr(obj, method, timed)  # an instance attribute shadows the class's method

    def take(self) -> dict[str, Sample]:
        stages, self.stages = dict(self.stages), defaultdict(lambda: ZERO)
        return stages


def instrument(gs: Any, timer: StageTimer) -> None:
    """Time the proposer's and segmenter's methods that ``GroundedSAM.predict`` calls."""
    timer.wrap(gs.proposer, "encode_image", "gdino_pre")
    timer.wrap(gs.proposer, "propose", "gdino_propose")
    timer.wrap(gs.segmenter, "encode_image", "sam_pre")
    timer.wrap(gs.segmenter, "image_embeddings", "sam_embed")
    timer.wrap(gs.segmenter, "segment", "sam_segment")


def calibrate_threshold(gs: Any, image: Any, prompt: str, n_boxes: int) -> tuple[float, list]:
    """A box threshold that keeps exactly ``n_boxes`` proposals for ``prompt`` on ``image``."""
    from grounded_seg import normalize_prompt

    normalized = normalize_prompt(prompt)
    state = gs.proposer.encode_image(image)
    everything = gs.proposer.propose(state, normalized, 0.0, 0.25)
    scores = sorted((float(s) for s in everything.scores), reverse=True)
    if len(scores) < n_boxes:
        raise SystemExit(f"only {len(scores)} proposals for {prompt!r}, {n_boxes} asked for")
    upper = scores[n_boxes - 1]
    lower = scores[n_boxes] if len(scores) > n_boxes else 0.0
    threshold = (upper + lower) / 2
    kept = gs.proposer.propose(state, normalized, threshold, 0.25)  # backbone output is cached
    if not upper > threshold > lower or len(kept) != n_boxes:
        raise SystemExit(
            f"cannot keep exactly {n_boxes} boxes for {prompt!r}: scores {scores[: n_boxes + 2]}"
        )
    return threshold, scores[: n_boxes + 1]


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (``ru_maxrss``), MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024

"""Dynamic batching: concurrent requests gathered into one ``predict_batch`` call.

Why not a library (LitServe, Ray Serve, Triton): the models, their batch path and the thread
that must own them are ``GroundedSAM``'s; what is missing is small (a queue, a short wait, a
grouping rule) and a serving framework would bring its own process model and config around it.

One model thread runs every batch (one model copy per process; the event loop never waits on
it). Requests join a batch when they share the prompt, thresholds and image size: images of one
size need no padding, so an answer never depends on which other requests arrived with it (mixed
sizes would be zero-padded, which moves a detector's scores; see ``GroundedSAM.predict_batch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import supervision as sv

from ..predictor import PreparedImage
from ..prompts import Prompt

logger = logging.getLogger(__name__)

BUSY_MEMORY_S = 1.0
"""After seeing concurrent requests, keep gathering batches for this long (seconds): under load,
the next requests are often still on the wire when a batch ends."""


class BatchPredictor(Protocol):
    """What the service needs of its models (``GroundedSAM`` has it)."""

    def prepare(self, image: Any, image_format: str = ..., max_pixels: int | None = ...) -> Any:
        """The image decoded and preprocessed for the models; safe on worker threads."""

    def predict_batch(
        self,
        images: Sequence[Any],
        prompt: Prompt,
        box_threshold: float = ...,
        text_threshold: float = ...,
        max_detections: int | None = ...,
    ) -> list[sv.Detections]:
        """One result per prepared image, in order."""


@dataclass
class Job:
    """One request waiting for the models."""

    prepared: PreparedImage
    prompt: Prompt
    box_threshold: float
    text_threshold: float
    max_detections: int | None
    key: tuple
    future: asyncio.Future = field(repr=False)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Answer:
    """A job's result and how it was made: milliseconds waited and in the models, batch size."""

    detections: sv.Detections
    queue_ms: float
    model_ms: float
    batch_size: int


class BatchQueue:
    """Gathers jobs into batches of at most ``max_batch`` and runs them on one model thread.

    Jobs waiting when the models become free are taken together at once. Then, while requests
    are coming concurrently (more than one admitted now, or within the last ``BUSY_MEMORY_S``),
    the batch waits up to ``window_s`` for more to join, and ends early when full; a lone
    client's request never waits (``in_progress`` tells how many the service has admitted).
    ``sizes`` counts the batch sizes run (for ``/healthz`` and the tests).
    """

    def __init__(
        self,
        predictor: BatchPredictor,
        max_batch: int,
        window_s: float,
        in_progress: Callable[[], int] = lambda: 1,
    ) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.window_s = window_s
        self.in_progress = in_progress  # requests admitted by the service, this one included
        self._busy_until = 0.0  # until then, requests have been coming concurrently
        self.sizes: dict[int, int] = {}
        self.recent_batch_s = 0.0  # an exponential average, for Retry-After
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grounded-seg-model")

    def start(self) -> None:
        """Start the dispatcher on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._dispatch())

    async def stop(self) -> None:
        """Stop taking jobs; a batch already running finishes on its thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(
        self,
        prepared: PreparedImage,
        prompt: Prompt,
        box_threshold: float,
        text_threshold: float,
        max_detections: int | None,
        key: tuple,
    ) -> Answer:
        """Queue one prepared image and wait for its answer."""
        if self._queue is None:
            raise RuntimeError("BatchQueue.start() was not called")
        future = asyncio.get_running_loop().create_future()
        job = Job(prepared, prompt, box_threshold, text_threshold, max_detections, key, future)
        self._queue.put_nowait(job)
        return await future

    async def _dispatch(self) -> None:
        assert self._queue is not None
        while True:
            jobs = [await self._queue.get()]
            now = time.perf_counter()
            concurrent = self.in_progress() > 1 or now < self._busy_until
            deadline = now + (self.window_s if concurrent else 0.0)  # a lone client never waits
            while len(jobs) < self.max_batch:
                try:  # those already waiting join at once; then wait out the window
                    jobs.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            if len(jobs) > 1 or self.in_progress() > 1:
                self._busy_until = time.perf_counter() + BUSY_MEMORY_S
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                size = job.prepared.image.shape[:2]
                groups.setdefault((job.key, size), []).append(job)
            for group in groups.values():
                await self._run(group)

    async def _run(self, jobs: list[Job]) -> None:
        jobs = [job for job in jobs if not job.future.done()]  # a client that left
        if not jobs:
            return
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._predict, jobs)
        except Exception as err:  # handed to each request
            if len(jobs) > 1:  # one bad image must not fail the others: each alone
                logger.warning("a batch of %d failed (%s); answering one by one", len(jobs), err)
                for job in jobs:
                    await self._run([job])
                return
            _settle(jobs[0].future, error=err)
            return
        seconds = time.perf_counter() - start
        self.sizes[len(jobs)] = self.sizes.get(len(jobs), 0) + 1
        self.recent_batch_s = (
            seconds if not self.recent_batch_s else (0.8 * self.recent_batch_s + 0.2 * seconds)
        )
        for job, detections in zip(jobs, results, strict=True):
            answer = Answer(
                detections,
                queue_ms=(start - job.queued_at) * 1e3,
                model_ms=seconds * 1e3,
                batch_size=len(jobs),
            )
            _settle(job.future, result=answer)

    def _predict(self, jobs: list[Job]) -> list[sv.Detections]:
        first = jobs[0]
        return self.predictor.predict_batch(
            [job.prepared for job in jobs],
            first.prompt,
            first.box_threshold,
            first.text_threshold,
            first.max_detections,
        )


def _settle(
    future: asyncio.Future, result: Answer | None = None, error: BaseException | None = None
) -> None:
    if future.done():  # cancelled: the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)

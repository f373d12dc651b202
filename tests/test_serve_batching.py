"""The service's batch queue on its own, with a stand-in predictor: who waits for whom, and a
failing image failing only its own request."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import supervision as sv

from grounded_seg.predictor import PreparedImage
from grounded_seg.prompts import normalize_prompt
from grounded_seg.serve.batching import BatchQueue

PROMPT = normalize_prompt("red circle")


class Recorder:
    """Answers every image with empty detections tagged by its first pixel; fails on 255."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def predict_batch(self, images, prompt, box_threshold, text_threshold, max_detections):
        self.sizes.append(len(images))
        if any(p.image[0, 0, 0] == 255 for p in images):
            raise RuntimeError("poisoned image")
        answers = []
        for p in images:
            found = sv.Detections.empty()
            found.metadata["tag"] = int(p.image[0, 0, 0])
            answers.append(found)
        return answers


def _image(tag: int, size: int = 4) -> PreparedImage:
    return PreparedImage(np.full((size, size, 3), tag, np.uint8), None, None)


async def _submit(queue: BatchQueue, tag: int, size: int = 4):
    return await queue.submit(_image(tag, size), PROMPT, 0.3, 0.25, 100, ("key",))


def _run(scenario, max_batch: int, in_progress: int, window_s: float = 60.0):
    """Run ``scenario(queue)`` against a started queue; returns (predictor, its result)."""
    predictor = Recorder()

    async def main():
        queue = BatchQueue(predictor, max_batch, window_s, in_progress=lambda: in_progress)
        queue.start()
        try:  # a 60 s window would time this out wherever a batch waited it out
            return await asyncio.wait_for(scenario(queue), timeout=20)
        finally:
            await queue.stop()

    return predictor, asyncio.run(main())


def test_a_lone_request_does_not_wait_for_the_window():
    predictor, answer = _run(lambda queue: _submit(queue, 7), max_batch=8, in_progress=1)
    assert predictor.sizes == [1] and answer.batch_size == 1
    assert answer.detections.metadata["tag"] == 7


def test_concurrent_requests_wait_for_each_other_until_the_batch_is_full():
    async def staggered(queue):
        first = asyncio.ensure_future(_submit(queue, 1))
        await asyncio.sleep(0.2)  # the others arrive later, inside the window
        second = asyncio.ensure_future(_submit(queue, 2))
        await asyncio.sleep(0.2)
        third = asyncio.ensure_future(_submit(queue, 3))
        return await asyncio.gather(first, second, third)

    predictor, answers = _run(staggered, max_batch=3, in_progress=3)
    assert predictor.sizes == [3]  # full: it did not wait out the 60 s
    assert [a.detections.metadata["tag"] for a in answers] == [1, 2, 3]
    assert [a.batch_size for a in answers] == [3, 3, 3]


def test_a_failing_image_fails_only_its_own_request():
    async def with_poison(queue):
        jobs = [_submit(queue, tag) for tag in (1, 255, 3)]
        return await asyncio.gather(*jobs, return_exceptions=True)

    predictor, done = _run(with_poison, max_batch=3, in_progress=3)
    assert predictor.sizes == [3, 1, 1, 1]  # the batch failed; then each alone
    assert done[0].detections.metadata["tag"] == 1 and done[2].detections.metadata["tag"] == 3
    assert isinstance(done[1], RuntimeError)


def test_images_of_different_sizes_go_in_different_batches():
    async def two_sizes(queue):
        return await asyncio.gather(*(_submit(queue, i, s) for i, s in enumerate((4, 4, 6, 6))))

    predictor, _ = _run(two_sizes, max_batch=4, in_progress=4)
    assert predictor.sizes == [2, 2]


def test_submit_before_start_is_an_error():
    queue = BatchQueue(Recorder(), max_batch=2, window_s=0.0)
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(_submit(queue, 1))

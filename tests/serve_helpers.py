"""Shared by the service's tests: scenes as PNG bytes, a live server on 127.0.0.1, and a
predictor that can be held mid-batch (to fill the queue deterministically)."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
from PIL import Image

from grounded_seg.serve import ServeSettings, create_app

# scenes of the service's tests: seeds outside every other test's and the tuning range
SEEDS = range(4600, 4700)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(settings: ServeSettings, predictor=None) -> Iterator[tuple[str, object]]:
    """A real uvicorn server on a free loopback port, in a thread: yields (base URL, app)."""
    import uvicorn

    port = free_port()
    app = create_app(settings, predictor=predictor)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class Gated:
    """A predictor around a real one whose ``predict_batch`` waits for ``open()`` while gated,
    and records the size of every batch."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self._gate = threading.Event()
        self._gate.set()

    def close(self) -> None:
        self._gate.clear()

    def open(self) -> None:
        self._gate.set()

    def prepare(self, image, image_format="RGB", max_pixels=None):
        return self.predictor.prepare(image, image_format, max_pixels)

    def predict_batch(self, images, *args, **kwargs):
        self.sizes.append(len(images))
        self.entered.set()
        if not self._gate.wait(timeout=60):
            raise RuntimeError("the test never opened the gate")
        return self.predictor.predict_batch(images, *args, **kwargs)


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)

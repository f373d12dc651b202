"""What ``grounded-seg serve`` was started with: the models, the batching and the limits."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from ..checks import check_count, check_limit

DEFAULT_SERVE_MAX_PIXELS = 40_000_000
"""The largest image (width x height) the service decodes: 40 megapixels, a large phone photo.
Checked from the file's header before any decoding (see ``grounded_seg.images``)."""


@dataclass(frozen=True)
class ServeSettings:
    """The service's configuration, checked when made (``ValueError``/``TypeError``).

    Models: ``detector``, ``segmenter`` (registry names, folders or hub ids; ``None`` is the
    route's default), ``proposer`` (a key of ``PROPOSERS``), ``device``,
    ``dtype``; loaded once, when the service starts, and never from a request.

    Batching: concurrent requests with the same prompt, thresholds and image size are answered
    by one ``GroundedSAM.predict_batch`` call of at most ``max_batch`` images. While requests come
    concurrently, a batch waits at most ``batch_window_ms`` for others to join (ending early when
    full); a lone client's request never waits. ``max_batch=1`` serves one image at a time.

    Limits: ``max_upload_mb`` (MiB) bounds the image file (a JSON body may be 4/3 of it plus
    64 KiB, for base64); ``max_pixels`` bounds width x height before decoding; ``max_queue`` is
    how many requests may be admitted at once (decoding, waiting or running), beyond which the
    service answers 503 with ``Retry-After``. ``api_key``: when set, every ``/v1/`` request must
    carry it (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``).
    """

    detector: str | None = None
    segmenter: str | None = None
    proposer: str = "grounding_dino"
    device: str | None = None
    dtype: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    batch_window_ms: float = 20.0
    max_queue: int = 32
    max_upload_mb: float = 20.0
    max_pixels: int | None = DEFAULT_SERVE_MAX_PIXELS
    api_key: str | None = None

    def __post_init__(self) -> None:
        from ..proposers import PROPOSERS

        if self.proposer not in PROPOSERS:
            raise ValueError(
                f"proposer: expected one of {sorted(PROPOSERS)}, got {self.proposer!r}"
            )
        check_count("max_batch", self.max_batch)
        check_count("max_queue", self.max_queue)
        check_limit("max_pixels", self.max_pixels)
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise TypeError(f"port: expected an int in [0, 65535], got {type(self.port).__name__}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: expected an int in [0, 65535], got {self.port}")
        for name in ("batch_window_ms", "max_upload_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
            if not math.isfinite(value) or value < 0 or (name == "max_upload_mb" and value == 0):
                low = "> 0" if name == "max_upload_mb" else ">= 0"
                raise ValueError(f"{name}: expected a finite number {low}, got {value}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key: expected a non-empty string or None")

    @property
    def max_upload_bytes(self) -> int:
        """The largest image file accepted, in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read: the file as base64 in JSON, plus room for fields."""
        return self.max_upload_bytes * 4 // 3 + 64 * 1024

    @property
    def loopback(self) -> bool:
        """Whether ``host`` is reachable only from this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: assume others can reach it
            return False

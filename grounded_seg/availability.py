"""Before any model loads: is each one there? Every missing model named at once, in seconds.

Without this, a first run with no network spent about a minute in huggingface_hub's retries
(twelve warnings), then named only the first missing model; the next run named the second.
:func:`require_models` resolves every model a call needs, and when the hub cannot serve the ones
that are neither local nor in the Hugging Face cache (``HF_HUB_OFFLINE=1``, or no connection
to the hub), raises one :class:`WeightsNotFoundError` listing each with the command that fetches
it. Whether the hub is reachable is probed once (a TCP connection, 2 s at most) and remembered
for a minute; with ``HF_HUB_OFFLINE`` set nothing is probed.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from .errors import WeightsNotFoundError
from .registry import ModelSource, resolve_model

PROBE_SECONDS = 2.0
PROBE_MEMORY_SECONDS = 60.0


def offline_by_environment() -> bool:
    """``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


class _HubProbe:
    """Whether a TCP connection to the hub (or the HTTPS proxy) opens; remembered a while."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answer: tuple[str, float, bool] | None = None  # (target, when, reachable)

    @staticmethod
    def _target() -> tuple[str, int]:
        from huggingface_hub import constants

        proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
        parts = urlsplit(proxy or constants.ENDPOINT)
        default = 443 if parts.scheme == "https" else 80
        return parts.hostname or "", parts.port or default

    def reachable(self) -> bool:
        host, port = self._target()
        key = f"{host}:{port}"
        with self._lock:
            answer = self._answer
            if answer and answer[0] == key and time.monotonic() - answer[1] < PROBE_MEMORY_SECONDS:
                return answer[2]
            try:
                socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
                reachable = True
            except OSError:
                reachable = False
            self._answer = (key, time.monotonic(), reachable)
            return reachable


_probe = _HubProbe()


def hub_offline() -> bool:
    """True when the hub cannot be asked: offline by the environment, or not reachable."""
    return offline_by_environment() or not _probe.reachable()


def in_hub_cache(source: ModelSource) -> bool:
    """Whether the Hugging Face cache holds ``source``'s ``config.json`` (at its revision)."""
    from huggingface_hub import try_to_load_from_cache

    if source.hub_id is None:
        return False
    found = try_to_load_from_cache(source.hub_id, "config.json", revision=source.revision)
    return isinstance(found, str)


def require_models(requests: Sequence[tuple[object, str]]) -> list[ModelSource]:
    """Resolve each ``(name_or_path, role)`` and make sure it can be loaded without waiting.

    Local folders and cached hub models pass. Models the project bundles must be in a checkout.
    Hub models not in the cache pass only when the hub is reachable (they then download, with
    progress bars). Otherwise one ``WeightsNotFoundError`` names every missing model with how to
    get it. Returns the resolved sources. Bad names and paths raise as in ``resolve_model``.
    """
    from ._loading import LOAD_LOCK, how_to_get

    with LOAD_LOCK:  # resolving an official checkpoint converts it: one at a time, as loads are
        sources = [resolve_model(name, role) for name, role in requests]  # type: ignore[arg-type]
    missing: list[tuple[str, ModelSource]] = []
    for (_, role), source in zip(requests, sources, strict=True):
        if source.local_dir is not None or in_hub_cache(source):
            continue
        if source.hub_id is None or hub_offline():
            missing.append((role, source))
    if not missing:
        return sources
    if offline_by_environment():
        why = "HF_HUB_OFFLINE is set, so nothing is downloaded"
    elif any(source.hub_id for _, source in missing):
        host, port = _HubProbe._target()
        why = f"the hub cannot be reached (no connection to {host}:{port})"
    else:
        why = "these models are not downloadable"
    lines = "\n".join(
        f"  - {role} {source.label!r}: {how_to_get(source)}" for role, source in missing
    )
    count = f"{len(missing)} model{'s' if len(missing) > 1 else ''}"
    raise WeightsNotFoundError(f"{count} needed and not available here ({why}):\n{lines}")

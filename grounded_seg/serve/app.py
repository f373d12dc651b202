"""The FastAPI application of ``grounded-seg serve``: routes, readiness, limits, the page.

    GET  /              the page (plain HTML + JS, no build step)
    GET  /healthz       200 once the models are loaded; 503 while loading or after a failure
    GET  /v1/models     what the service runs, and its limits
    POST /v1/segment    multipart (image file + fields) or JSON (base64 image); ?format=json|png
    GET  /v1/scene      a generated shapes scene (PNG), for trying the page offline
    GET  /docs          OpenAPI (Swagger UI)

The models load once, on a thread of their own, when the service starts; every model call runs
on one model thread through :class:`~grounded_seg.serve.batching.BatchQueue`, and decoding on
worker threads, so the event loop only moves bytes.
"""

import asyncio
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from typing import Any, Literal

from .batching import BatchPredictor, BatchQueue
from .inputs import RequestError, decode_image, media_type, parse_form, parse_json, read_body
from .responses import answer_json, answer_png, png_bytes
from .settings import ServeSettings

logger = logging.getLogger(__name__)

JSON_TYPES = ("application/json",)
FORM_TYPES = ("multipart/form-data",)


class Service:
    """The state behind the routes: the models (loading, ready or failed), the batch queue and
    the count of admitted requests. Touched from the event loop only, except ``_load``."""

    def __init__(self, settings: ServeSettings, predictor: BatchPredictor | None) -> None:
        self.settings = settings
        self.predictor = predictor
        self.status = "loading"
        self.error: str | None = None
        self.queue: BatchQueue | None = None
        self.active = 0
        self.served = 0
        self.on_failure: Callable[[], None] | None = None  # the CLI stops the server

    def start(self) -> None:
        if self.predictor is not None:
            self._ready(self.predictor)
            return
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._load, args=(loop,), name="grounded-seg-load").start()

    def _load(self, loop: asyncio.AbstractEventLoop) -> None:
        from ..predictor import GroundedSAM

        s = self.settings
        start = time.perf_counter()
        try:
            predictor = GroundedSAM(
                detector=s.detector, segmenter=s.segmenter, device=s.device, dtype=s.dtype,
                proposer=s.proposer,
            )  # fmt: skip
        except Exception as err:  # reported by /healthz and the command
            self.error = f"{type(err).__name__}: {err}"
            logger.error("the models could not be loaded: %s", self.error)
            loop.call_soon_threadsafe(self._failed)
            return
        logger.info("models loaded in %.1f s", time.perf_counter() - start)
        loop.call_soon_threadsafe(self._ready, predictor)

    def _ready(self, predictor: BatchPredictor) -> None:
        self.predictor = predictor
        self.queue = BatchQueue(
            predictor,
            self.settings.max_batch,
            self.settings.batch_window_ms / 1e3,
            in_progress=lambda: self.active,
        )
        self.queue.start()
        self.status = "ready"

    def _failed(self) -> None:
        self.status = "failed"
        if self.on_failure is not None:
            self.on_failure()

    async def stop(self) -> None:
        if self.queue is not None:
            await self.queue.stop()

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Count a request in, or refuse it with 503 while loading or when ``max_queue`` are
        in already (``Retry-After``: the recent batch time times the batches ahead)."""
        if self.status != "ready":
            if self.status == "failed":
                raise RequestError(503, f"the models could not be loaded: {self.error}")
            raise RequestError(503, "the models are loading; retry shortly", {"Retry-After": "5"})
        limit = self.settings.max_queue
        if self.active >= limit:
            assert self.queue is not None
            ahead = math.ceil(self.active / self.settings.max_batch)
            wait = max(1, math.ceil(self.queue.recent_batch_s * ahead))
            raise RequestError(
                503,
                f"the service is busy: {self.active} requests in progress, the most it takes at "
                f"once (--max-queue {limit}); retry after {wait} s",
                {"Retry-After": str(wait)},
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


def create_app(settings: ServeSettings | None = None, predictor: BatchPredictor | None = None):
    """The service as a FastAPI app (run it with uvicorn, or ``grounded-seg serve``).

    ``settings``: the models, batching and limits (``ServeSettings()`` if not given).
    ``predictor``: models already loaded (a ``GroundedSAM``, or anything with its ``prepare``
    and ``predict_batch``); when ``None`` the models of ``settings`` load on a thread when the
    app starts, and ``/healthz`` answers 503 until they are ready.

    Needs the ``serve`` extra: ``pip install "grounded-seg[serve]"``.
    """
    fastapi = _serve_extra()
    from fastapi import Depends, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from .. import __version__

    settings = settings or ServeSettings()
    service = Service(settings, predictor)

    @asynccontextmanager
    async def lifespan(app: Any):
        service.start()
        yield
        await service.stop()

    app = fastapi.FastAPI(
        title="grounded-seg",
        version=__version__,
        summary="Segment whatever a text prompt names: boxes from words, masks from boxes.",
        lifespan=lifespan,
    )
    app.state.service = service
    page = resources.files(__package__).joinpath("static/index.html").read_text("utf-8")

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"detail": err.message}, err.status, headers=err.headers)

    async def api_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key", "")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not given and scheme.lower() == "bearer":
            given = token.strip()
        if not given or not secrets.compare_digest(given.encode(), settings.api_key.encode()):
            raise RequestError(
                401,
                "missing or wrong API key: send it as 'Authorization: Bearer KEY' or "
                "'X-API-Key: KEY'",
                {"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(api_key)]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Ready (200) once the models are loaded; 503 while loading or after a failure."""
        body: dict[str, Any] = {"status": service.status}
        if service.error:
            body["detail"] = service.error
        if service.queue is not None:
            body["in_progress"] = service.active
            body["served"] = service.served
            body["batch_sizes"] = {str(k): v for k, v in sorted(service.queue.sizes.items())}
        body["api_key_required"] = settings.api_key is not None
        return JSONResponse(body, 200 if service.status == "ready" else 503)

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> dict[str, Any]:
        """The models the service runs (fixed when it started) and its limits."""
        from ..predictor import default_segmenter
        from ..proposers import PROPOSERS

        return {
            "proposer": settings.proposer,
            "detector": settings.detector or PROPOSERS[settings.proposer],
            "segmenter": settings.segmenter or default_segmenter(settings.proposer),
            "device": settings.device or "auto",
            "dtype": settings.dtype or "float32",
            "status": service.status,
            "max_batch": settings.max_batch,
            "max_queue": settings.max_queue,
            "max_upload_mb": settings.max_upload_mb,
            "max_pixels": settings.max_pixels,
        }

    @app.get("/v1/scene", dependencies=guarded, responses={200: {"content": {"image/png": {}}}})
    async def scene(seed: int | None = None) -> Response:
        """A generated shapes scene as PNG (the page's "try a generated scene"); its objects'
        phrases, as a prompt, in the ``X-Scene-Prompt`` header."""
        from ..shapes import HELD_OUT_SEEDS, make_scene

        if seed is None:
            seed = HELD_OUT_SEEDS.start + secrets.randbelow(1000)
        if not 0 <= seed < 2**32:
            raise RequestError(422, f"seed: expected an int in [0, 2**32), got {seed}")
        made = await asyncio.to_thread(make_scene, seed)
        png = await asyncio.to_thread(png_bytes, made.image)
        prompt = ". ".join(dict.fromkeys(made.phrases)) + "."
        return Response(
            png,
            media_type="image/png",
            headers={"X-Scene-Prompt": prompt, "X-Scene-Seed": str(seed)},
        )

    @app.post(
        "/v1/segment",
        dependencies=guarded,
        openapi_extra=SEGMENT_BODY,
        responses=SEGMENT_RESPONSES,
    )
    async def segment(request: Request, format: Literal["json", "png"] = "json") -> Response:
        """Segment what ``prompt`` names in ``image``: JSON (boxes, scores, classes, phrases,
        mask scores, COCO RLE masks, timings) or, with ``?format=png``, the annotated image."""
        start = time.perf_counter()
        kind = media_type(request.headers)
        if kind not in JSON_TYPES + FORM_TYPES:
            raise RequestError(
                415,
                f"expected a multipart/form-data body (an 'image' file and fields) or "
                f"application/json (a base64 'image'), got {kind or 'no content type'!r}",
            )
        with service.admitted():
            body = await read_body(request.headers, request.stream(), settings.max_body_bytes)
            if kind in JSON_TYPES:
                asked = parse_json(body, settings)
            else:
                asked = await _parse_multipart(request, body, settings)
            read = time.perf_counter()
            prepared = await asyncio.to_thread(_prepare, service.predictor, asked.image, settings)
            decoded = time.perf_counter()
            assert service.queue is not None
            answer = await service.queue.submit(
                prepared, asked.prompt, asked.box_threshold, asked.text_threshold,
                asked.max_detections, asked.key,
            )  # fmt: skip
            service.served += 1
            if format == "png":
                png = await asyncio.to_thread(answer_png, answer.detections, prepared.image)
                count = {"X-Detections": str(len(answer.detections))}
                return Response(png, media_type="image/png", headers=count)
            timings = {
                "read": (read - start) * 1e3,
                "decode": (decoded - read) * 1e3,
                "queue": answer.queue_ms,
                "model": answer.model_ms,
            }
            payload = await asyncio.to_thread(
                answer_json, answer.detections, prepared.image, asked.prompt, timings,
                answer.batch_size,
            )  # fmt: skip
            payload["timings_ms"]["total"] = round((time.perf_counter() - start) * 1e3, 2)
            return JSONResponse(payload)

    return app


def _serve_extra() -> Any:
    try:
        import fastapi
        import fastapi.responses
        import python_multipart  # noqa: F401 - for the form route
    except ImportError as err:
        raise ImportError(
            f"the service needs the serve extra ({err.name} is missing): "
            'pip install "grounded-seg[serve]"'
        ) from None
    return fastapi


def _prepare(predictor: BatchPredictor, data: bytes, settings: ServeSettings) -> Any:
    """Decode (header checked first) and preprocess, on a worker thread."""
    rgb = decode_image(data, settings.max_pixels)
    return predictor.prepare(rgb, max_pixels=None)


async def _parse_multipart(request: Any, body: bytes, settings: ServeSettings) -> Any:
    from fastapi import Request
    from starlette.exceptions import HTTPException

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except HTTPException as err:  # a malformed multipart body
        raise RequestError(422, f"the multipart body could not be read: {err.detail}") from None
    try:
        return parse_form(form, settings)
    finally:
        await form.close()


SEGMENT_FIELDS = {
    "prompt": {"type": "string", "description": 'what to find: "black cat" or "cat. dog."'},
    "box_threshold": {"type": "number", "default": 0.35, "minimum": 0, "maximum": 1},
    "text_threshold": {"type": "number", "default": 0.25, "minimum": 0, "maximum": 1},
    "max_detections": {"type": "integer", "default": 100, "minimum": 1},
}
SEGMENT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        **SEGMENT_FIELDS,
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "byte",
                            "description": "the image file, base64",
                        },
                        **SEGMENT_FIELDS,
                    },
                }
            },
        },
    }
}
SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "JSON detections, or the annotated PNG"},
    401: {"description": "missing or wrong API key (when the service has one)"},
    413: {"description": "the upload or the image's width x height is over the limit"},
    415: {"description": "neither multipart/form-data nor application/json"},
    422: {"description": "a bad image, prompt or field: the library's message"},
    503: {"description": "loading, or busy (Retry-After)"},
}

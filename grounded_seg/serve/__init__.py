"""``grounded-seg serve``: the pipeline over HTTP, with a page to try it in a browser.

>>> from grounded_seg.serve import ServeSettings, create_app       # doctest: +SKIP
>>> app = create_app(ServeSettings(detector="shapes-gdino", segmenter="shapes-sam"))
>>> # uvicorn.run(app, host="127.0.0.1", port=8000)                # doctest: +SKIP

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart): importing this package works
without it; :func:`create_app` says what to install.
"""

from .app import create_app
from .inputs import IMAGE_FORMATS, RequestError
from .settings import DEFAULT_SERVE_MAX_PIXELS, ServeSettings

__all__ = [
    "DEFAULT_SERVE_MAX_PIXELS",
    "IMAGE_FORMATS",
    "RequestError",
    "ServeSettings",
    "create_app",
]

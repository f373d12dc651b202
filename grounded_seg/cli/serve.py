"""``grounded-seg serve``: the models once, behind HTTP, with the page at ``/``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

logger = logging.getLogger("grounded_seg.cli")

API_KEY_VARIABLE = "GROUNDED_SEG_API_KEY"


def cmd_serve(args: argparse.Namespace) -> int:
    from ..availability import require_models
    from ..serve import ServeSettings, create_app

    settings = ServeSettings(
        detector=args.detector,
        segmenter=args.segmenter,
        proposer=args.proposer,
        device=None if args.device == "auto" else args.device,
        dtype=args.dtype,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        max_queue=args.max_queue,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels or None,  # 0: no limit
        api_key=args.api_key or os.environ.get(API_KEY_VARIABLE) or None,
    )
    try:
        import uvicorn
    except ImportError:
        raise ImportError(
            'grounded-seg serve needs the serve extra: pip install "grounded-seg[serve]"'
        ) from None
    app = create_app(settings)  # the extra's other packages are checked here
    # names that cannot be found fail now, before the port opens (the load itself runs in the
    # background, and /healthz says when it is done)
    require_models([(m, r) for m, r in ((args.detector, "detector"), (args.segmenter, "segmenter"))
                    if m is not None])  # fmt: skip
    if not settings.loopback and settings.api_key is None:
        logger.warning(
            "serving on %s without an API key: anyone who can reach this host can use the "
            "models; pass --api-key KEY (or set %s)",
            settings.host,
            API_KEY_VARIABLE,
        )
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info")
    )
    service = app.state.service
    service.on_failure = lambda: setattr(server, "should_exit", True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then passed Ctrl-C on: no traceback
        return 130
    if service.status == "failed":
        print(f"error: the models could not be loaded: {service.error}", file=sys.stderr)
        return 1
    return 0

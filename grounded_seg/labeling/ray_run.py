"""The labelling run on Ray Data: planned batches as a dataset, a pool of actors each holding
one ``GroundedSAM``, every actor writing its batches' records where the local run writes them.

The driver plans the batches exactly as the local run does, so the records, and the final files
assembled from them, are the same whichever ran them (and a run may be resumed either way).
One dataset row is one planned batch (``batch_size=1`` row per call): Ray Data's own batching
would cut batches at block boundaries, and a different cut changes which images share a
padded batch. Each actor decodes a batch's images on a few threads and, with
``max_concurrent_calls_per_actor=2`` where Ray offers it, decodes the next batch while its
models run on this one (the models are safe to share between threads).

``docs/scale-out.md`` describes running this on a cluster.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .batches import BatchLabeler, BatchResult
from .ontology import Ontology
from .sources import ImageSource

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "grounded-seg[ray]"'


def require_ray() -> None:
    """``ImportError`` saying what to install when Ray Data is missing."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise ImportError(f"--ray needs Ray Data: {INSTALL_HINT}") from err


class LabelActor:
    """One Ray actor: loads the models once, then labels the batches Ray Data hands it."""

    def __init__(
        self,
        root: str,
        ontology: Ontology,
        model_options: dict[str, Any],
        labeler_options: dict[str, Any],
        threads: int,
        decode_threads: int,
    ) -> None:
        import torch

        from .run import load_predictor

        torch.set_num_threads(threads)
        self.labeler = BatchLabeler(
            load_predictor(model_options), ontology, Path(root), **labeler_options
        )
        self.pool = ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="decode")

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done: dict[str, list[int]] = {"batch": [], "images": [], "detections": [], "failed": []}
        for batch, items in zip(rows["batch"], rows["items"], strict=True):
            sources = [ImageSource(i, Path(p), name) for i, p, name in json.loads(str(items))]
            prepared = list(self.pool.map(self.labeler.prepare, sources))
            result = self.labeler.label(int(batch), sources, prepared)
            done["batch"].append(result.batch)
            done["images"].append(len(result.images))
            done["detections"].append(result.detections)
            done["failed"].append(result.failed)
        return {key: np.asarray(values, np.int64) for key, values in done.items()}


class _Finished(BatchResult):
    """A batch an actor finished, as the progress bar counts it."""

    def __init__(self, row: dict[str, Any]) -> None:
        super().__init__(int(row["batch"]), [{}] * int(row["images"]))
        self._detections, self._failed = int(row["detections"]), int(row["failed"])

    @property
    def detections(self) -> int:
        return self._detections

    @property
    def failed(self) -> int:
        return self._failed


def _item(source: ImageSource) -> list[Any]:
    """A source as the actor reads it back: absolute paths (actors run elsewhere)."""
    return [source.index, os.fspath(source.path.resolve()), source.name]


def _connect(address: bool | str) -> bool:
    """Join or start Ray; returns whether this call started it (and so shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address is True:
        logger.info("starting a local Ray instance")
        ray.init(**options)
    else:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=str(address), **options)
    return True


def run_on_ray(
    address: bool | str,
    todo: list[tuple[int, list[ImageSource]]],
    root: Path,
    ontology: Ontology,
    model_options: dict[str, Any],
    labeler_options: dict[str, Any],
    workers: int,
    progress: Any,
) -> None:
    """Label ``todo`` (planned batches) on Ray actors; ``progress`` is called per batch.

    ``address``: ``True`` starts a local instance, ``"auto"`` or ``"ray://host:10001"`` joins a
    cluster. The pool has one actor per GPU (``num_gpus=1`` each) when the cluster has GPUs and
    no CPU device was asked for; otherwise one per CPU. Each actor uses one CPU thread for the
    models and ``workers`` threads to decode.
    """
    import ray
    import ray.data

    started = _connect(address)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours shows instead
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        device = model_options.get("device")
        use_gpu = gpus > 0 and not (device is not None and str(device).startswith("cpu"))
        size = gpus if use_gpu else max(1, int(resources.get("CPU", 1)))
        size = max(1, min(size, len(todo)))
        logger.info("Ray: %d actor(s), %s", size, "1 GPU each" if use_gpu else "1 CPU each")
        rows = [
            {
                "batch": batch,
                "items": json.dumps(
                    [[s.index, os.fspath(s.path.resolve()), s.name] for s in sources]
                ),
            }
            for batch, sources in todo
        ]
        pool_options: dict[str, Any] = {"size": size}
        if (
            "max_concurrent_calls_per_actor"
            in inspect.signature(ray.data.ActorPoolStrategy).parameters
        ):
            pool_options["max_concurrent_calls_per_actor"] = 2
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), size * 4))
        labelled = dataset.map_batches(
            LabelActor,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(**pool_options),
            num_gpus=1 if use_gpu else 0,
            num_cpus=1,
            fn_constructor_kwargs={
                "root": os.fspath(root.resolve()),
                "ontology": ontology,
                "model_options": model_options,
                "labeler_options": labeler_options,
                "threads": 1,
                "decode_threads": max(1, workers),
            },
        )
        for row in labelled.iter_rows():
            progress(_Finished(row))
    finally:
        if started:
            ray.shutdown()

"""Planning a run into batches, and labelling one batch: the unit both the local loop and the
Ray actors execute, so both write the same records.

The plan groups images of one size: sizes come from the files' headers (no decoding), images
are ordered by ``(height, width)`` then name, and cut into batches of ``batch_size``. Most
batches then hold images of one size, which Grounding DINO batches without padding, so a
labelled image gets the answer a one-image call gives (padding moves a detector's answers a
little; see ``GroundedSAM.predict_batch``), and the padded pixels are not computed. The plan is
a pure function of the image list and ``batch_size``: a resumed run re-makes the same batches.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from ..boxes import class_aware_nms
from ..outputs import atomic_write
from ..predictor import GroundedSAM, PreparedImage
from .ontology import Ontology
from .records import detection_rows, write_batch
from .sources import ImageSource

logger = logging.getLogger(__name__)

_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_UNREADABLE = (1 << 30, 1 << 30)  # sorts after every real size: these fail when decoded


def header_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` as ``load_image`` will see it (EXIF rotation applied), from the
    header alone; an unreadable file gets a placeholder that sorts last."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except Exception:
        return _UNREADABLE
    return (width, height) if orientation in _TRANSPOSED else (height, width)


def plan_batches(
    sources: Sequence[ImageSource], batch_size: int, workers: int = 4
) -> list[list[ImageSource]]:
    """Cut the images into batches of ``batch_size``, images of one size together (see the
    module doc); header reads run on ``workers`` threads."""
    if workers > 1 and len(sources) > 1:
        with ThreadPoolExecutor(workers) as pool:
            sizes = list(pool.map(header_size, [s.path for s in sources], chunksize=64))
    else:
        sizes = [header_size(s.path) for s in sources]
    order = sorted(range(len(sources)), key=lambda i: (sizes[i], sources[i].index))
    ordered = [sources[i] for i in order]
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def reason(err: BaseException) -> str:
    """One line saying why an image failed."""
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text}"


@dataclass
class BatchResult:
    """What one batch added: image records and counts for the progress line."""

    batch: int
    images: list[dict[str, Any]]

    @property
    def detections(self) -> int:
        return sum(len(i.get("detections", [])) for i in self.images)

    @property
    def failed(self) -> int:
        return sum("error" in i for i in self.images)


class BatchLabeler:
    """Labels planned batches into records under ``root`` with one :class:`GroundedSAM`.

    ``prepare`` (decode + preprocess one image; any thread) and ``label`` (the models, then
    the image copies and the batch's record) are separate so that a caller can prepare the
    next batches while the models run on this one.
    """

    def __init__(
        self,
        predictor: GroundedSAM,
        ontology: Ontology,
        root: Path,
        *,
        box_threshold: float,
        text_threshold: float,
        max_detections: int | None,
        nms_threshold: float | None,
        max_pixels: int | None,
        copy_images: bool,
    ) -> None:
        self.predictor = predictor
        self.ontology = ontology
        self.root = root
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.max_detections = max_detections
        self.nms_threshold = nms_threshold
        self.max_pixels = max_pixels
        self.copy_images = copy_images

    def prepare(self, source: ImageSource) -> PreparedImage | Exception:
        """The image decoded and preprocessed for both models (and copied into ``images/``),
        or why it cannot be. Runs on worker threads; an error writing the copy is not the
        image's fault and is raised (the run stops: the data set cannot be written)."""
        try:
            prepared = self.predictor.prepare(source.path, max_pixels=self.max_pixels)
        except Exception as err:
            return err
        if self.copy_images:
            self._copy(source)
        return prepared

    def infer(
        self, sources: Sequence[ImageSource], prepared: Sequence[PreparedImage | Exception]
    ) -> list[Any]:
        """The models on one batch: per image its ``Detections`` or the error that stopped it
        (a decoding error from :meth:`prepare`, or the models')."""
        results: list[Any] = list(prepared)
        good = [i for i, item in enumerate(prepared) if not isinstance(item, Exception)]
        found = self._predict([(sources[i], prepared[i]) for i in good])
        for i, detections in zip(good, found, strict=True):
            results[i] = detections
        return results

    def record(
        self,
        batch: int,
        sources: Sequence[ImageSource],
        prepared: Sequence[PreparedImage | Exception],
        results: Sequence[Any],
    ) -> BatchResult:
        """Encode the masks (RLE), map the classes and write the batch's record atomically.
        Images that failed are recorded with the reason (and their copies removed)."""
        images = []
        for source, item, result in zip(sources, prepared, results, strict=True):
            if isinstance(result, Exception):
                images.append(self._failure(source, result))
                if self.copy_images and not isinstance(item, Exception):
                    (self.root / "images" / source.name).unlink(missing_ok=True)
                continue
            height, width = item.image.shape[:2]
            images.append(
                {
                    "index": source.index,
                    "name": source.name,
                    "width": int(width),
                    "height": int(height),
                    "detections": detection_rows(self._merge(result), self.ontology),
                }
            )
        write_batch(self.root, batch, images)
        return BatchResult(batch, images)

    def label(
        self,
        batch: int,
        sources: Sequence[ImageSource],
        prepared: Sequence[PreparedImage | Exception] | None = None,
    ) -> BatchResult:
        """:meth:`prepare` (unless given), :meth:`infer` and :meth:`record` one batch."""
        if prepared is None:
            prepared = [self.prepare(source) for source in sources]
        return self.record(batch, sources, prepared, self.infer(sources, prepared))

    def _predict(self, good: list[tuple[ImageSource, PreparedImage]]) -> list[Any]:
        """Detections per image; a batch that fails is retried image by image, so one image
        that breaks the models (or memory) fails alone."""
        if not good:
            return []
        options = (self.box_threshold, self.text_threshold, self.max_detections)
        try:
            return self.predictor.predict_batch(
                [item for _, item in good], self.ontology.prompt, *options
            )
        except Exception as err:
            if len(good) == 1:
                return [err]
            logger.warning("a batch failed (%s); labelling its images one by one", reason(err))
        results: list[Any] = []
        for _, item in good:
            try:
                results += self.predictor.predict_batch([item], self.ontology.prompt, *options)
            except Exception as err:
                results.append(err)
        return results

    def _merge(self, detections: Any) -> Any:
        """With phrases sharing a class (``{"kitten": "cat", "cat": "cat"}``) one object can be
        found once per phrase: keep the best per class by NMS at the run's threshold."""
        if not self.ontology.merges or self.nms_threshold is None or len(detections) < 2:
            return detections
        classes = np.array([self.ontology.class_of_phrase[int(c)] for c in detections.class_id])
        keep = class_aware_nms(
            torch.from_numpy(detections.xyxy),
            torch.from_numpy(detections.confidence),
            torch.from_numpy(classes),
            self.nms_threshold,
        ).numpy()
        return detections[keep]

    def _failure(self, source: ImageSource, err: BaseException) -> dict[str, Any]:
        logger.warning("%s: not labelled: %s", source.path, reason(err))
        return {"index": source.index, "name": source.name, "error": reason(err)}

    def _copy(self, source: ImageSource) -> None:
        """The original file, byte for byte, into ``images/<name>`` (atomically)."""
        target = self.root / "images" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)

        def write(handle: IO[bytes]) -> None:
            with open(source.path, "rb") as original:
                shutil.copyfileobj(original, handle, 1 << 20)

        with contextlib.suppress(FileExistsError):
            atomic_write(target, write, overwrite=True)

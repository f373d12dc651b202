"""``label_images``: a folder of images in, a data set out; resumable, pipelined, or on Ray."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..availability import require_models
from ..boxes import DEFAULT_NMS_THRESHOLD
from ..checks import check_count, check_limit, check_nms_threshold, check_threshold
from ..devices import resolve_device
from ..errors import OutputError
from ..images import DEFAULT_MAX_PIXELS
from ..outputs import atomic_write, bytes_writer
from ..predictor import DEFAULT_MAX_DETECTIONS, GroundedSAM, ModelRef, default_segmenter
from ..progress import format_seconds
from ..prompts import PromptInput
from ..proposers import PROPOSERS
from .batches import BatchLabeler, BatchResult, plan_batches
from .formats import COCO_FILE, FORMATS, IMAGES, LABELS, MASKS, MASKS_FILE, YOLO_FILE, write_format
from .ontology import Ontology, resolve_ontology
from .records import (
    RECORDS,
    changed_settings,
    done_batches,
    file_digest,
    read_images,
    read_run,
    write_run,
)
from .sources import ImageSet, collect_images

logger = logging.getLogger(__name__)

FAILED_FILE = "failed.txt"
REPORT_FILE = "report.json"
_OWNED_FILES = (COCO_FILE, YOLO_FILE, MASKS_FILE, FAILED_FILE, REPORT_FILE)
_OWNED_FOLDERS = (RECORDS, IMAGES, LABELS, MASKS)
_LABELER_OPTIONS = (  # what BatchLabeler takes of a run's options
    "box_threshold", "text_threshold", "max_detections", "nms_threshold", "max_pixels",
    "copy_images",
)  # fmt: skip


@dataclass
class LabelReport:
    """What a :func:`label_images` run made.

    ``output``: the format's main file (``annotations.json``, ``data.yaml`` or ``masks.json``);
    ``images``: images in the input; ``labelled`` / ``failed``: how many were labelled or could
    not be (``failures``: ``(name, reason)``, also in ``failed.txt``); ``detections`` and
    ``per_class`` (detections per data-set class); ``resumed``: images an earlier run had done;
    ``seconds``: this run's wall time; ``images_per_second``: images this run labelled per
    second of labelling (model loading and the final files not counted; on Ray, the actors'
    start and model loading are).
    """

    out_dir: str
    format: str
    output: str
    images: int
    labelled: int
    failed: int
    detections: int
    per_class: dict[str, int]
    resumed: int
    seconds: float
    images_per_second: float
    failures: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        found = sorted(((n, name) for name, n in self.per_class.items() if n), reverse=True)
        classes = ", ".join(f"{name} {n}" for n, name in found) or "none"
        lines = [
            f"labelled {self.labelled} of {self.images} images into {self.output} "
            f"({self.format}) in {format_seconds(self.seconds)}, "
            f"{self.images_per_second:.2f} images/s"
            + (f"; {self.resumed} were done by an earlier run" if self.resumed else ""),
            f"{self.detections} detections: {classes}",
        ]
        if self.failed:
            lines.append(
                f"{self.failed} image(s) failed, listed with the reason in "
                f"{Path(self.out_dir) / FAILED_FILE}"
            )
        return "\n".join(lines)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_out_dir(out: Path, image_set: ImageSet, is_folder: bool) -> None:
    """The data set must not be written into the input, nor the input inside its folders."""
    target = out.resolve()
    for root in image_set.roots:
        if is_folder and _is_within(target, root):
            raise ValueError(
                f"--out {out} is inside the input folder {root}: the input is never written "
                "to (and a later run would read the data set as input); choose a folder outside"
            )
        if not is_folder and target == root:
            raise ValueError(f"--out {out} is the folder of input images; choose another")
    owned = [target / name for name in _OWNED_FOLDERS]
    for source in image_set.sources[:10_000]:  # enough to catch a data set's own images
        path = source.path.resolve()
        if any(_is_within(path, folder) for folder in owned):
            raise ValueError(
                f"{source.path} is inside the data set's own folders under {out}; label a copy"
            )


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the data set's folder (made if missing) for the block: a
    second run into the same folder, by mistake or a double-click, is refused instead of
    interleaving its records with this one's. The operating system drops the lock when the
    process ends, however it ends, so a killed run leaves nothing stale behind."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = os.open(out, os.O_RDONLY)
    except OSError as err:
        raise OutputError(f"cannot write the data set into {out}: {err}") from err
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): no lock, the rest works the same
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"--out {out}: another grounded-seg label run is writing into it; wait for it "
                "to end (or stop it), then run again with --resume"
            ) from None
        yield
    finally:
        os.close(handle)


def _prepare_out_dir(out: Path, settings: dict[str, Any], resume: bool, overwrite: bool) -> bool:
    """Check (and make) the output folder; returns whether an earlier run's records are kept."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    earlier = read_run(out) if out.is_dir() else None
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if resume and overwrite:
        raise ValueError("--resume continues an earlier run, --overwrite replaces it: pass one")
    if resume and earlier is not None:
        changed = changed_settings(earlier, settings)
        if changed:
            raise ValueError(
                f"--resume: {out} was labelled with other settings; rerun with the same ones, "
                "or pass --overwrite to start again. Changed: " + "; ".join(changed)
            )
        return True
    if resume and present:
        raise ValueError(f"--resume: {out} holds no run to resume (no {RECORDS}/run.json)")
    if present and not overwrite:
        raise FileExistsError(
            f"--out {out} exists and is not empty; pass --resume to continue the run that "
            "made it, or --overwrite to replace it"
        )
    if present and earlier is None:
        raise ValueError(
            f"--overwrite: {out} was not made by grounded-seg label (no {RECORDS}/run.json); "
            "not deleting it: choose an empty or new folder"
        )
    try:
        if present:  # an earlier run's data set, replaced (--overwrite): only what it made
            for name in _OWNED_FOLDERS:
                shutil.rmtree(out / name, ignore_errors=True)
            for name in _OWNED_FILES:
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        write_run(out, settings)
    except (OSError, OutputError) as err:
        raise OutputError(f"cannot write the data set into {out}: {err}") from err
    return False


def _settings(
    image_set: ImageSet, ontology: Ontology, options: dict[str, Any], batch_size: int
) -> dict[str, Any]:
    return {
        "images": file_digest([f"{s.name}\0{s.path}" for s in image_set.sources]),
        "image_count": len(image_set.sources),
        "ontology": ontology.to_dict(),
        "batch_size": batch_size,
        **options,
    }


def _run_local(
    labeler: BatchLabeler,
    todo: list[tuple[int, list]],
    workers: int,
    progress: Any,
) -> None:
    """Label ``todo`` in order. With ``workers``, three stages overlap: worker threads decode,
    preprocess and copy the next batches (at most three batches ahead), the main thread runs
    the models, and one writer thread encodes the masks and writes the records of the batch
    before (at most two batches behind, so memory stays bounded)."""
    if workers == 0:
        for batch, sources in todo:
            progress(labeler.label(batch, sources))
        return
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="label-prepare") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="label-write") as writer,
    ):
        pending: deque[tuple[int, list, list[Future]]] = deque()
        writing: deque[Future] = deque()
        upcoming = iter(todo)

        def submit() -> None:
            for batch, sources in upcoming:
                pending.append((batch, sources, [pool.submit(labeler.prepare, s) for s in sources]))
                return

        for _ in range(3):
            submit()
        try:
            while pending:
                batch, sources, futures = pending.popleft()
                submit()
                prepared = [future.result() for future in futures]
                results = labeler.infer(sources, prepared)
                while len(writing) >= 2:
                    progress(writing.popleft().result())
                writing.append(writer.submit(labeler.record, batch, sources, prepared, results))
            while writing:
                progress(writing.popleft().result())
        finally:
            for _, _, futures in pending:
                for future in futures:
                    future.cancel()


def _finish(
    out: Path, format: str, ontology: Ontology, info: dict[str, Any]
) -> tuple[Path, list[tuple[str, str]], Counter, int]:
    """The final files from the records; returns the main file, the failures, detections per
    class and the number of labelled images."""
    output = write_format(out, format, ontology.classes, info)
    failures: list[tuple[str, str]] = []
    per_class: Counter = Counter({name: 0 for name in ontology.classes})
    labelled = 0
    for image in read_images(out):
        if "error" in image:
            failures.append((image["name"], image["error"]))
            continue
        labelled += 1
        per_class.update(row["class_name"] for row in image["detections"])
    failures.sort()
    text = "".join(f"{name}\t{why}\n" for name, why in failures)
    atomic_write(out / FAILED_FILE, bytes_writer(text.encode("utf-8")), overwrite=True)
    return output, failures, per_class, labelled


def label_images(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    prompt: PromptInput | Mapping[str, str] | Ontology,
    out_dir: str | os.PathLike,
    *,
    format: str = "coco",
    proposer: str = "grounding_dino",
    detector: ModelRef | None = None,
    segmenter: ModelRef | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    max_detections: int | None = DEFAULT_MAX_DETECTIONS,
    nms_threshold: float | None = DEFAULT_NMS_THRESHOLD,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    batch_size: int = 4,
    workers: int = 4,
    resume: bool = False,
    overwrite: bool = False,
    copy_images: bool = True,
    ray: bool | str | None = None,
    progress: bool = True,
) -> LabelReport:
    """Label every image of ``images`` with what ``prompt`` names and write a data set.

    ``images``: a folder (recursive), a glob, a text file of paths or a list of paths (see
    :func:`collect_images`). ``prompt``: the classes, as everywhere (``"cat. dog."``, a list),
    or a ``{phrase: class}`` ontology (``{"kitten": "cat", "cat": "cat"}``: both phrases are
    prompted, both label ``cat``; duplicates of one object are removed by NMS at
    ``nms_threshold``). ``out_dir`` gets ``images/`` (copies of the inputs, named by their
    path relative to the input folder; ``copy_images=False`` leaves them out) and the
    ``format``'s files: ``"coco"`` ``annotations.json`` (RLE masks, scores), ``"yolo"``
    ``labels/*.txt`` polygons and ``data.yaml``, ``"masks"`` ``masks/*.png`` instance ids and
    ``masks.json``; also ``failed.txt`` (images that could not be labelled, with the reason),
    ``report.json`` and ``records/`` (the per-batch results a resume continues from).

    Models and thresholds as in :func:`grounded_seg.segment`. ``batch_size`` images go through
    the models at once (images of one size batched together); ``workers`` threads decode and
    preprocess the next batches meanwhile (0: none, all in the main thread). ``resume``
    continues the run that made ``out_dir`` (same settings): finished batches are not redone
    and the final files equal an uninterrupted run's. ``overwrite`` replaces a data set this
    function made; any other existing, non-empty ``out_dir`` is refused. ``ray``: run the
    batches on Ray Data actors (``True``: a local Ray instance; ``"auto"`` or an address: join
    that cluster; needs ``pip install "grounded-seg[ray]"``). ``progress``: a bar with images/s
    and ETA on stderr.

    Everything is checked before any model loads: ``ValueError`` / ``TypeError`` for bad
    arguments, an empty folder, nothing matched or a bad ontology, ``FileExistsError`` for an
    existing output without ``resume`` / ``overwrite``, ``OutputError`` when ``out_dir``
    cannot be written.
    """
    start = time.perf_counter()
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    if proposer not in PROPOSERS:
        raise ValueError(f"proposer: expected one of {sorted(PROPOSERS)}, got {proposer!r}")
    batch_size = check_count("batch_size", batch_size)
    workers = check_count("workers", workers, low=0)
    box_threshold = check_threshold("box_threshold", box_threshold)
    text_threshold = check_threshold("text_threshold", text_threshold)
    max_detections = check_limit("max_detections", max_detections)
    max_pixels = check_limit("max_pixels", max_pixels)
    nms_threshold = check_nms_threshold(nms_threshold)
    ontology = resolve_ontology(prompt)
    is_folder = isinstance(images, (str, os.PathLike)) and Path(images).expanduser().is_dir()
    if segmenter is None:  # the route's: sam-vit-base, or SAM 3's own masks
        segmenter = default_segmenter(proposer)
    image_set = collect_images(images)
    out = Path(out_dir).expanduser()
    _check_out_dir(out, image_set, is_folder)
    resolve_device(device)  # a device this machine lacks: now, before anything is written
    if ray is not None and ray is not False:
        from .ray_run import require_ray

        require_ray()  # before anything is written or loaded
    else:  # every model present (or downloadable) before anything is written; on Ray the
        # actors' nodes resolve them
        named = [(detector or PROPOSERS[proposer], "detector"), (segmenter, "segmenter")]
        require_models([(model, role) for model, role in named if model is not None])
    options = {
        "proposer": proposer,
        "detector": None if detector is None else os.fspath(detector),
        "segmenter": None if segmenter is None else os.fspath(segmenter),
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "box_threshold": box_threshold,
        "text_threshold": text_threshold,
        "max_detections": max_detections,
        "nms_threshold": nms_threshold,
        "max_pixels": max_pixels,
        "copy_images": copy_images,
    }
    plan = plan_batches(image_set.sources, batch_size, max(workers, 1))
    settings = _settings(image_set, ontology, options, batch_size)
    # the batches themselves: a resume must make the same ones (an image replaced by one of
    # another size since the run began would move images between batches)
    settings["plan"] = file_digest([",".join(str(s.index) for s in b) for b in plan])
    with exclusive(out):  # one run at a time per data set
        resumed = _prepare_out_dir(out, settings, resume, overwrite)

        done = done_batches(out) if resumed else set()
        todo = [(k, sources) for k, sources in enumerate(plan) if k not in done]
        already = sum(len(sources) for k, sources in enumerate(plan) if k in done)
        if resumed:
            logger.info("resuming: %d of %d batches were done", len(plan) - len(todo), len(plan))
        model_options = {
            "proposer": proposer,
            "detector": detector,
            "segmenter": segmenter,
            "device": device,
            "dtype": dtype,
            "nms_threshold": nms_threshold,
        }
        labeler_options = {key: options[key] for key in _LABELER_OPTIONS}
        bar = _ProgressBar(len(image_set.sources), already, progress)
        labelling = 0.0
        try:
            if todo:
                if ray is not None and ray is not False:
                    from .ray_run import run_on_ray

                    t0 = time.perf_counter()
                    run_on_ray(
                        ray, todo, out, ontology, model_options, labeler_options, workers, bar
                    )
                    labelling = time.perf_counter() - t0
                else:
                    labeler = BatchLabeler(
                        load_predictor(model_options), ontology, out, **labeler_options
                    )
                    t0 = time.perf_counter()
                    _run_local(labeler, todo, workers, bar)
                    labelling = time.perf_counter() - t0
        finally:
            bar.close()
        info = {
            "description": "labelled by grounded-seg label",
            "prompt": ontology.to_dict(),
            **{k: v for k, v in options.items() if k != "copy_images"},
        }
        if not copy_images:  # file_name is then relative to the input folder
            info["image_root"] = os.fspath(image_set.base)
        output, failures, per_class, labelled = _finish(out, format, ontology, info)
        done_now = len(image_set.sources) - already
        report = LabelReport(
            out_dir=str(out),
            format=format,
            output=str(output),
            images=len(image_set.sources),
            labelled=labelled,
            failed=len(failures),
            detections=sum(per_class.values()),
            per_class=dict(per_class),
            resumed=already,
            seconds=time.perf_counter() - start,
            images_per_second=done_now / labelling if labelling > 0 else 0.0,
            failures=failures,
        )
        content = json.dumps(report.to_dict(), indent=2) + "\n"
        atomic_write(out / REPORT_FILE, bytes_writer(content.encode("utf-8")), overwrite=True)
        logger.info("%s", report.summary())
        return report


def load_predictor(model_options: dict[str, Any]) -> GroundedSAM:
    """The run's models (``model_options`` as :func:`label_images` collects them)."""
    options = dict(model_options)
    nms_threshold = options.pop("nms_threshold")
    return GroundedSAM(**options, proposer_options={"nms_threshold": nms_threshold})


class _ProgressBar:
    """tqdm over images (images/s and ETA), fed one finished batch at a time."""

    def __init__(self, total: int, initial: int, show: bool) -> None:
        from tqdm.auto import tqdm

        self.detections = 0
        self.failed = 0
        self._bar = tqdm(
            total=total, initial=initial, unit="img", desc="label", disable=not show, smoothing=0.1
        )

    def __call__(self, result: BatchResult) -> None:
        self.detections += result.detections
        self.failed += result.failed
        self._bar.set_postfix(detections=self.detections, failed=self.failed, refresh=False)
        self._bar.update(len(result.images))

    def close(self) -> None:
        self._bar.close()

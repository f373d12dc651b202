"""End-to-end timing of ``grounded_seg`` with full-size, randomly initialised models.

No real weights can be downloaded here, so the two models are built from their default configs
(the real architectures and sizes) with random weights, saved once in the Hugging Face format and
then loaded by ``GroundedSAM`` from those folders exactly as real checkpoints would be:

* detector: ``GroundingDinoConfig()`` defaults = Grounding DINO with a Swin-T image backbone and a
  BERT-base text encoder (~172M parameters), ``GroundingDinoImageProcessorPil()`` defaults (short
  side 800, long side at most 1333) and ``BertTokenizer`` on the real bert-base-uncased vocabulary;
* segmenter: ``SamConfig()`` defaults = SAM ViT-B (~94M parameters), ``SamImageProcessorPil()``
  defaults (longest side 1024, padded to 1024 x 1024).

Random weights need two corrections to time what real weights would cost (``config.json`` stays
the defaults; only weight values change, never shapes or FLOPs):

* ``SamVisionConfig`` initialises with ``initializer_range=1e-10``: the random ViT-B then carries
  activations so small that float32 subnormals appear in its attention and MLPs, and x86 handles
  those ~100x slower (the image encoder took ~120 s instead of ~8 s on 2 cores). The image
  encoder's Linear/Conv weights are re-drawn from N(0, 0.02) (``SamConfig().initializer_range``),
  the scale of real weights;
* Grounding DINO's token logits are huge with random weights (std ~13; the best logit of ~220 of
  the 900 queries rounds to sigmoid = 1.0 in float32, so no threshold can pick a few boxes). The
  affine parameters of the decoder's final LayerNorm (``model.decoder.layer_norm``, which feeds
  only the class and box heads, not the decoder recurrence) are scaled by ``DECODER_NORM_SCALE``,
  giving logits of std ~0.5 and distinct scores.

The box threshold is then calibrated per prompt: the proposals are computed once at threshold 0
and the threshold is set midway between the N-th and (N+1)-th highest score, so that exactly N
boxes (``--boxes``, default 3) reach SAM.

What is timed (``time.perf_counter``, one warm-up run first, then ``--repeats`` runs):

* model load: ``GroundedSAM(detector=<folder>, segmenter=<folder>, device=...)``;
* cold call: ``set_image(image)`` + ``predict(prompt)`` on a fresh per-image state (what one
  ``segment()`` call does once the models are warm): Grounding DINO with its image backbone, then
  SAM's image encoder and mask decoder;
* second prompt: ``predict(other prompt)`` on the same image: the backbone output and the SAM
  image embedding are reused from the per-image cache.

The stages inside a call are timed by wrapping the bound methods of the loaded proposer and
segmenter instances (``encode_image``, ``propose``, ``image_embeddings``, ``segment``), so the
breakdown comes from the very calls ``GroundedSAM.predict`` makes, with no second code path. Each
stage also records the process's CPU time: CPU/wall near the thread count means the stage had
the cores to itself; much lower means it waited (serial code, or another process on the cores).

Usage (from the repository root)::

    python benchmarks/e2e_cpu.py --repeats 3               # CPU, 2 threads
    python benchmarks/e2e_cpu.py --device cuda --repeats 10

The table is printed to stdout and written into ``benchmarks/RESULTS.md`` (one block per device
type, replaced on each run; text outside the blocks is kept).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("e2e_cpu")

HERE = Path(__file__).resolve().parent
GDINO_DIR = "grounding-dino-swin-t-random"
SAM_DIR = "sam-vit-b-random"
META_FILE = "models.json"
IMAGE_HEIGHT, IMAGE_WIDTH = 800, 1200
DECODER_NORM_SCALE = 0.05  # de-saturates Grounding DINO's random token logits (module doc)
SAM_VISION_INIT_STD = 0.02  # instead of SamVisionConfig's 1e-10 (subnormals; module doc)
RECIPE_VERSION = 2  # bump when the way the random models are made changes: they are rebuilt


def _set_offline_env(threads: int) -> None:
    """Nothing may be downloaded; thread pools sized before torch is imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=HERE / "out",
        help="where the random models are saved and reused (default: benchmarks/out, git-ignored)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--dtype", default="float32", help="float32 (CUDA: float16, bfloat16)")
    parser.add_argument("--seed", type=int, default=0, help="model weights and test image seed")
    parser.add_argument("--boxes", type=int, default=3, help="boxes kept per prompt (for SAM)")
    parser.add_argument("--prompt", default="a cat. a dog.", help="prompt of the cold call")
    parser.add_argument(
        "--second-prompt", default="a bird. a car.", help="prompt answered from the cache"
    )
    parser.add_argument(
        "--vocab",
        type=Path,
        default=None,
        help="bert-base-uncased vocab.txt (default: rebuilt by tests/bert_vocab.py)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=HERE / "RESULTS.md",
        help="markdown file to write/update (default: benchmarks/RESULTS.md)",
    )
    parser.add_argument("--no-results", action="store_true", help="do not write the results file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.boxes < 1:
        parser.error("--boxes must be at least 1")
    return args


# --------------------------------------------------------------------------- models on disk


def find_vocab(explicit: Path | None) -> Path:
    """The real bert-base-uncased ``vocab.txt`` (30522 entries)."""
    if explicit is not None:
        path = explicit
    else:  # the tests' copy, rebuilt and checked from a small package (tests/bert_vocab.py)
        sys.path.insert(0, str(HERE.parent / "tests"))
        from bert_vocab import write_bert_vocab

        folder = Path(os.environ.get("TMPDIR", "/tmp")) / "grounded-seg-bert-vocab"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            path = write_bert_vocab(folder)
        except FileNotFoundError as err:
            raise SystemExit(
                f"{err}; or pass --vocab path/to/bert-base-uncased/vocab.txt"
            ) from None
    if not path.is_file():
        raise SystemExit(f"vocabulary not found: {path}")
    return path


def recipe(seed: int) -> dict[str, Any]:
    """What the saved models depend on; a folder made with another recipe is rebuilt."""
    return {
        "version": RECIPE_VERSION,
        "seed": seed,
        "decoder_norm_scale": DECODER_NORM_SCALE,
        "sam_vision_init_std": SAM_VISION_INIT_STD,
    }


def random_sam_vit_b(seed: int) -> Any:
    """SAM ViT-B (``SamConfig()`` defaults) with random weights at the scale of real ones: the
    image encoder's Linear/Conv weights drawn from N(0, ``SAM_VISION_INIT_STD``) (module doc)."""
    import torch
    from transformers import SamConfig, SamModel

    torch.manual_seed(seed)
    model = SamModel(SamConfig()).eval()
    with torch.no_grad():
        for module in model.vision_encoder.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.weight.normal_(0.0, SAM_VISION_INIT_STD)
    return model


def build_models(out_dir: str, seed: int, vocab: str, threads: int) -> None:
    """Build both random full-size models and save them (runs in a child process)."""
    _set_offline_env(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import torch
    import transformers
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        SamImageProcessorPil,
    )

    torch.set_num_threads(threads)
    out = Path(out_dir)
    params: dict[str, int] = {}

    folder = out / GDINO_DIR
    shutil.rmtree(folder, ignore_errors=True)
    logger.info("building Grounding DINO Swin-T (random weights, seed %d) in %s", seed, folder)
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    with torch.no_grad():
        norm = model.model.decoder.layer_norm
        norm.weight.mul_(DECODER_NORM_SCALE)
        norm.bias.mul_(DECODER_NORM_SCALE)
    params["detector"] = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    BertTokenizer(vocab=vocab, do_lower_case=True).save_pretrained(folder)
    GroundingDinoImageProcessorPil().save_pretrained(folder)

    folder = out / SAM_DIR
    shutil.rmtree(folder, ignore_errors=True)
    logger.info("building SAM ViT-B (random weights, seed %d) in %s", seed, folder)
    model = random_sam_vit_b(seed)
    params["segmenter"] = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    SamImageProcessorPil().save_pretrained(folder)

    meta = {"recipe": recipe(seed), "transformers": transformers.__version__, "params": params}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")  # written last: "complete"


def ensure_models(out_dir: Path, seed: int, vocab: Path, threads: int) -> tuple[Path, Path]:
    """The two model folders, built in a child process unless a complete set of this recipe exists.

    Building in a child keeps the random initialisation out of this process's peak RSS.
    """
    gdino, sam = out_dir / GDINO_DIR, out_dir / SAM_DIR
    meta_path = out_dir / META_FILE
    complete = meta_path.is_file() and all(
        (folder / name).is_file()
        for folder in (gdino, sam)
        for name in ("config.json", "model.safetensors", "preprocessor_config.json")
    )
    if complete and json.loads(meta_path.read_text()).get("recipe") == recipe(seed):
        logger.info("reusing the random models in %s", out_dir)
        return gdino, sam
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    start = time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(
        target=build_models, args=(str(out_dir), seed, str(vocab), threads)
    )
    child.start()
    child.join()
    if child.exitcode != 0 or not meta_path.is_file():
        raise SystemExit(f"building the random models failed (exit code {child.exitcode})")
    logger.info("built and saved both models in %.1f s", time.perf_counter() - start)
    return gdino, sam


# --------------------------------------------------------------------------- inputs


def make_image(seed: int, height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH) -> Any:
    """A deterministic RGB uint8 ``(height, width, 3)`` image: coloured shapes on a noisy ramp."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = np.stack([xx / width, yy / height, 1 - xx / width], axis=-1) * 120 + 40
    noise = rng.normal(0, 25, (height, width, 3)).astype(np.float32)
    image = np.clip(gradient + noise, 0, 255).astype(np.uint8)
    cv2.rectangle(image, (80, 90), (420, 500), (210, 40, 40), thickness=-1)
    cv2.circle(image, (700, 300), 170, (40, 180, 60), thickness=-1)
    cv2.ellipse(image, (960, 580), (180, 110), 25, 0, 360, (50, 70, 220), thickness=-1)
    triangle = np.array([[300, 760], [560, 520], [640, 780]], np.int32)
    cv2.fillPoly(image, [triangle], (230, 210, 40))
    cv2.rectangle(image, (880, 60), (1150, 260), (150, 60, 170), thickness=-1)
    return np.ascontiguousarray(image)


# --------------------------------------------------------------------------- timing


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Sample:
    """One timed span: wall seconds and the process's CPU seconds over it."""

    wall: float
    cpu: float

    def __add__(self, other: Sample) -> Sample:
        return Sample(self.wall + other.wall, self.cpu + other.cpu)

    def __sub__(self, other: Sample) -> Sample:
        return Sample(self.wall - other.wall, self.cpu - other.cpu)


ZERO = Sample(0.0, 0.0)


class Clock:
    """Wall and CPU time, with the device synchronised at both ends of every span."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync

    @contextmanager
    def span(self, out: list[Sample]) -> Iterator[None]:
        self.sync()
        wall, cpu = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            self.sync()
            out.append(Sample(time.perf_counter() - wall, cpu_seconds() - cpu))


class StageTimer:
    """Accumulates the time of wrapped bound methods, keyed by stage name."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.stages: dict[str, Sample] = defaultdict(lambda: ZERO)

    def wrap(self, obj: Any, method: str, stage: str) -> None:
        original = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            spans: list[Sample] = []
            try:
                with self.clock.span(spans):
                    return original(*args, **kwargs)
            finally:
                self.stages[stage] += spans[0]

        setattr(obj, method, timed)  # an instance attribute shadows the class's method

    def take(self) -> dict[str, Sample]:
        stages, self.stages = dict(self.stages), defaultdict(lambda: ZERO)
        return stages


def instrument(gs: Any, timer: StageTimer) -> None:
    timer.wrap(gs.proposer, "encode_image", "gdino_pre")
    timer.wrap(gs.proposer, "propose", "gdino_propose")
    timer.wrap(gs.segmenter, "encode_image", "sam_pre")
    timer.wrap(gs.segmenter, "image_embeddings", "sam_embed")
    timer.wrap(gs.segmenter, "segment", "sam_segment")


def calibrate_threshold(gs: Any, image: Any, prompt: str, n_boxes: int) -> tuple[float, list]:
    """A box threshold that keeps exactly ``n_boxes`` proposals for ``prompt`` on ``image``."""
    from grounded_seg import normalize_prompt

    normalized = normalize_prompt(prompt)
    state = gs.proposer.encode_image(image)
    everything = gs.proposer.propose(state, normalized, 0.0, 0.25)
    scores = sorted((float(s) for s in everything.scores), reverse=True)
    if len(scores) < n_boxes:
        raise SystemExit(f"only {len(scores)} proposals for {prompt!r}, {n_boxes} asked for")
    upper = scores[n_boxes - 1]
    lower = scores[n_boxes] if len(scores) > n_boxes else 0.0
    threshold = (upper + lower) / 2
    kept = gs.proposer.propose(state, normalized, threshold, 0.25)  # backbone output is cached
    if not upper > threshold > lower or len(kept) != n_boxes:
        raise SystemExit(
            f"cannot keep exactly {n_boxes} boxes for {prompt!r}: scores {scores[: n_boxes + 2]}"
        )
    return threshold, scores[: n_boxes + 1]


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# --------------------------------------------------------------------------- machine


def machine_line(device: Any) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        match = re.search(
            r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE
        )
        if match:
            cpu = match.group(1).strip()
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        ram = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        ram = ""
    line = (
        f"{platform.system()} {platform.machine()}, {cpu}, os.cpu_count()={os.cpu_count()} "
        f"(usable {usable}){ram}"
    )
    if device.type == "cuda":
        import torch

        line += f"; GPU: {torch.cuda.get_device_name(device)}"
    return line


def versions() -> dict[str, str]:
    import numpy
    import torch
    import transformers

    import grounded_seg

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "grounded_seg": grounded_seg.__version__,
    }


# --------------------------------------------------------------------------- report

ROWS = (
    # (key, label, indent)
    ("load", "model load: `GroundedSAM(detector=dir, segmenter=dir)`", 0),
    ("cold_total", "cold call: `set_image` + `predict` (fresh image)", 0),
    ("cold_gdino_pre", "Grounding DINO preprocessing (in `set_image`)", 1),
    ("cold_gdino_propose", "Grounding DINO propose (Swin-T + BERT + encoder/decoder)", 1),
    ("cold_sam_pre", "SAM preprocessing", 1),
    ("cold_sam_embed", "SAM ViT-B image encoder", 1),
    ("cold_sam_decode", "SAM prompt encoder + mask decoder + mask post-processing", 1),
    ("cold_other", "other (image checks, prompt, box decoding, Detections)", 1),
    ("warm_total", "second prompt: `predict` only (cached image)", 0),
    ("warm_gdino_propose", "Grounding DINO propose (image backbone output cached)", 1),
    ("warm_sam_decode", "SAM mask decoder + post-processing (embedding cached)", 1),
    ("warm_other", "other", 1),
)


def markdown_table(results: dict[str, list[Sample]], boxes: dict[str, int]) -> str:
    lines = [
        "| stage | median s | min s | max s | CPU/wall | boxes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label, indent in ROWS:
        samples = results.get(key)
        if not samples:
            continue
        walls = [s.wall for s in samples]
        med, lo, hi = statistics.median(walls), min(walls), max(walls)
        ratios = [s.cpu / s.wall for s in samples if s.wall > 0.05]  # tiny spans: no ratio
        ratio = f"{statistics.median(ratios):.2f}" if ratios else ""
        name = ("&nbsp;&nbsp;&nbsp;&nbsp;↳ " + label) if indent else f"**{label}**"
        count = str(boxes[key]) if key in boxes else ""
        lines.append(f"| {name} | {med:.3f} | {lo:.3f} | {hi:.3f} | {ratio} | {count} |")
    return "\n".join(lines)


def write_results(path: Path, device_type: str, block: str, name: str = "e2e_cpu") -> None:
    """Replace script ``name``'s block for this device type in ``path`` (or append it); keep
    everything else."""
    begin = f"<!-- BEGIN {name} device={device_type} -->"
    end = f"<!-- END {name} device={device_type} -->"
    new_block = f"{begin}\n{block.rstrip()}\n{end}"
    if path.is_file():
        text = path.read_text()
    else:
        text = (
            "# Benchmarks\n\n"
            "Written by `benchmarks/e2e_cpu.py`: end-to-end timings of `grounded_seg` with "
            "full-size Grounding DINO Swin-T (172M) and SAM ViT-B (94M) of random weights "
            "(the real architectures; no real weights are downloaded; see the script's "
            "docstring for the two weight-scale corrections). Each block below is replaced when "
            "the script runs again on that device type; text outside the blocks is kept.\n"
        )
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: new_block, text)
    else:
        text = text.rstrip() + "\n\n" + new_block + "\n"
    path.write_text(text)


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    wall_start = time.perf_counter()
    _set_offline_env(args.threads)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None

    import torch

    torch.set_num_threads(args.threads)
    from grounded_seg import GroundedSAM
    from grounded_seg.devices import resolve_device

    device = resolve_device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    clock = Clock(sync)
    vocab = find_vocab(args.vocab)
    gdino_dir, sam_dir = ensure_models(args.out_dir.resolve(), args.seed, vocab, args.threads)

    image = make_image(args.seed)
    logger.info(
        "test image %dx%d (W x H); prompts %r (cold) and %r (cached); device %s, %d threads",
        image.shape[1],
        image.shape[0],
        args.prompt,
        args.second_prompt,
        device,
        torch.get_num_threads(),
    )

    results: dict[str, list[Sample]] = defaultdict(list)

    # (a) model load: one warm-up (fills the page cache), then the timed loads.
    gs = None
    for i in range(args.repeats + 1):
        gs = None
        gc.collect()
        spans: list[Sample] = []
        with clock.span(spans):
            gs = GroundedSAM(detector=gdino_dir, segmenter=sam_dir, device=device, dtype=args.dtype)
        logger.info(
            "load %s: %.3f s", "warm-up" if i == 0 else f"{i}/{args.repeats}", spans[0].wall
        )
        if i:
            results["load"].append(spans[0])
    assert gs is not None
    rss_after_load = peak_rss_mib()
    params = {
        "detector": sum(p.numel() for p in gs.proposer.model.parameters()),
        "segmenter": sum(p.numel() for p in gs.segmenter.model.parameters()),
    }
    logger.info(
        "parameters: detector %.1fM, segmenter %.1fM",
        params["detector"] / 1e6,
        params["segmenter"] / 1e6,
    )

    thresholds = {}
    for prompt in (args.prompt, args.second_prompt):
        threshold, top = calibrate_threshold(gs, image, prompt, args.boxes)
        thresholds[prompt] = threshold
        logger.info(
            "box_threshold %.6f keeps %d boxes for %r (top scores %s)",
            threshold,
            args.boxes,
            prompt,
            ", ".join(f"{s:.6f}" for s in top),
        )

    timer = StageTimer(clock)
    instrument(gs, timer)
    boxes: dict[str, int] = {}
    infer: list[Sample] = []
    with clock.span(infer):
        for i in range(args.repeats + 1):
            calls_before = gs.segmenter.encoder_calls

            # (b) cold: a fresh per-image state (no backbone output, no SAM embedding cached).
            timer.take()
            cold_span: list[Sample] = []
            with clock.span(cold_span):
                gs.set_image(image)
                cold = gs.predict(args.prompt, box_threshold=thresholds[args.prompt])
            cold_stages = timer.take()
            if gs.segmenter.encoder_calls != calls_before + 1:
                raise SystemExit("the cold call did not run the SAM image encoder exactly once")

            # (c) second prompt on the same image: predict only, from the per-image cache.
            warm_span: list[Sample] = []
            with clock.span(warm_span):
                warm = gs.predict(args.second_prompt, box_threshold=thresholds[args.second_prompt])
            warm_stages = timer.take()
            if gs.segmenter.encoder_calls != calls_before + 1:
                raise SystemExit("the second prompt ran the SAM image encoder again (cache miss)")
            if len(cold) != args.boxes or len(warm) != args.boxes:
                raise SystemExit(f"expected {args.boxes} boxes, got {len(cold)} and {len(warm)}")

            logger.info(
                "run %s: cold %.3f s (%d boxes), second prompt %.3f s (%d boxes)",
                "warm-up" if i == 0 else f"{i}/{args.repeats}",
                cold_span[0].wall,
                len(cold),
                warm_span[0].wall,
                len(warm),
            )
            if i == 0:
                continue
            boxes["cold_total"], boxes["warm_total"] = len(cold), len(warm)
            cold_parts = {
                "cold_gdino_pre": cold_stages["gdino_pre"],
                "cold_gdino_propose": cold_stages["gdino_propose"],
                "cold_sam_pre": cold_stages["sam_pre"],
                "cold_sam_embed": cold_stages["sam_embed"],
                "cold_sam_decode": cold_stages["sam_segment"] - cold_stages["sam_embed"],
            }
            results["cold_total"].append(cold_span[0])
            for key, value in cold_parts.items():
                results[key].append(value)
            results["cold_other"].append(cold_span[0] - sum(cold_parts.values(), ZERO))
            warm_propose, warm_segment = warm_stages["gdino_propose"], warm_stages["sam_segment"]
            results["warm_total"].append(warm_span[0])
            results["warm_gdino_propose"].append(warm_propose)
            results["warm_sam_decode"].append(warm_segment)  # includes the cached-embedding get
            results["warm_other"].append(warm_span[0] - warm_propose - warm_segment)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    rss_end = peak_rss_mib()
    total_wall = time.perf_counter() - wall_start

    # ---------------------------------------------------------------- report
    table = markdown_table(results, boxes)
    command = "python " + shlex.join(sys.argv)
    notes = [
        f"- machine: {machine_line(device)}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- device: {device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}",
        f"- command: `{command}`",
        f"- models (random weights, seed {args.seed}, default configs): Grounding DINO Swin-T + "
        f"BERT-base, {params['detector']:,} parameters (decoder's final LayerNorm scaled by "
        f"{DECODER_NORM_SCALE} so the random logits are not saturated); SAM ViT-B, "
        f"{params['segmenter']:,} parameters (image encoder weights drawn with std "
        f"{SAM_VISION_INIT_STD}, not the config's 1e-10, which makes float32 subnormals)",
        f"- input: {image.shape[1]}x{image.shape[0]} (W x H) synthetic RGB image; cold prompt "
        f"`{args.prompt}` (box_threshold {thresholds[args.prompt]:.6f}), second prompt "
        f"`{args.second_prompt}` (box_threshold {thresholds[args.second_prompt]:.6f}); "
        f"thresholds calibrated so that exactly {args.boxes} boxes reach SAM",
        f"- statistics: median, min and max of wall time over {args.repeats} timed runs after "
        f"1 warm-up; CPU/wall = median of (process CPU time / wall time): about "
        f"{args.threads} when a stage had its {args.threads} threads' cores to itself",
        f"- peak RSS (ru_maxrss): {rss_after_load:,.0f} MiB after the model loads, "
        f"{rss_end:,.0f} MiB at the end (the models are built in a child process, not counted)",
        f"- all inference runs (warm-up included): {infer[0].wall:.1f} s wall, "
        f"{infer[0].cpu / infer[0].wall:.2f} CPU/wall",
    ]
    if load_before is not None and load_after is not None:
        notes.append(
            "- load average (1/5/15 min) at start "
            + "/".join(f"{v:.2f}" for v in load_before)
            + ", at end "
            + "/".join(f"{v:.2f}" for v in load_after)
        )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        notes.append(f"- peak CUDA memory allocated: {peak:,.0f} MiB")
    notes.append(f"- total wall time of the script: {total_wall:.1f} s")
    block = "\n".join(
        [
            f"## End-to-end, {device.type}, {time.strftime('%Y-%m-%d %H:%M %Z')}",
            "",
            *notes,
            "",
            table,
            "",
        ]
    )
    print(table)
    print()
    print("\n".join(notes))
    if not args.no_results:
        write_results(args.results, device.type, block)
        logger.info("results written to %s", args.results)
    logger.info("total wall time %.1f s", total_wall)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

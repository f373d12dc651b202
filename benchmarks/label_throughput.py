"""Throughput of ``label_images`` over a folder: batch sizes, with and without pipelining,
against the models' own throughput; and memory over a long run.

For each model pair and each batch size B:

- **models**: ``GroundedSAM.predict_batch`` over images prepared beforehand (decoded and
  preprocessed, not timed): the rate the models allow, images/s;
- **label, plain**: ``label_images(..., batch_size=B, workers=0)``: every image read, decoded
  and preprocessed in the main thread between model calls, records and image copies written;
- **label, pipelined**: the same with ``workers=4`` threads preparing the next batches.

Rates are images / labelling seconds (model loading and the final files not counted), the
median of ``--repeats`` runs. The pipelining target is pipelined >= 0.9 x models (decoding
hidden). Memory: one run over ``--rss-images`` shapes scenes, resident set size sampled every
0.1 s; growth after warm-up (the first 10% of images) must stay under 5%.

Model pairs: ``shapes`` (the bundled shapes-gdino + shapes-sam, 128 px PNG scenes) and ``full``
(Grounding DINO Swin-T + SAM ViT-B, full size, random weights, built by ``e2e_cpu.py``, on
1200 x 800 JPEGs; box threshold calibrated so that a few boxes per image reach SAM).

    python benchmarks/label_throughput.py                        # CPU: both pairs
    python benchmarks/label_throughput.py --device cuda --dtype bfloat16 --full-images 64
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import set_offline_env  # noqa: E402
from _results import write_results  # noqa: E402
from _synthetic import ensure_models, find_vocab, make_image  # noqa: E402

logger = logging.getLogger("label_throughput")
BATCH_SIZES = (1, 4, 8)
PROMPT = "red circle. blue square. yellow star. green triangle."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default=None, help="float32 if not given; bfloat16, float16")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--shapes-images", type=int, default=64, help="folder size, shapes")
    parser.add_argument("--full-images", type=int, default=8, help="folder size, full-size")
    parser.add_argument("--full-repeats", type=int, default=1, help="runs per cell, full-size")
    parser.add_argument("--rss-images", type=int, default=1000, help="images of the RSS run")
    parser.add_argument("--pairs", default="shapes,full", help="which model pairs to run")
    parser.add_argument("--out-dir", type=Path, default=HERE / "out", help="random models")
    parser.add_argument("--vocab", type=Path, default=None, help="bert-base-uncased vocab.txt")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-results", action="store_true", help="print only")
    return parser.parse_args(argv)


def rss_mib() -> float:
    """This process's resident set size now, MiB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def shapes_folder(folder: Path, count: int, start: int) -> list[Path]:
    from PIL import Image

    from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(HELD_OUT_SEEDS.start + start, HELD_OUT_SEEDS.start + start + count):
        path = folder / f"{seed}.png"
        if not path.exists():
            Image.fromarray(make_scene(seed).image).save(path)
        paths.append(path)
    return paths


def full_folder(folder: Path, count: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / f"{seed:04d}.jpg"
        if not path.exists():
            Image.fromarray(make_image(seed)).save(path, quality=90)
        paths.append(path)
    return paths


def models_rate(predictor: Any, paths: list[Path], batch: int, options: dict, sync) -> float:
    """Images/s of ``predict_batch`` on images prepared beforehand (not timed)."""
    prepared = [predictor.prepare(p) for p in paths]
    sync()
    start = time.perf_counter()
    for i in range(0, len(prepared), batch):
        predictor.predict_batch(prepared[i : i + batch], PROMPT, **options)
    sync()
    return len(paths) / (time.perf_counter() - start)


def label_rate(
    paths: list[Path], out: Path, batch: int, workers: int, models: dict, options: dict
) -> float:
    from grounded_seg import label_images

    report = label_images(
        paths, PROMPT, out, batch_size=batch, workers=workers, progress=False, overwrite=True,
        **models, **options,
    )  # fmt: skip
    return report.images_per_second


def calibrate(predictor: Any, paths: list[Path], boxes: int = 3) -> float:
    """A box threshold at which about ``boxes`` boxes per image reach SAM (random weights)."""
    predictor.set_image(paths[0])
    found = predictor.predict(PROMPT, box_threshold=0.0, max_detections=boxes)
    return float(found.confidence[-1]) - 1e-6 if len(found) else 0.0


def run_pair(name: str, args, device: str, sync, work: Path) -> list[dict[str, Any]]:
    from grounded_seg import GroundedSAM

    if name == "shapes":
        models = {"detector": "shapes-gdino", "segmenter": "shapes-sam"}
        paths = shapes_folder(work / "shapes", args.shapes_images, 4000)
        repeats = args.repeats
    else:
        gdino, sam = ensure_models(args.out_dir, 0, find_vocab(args.vocab), args.threads)
        models = {"detector": str(gdino), "segmenter": str(sam)}
        paths = full_folder(work / "full", args.full_images)
        repeats = args.full_repeats
    models.update(device=device, dtype=args.dtype)
    predictor = GroundedSAM(**models)
    threshold = 0.35 if name == "shapes" else calibrate(predictor, paths)
    options = {"box_threshold": threshold}
    predictor.predict_batch(paths[:2], PROMPT, **options)  # warm-up
    rows = []
    for batch in BATCH_SIZES:
        cells: dict[str, list[float]] = {"models": [], "plain": [], "pipelined": []}
        for _ in range(repeats):
            cells["models"].append(models_rate(predictor, paths, batch, options, sync))
            for key, workers in (("plain", 0), ("pipelined", 4)):
                out = work / f"{name}-b{batch}-{key}"
                cells[key].append(label_rate(paths, out, batch, workers, models, options))
        row = {k: statistics.median(v) for k, v in cells.items()}
        row.update(pair=name, batch=batch, images=len(paths), repeats=repeats)
        logger.info("%s", row)
        rows.append(row)
    return rows


def rss_run(args, device: str, work: Path) -> dict[str, Any]:
    """RSS over one long shapes run in a fresh process (its numbers are its own)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_rss_child, (args.rss_images, args.threads, device, str(work)))


def _rss_child(count: int, threads: int, device: str, work_dir: str) -> dict[str, Any]:
    """RSS over one long shapes run, sampled every 0.1 s."""
    set_offline_env(threads)
    import torch

    import grounded_seg
    from grounded_seg import label_images

    torch.set_num_threads(threads)
    grounded_seg.reuse_freed_memory()  # as the grounded-seg command does
    work = Path(work_dir)
    paths = shapes_folder(work / "rss", count, 20000)
    out = work / "rss-out"
    samples: list[tuple[int, float]] = []  # (images done, RSS MiB)
    stop = threading.Event()

    def sample() -> None:
        from grounded_seg.labeling.records import done_batches

        while not stop.is_set():
            samples.append((8 * len(done_batches(out)), rss_mib()))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    report = label_images(
        paths, PROMPT, out, batch_size=8, workers=4, progress=False,
        detector="shapes-gdino", segmenter="shapes-sam", device=device, overwrite=True,
    )  # fmt: skip
    stop.set()
    sampler.join()
    warm_up = len(paths) // 10  # the first 10% of the images
    warm = [rss for done, rss in samples if 0 < done <= warm_up] or [samples[0][1]]
    after = [rss for done, rss in samples if done > warm_up]
    return {
        "images": len(paths),
        "warm": max(warm),
        "peak": max(after),
        "end": after[-1],
        "growth": max(after) / max(warm) - 1,
        "rate": report.images_per_second,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_offline_env(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch
    from _stages import synchronizer

    import grounded_seg
    from grounded_seg.devices import resolve_device

    torch.set_num_threads(args.threads)
    grounded_seg.reuse_freed_memory()  # as the grounded-seg command does
    device = resolve_device(args.device)
    sync = synchronizer(device)

    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="label-bench-") as tmp:
        work = Path(tmp)
        for pair in [p for p in args.pairs.split(",") if p]:
            rows += run_pair(pair, args, str(device), sync, work)
        rss = rss_run(args, str(device), work) if args.rss_images else None
    lines = [
        f"## Labelling throughput, {device.type}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",  # noqa: E501
        "",
        f"- machine: {platform.system()} {platform.machine()}, os.cpu_count()={os.cpu_count()}; "
        f"versions: torch {torch.__version__}, grounded_seg {grounded_seg.__version__}",
        f"- device {device}, dtype {args.dtype or 'float32'}, torch threads {args.threads}; "
        f"prompt `{PROMPT}`; `reuse_freed_memory()` on, as in the `grounded-seg` command",
        f"- command: `python benchmarks/label_throughput.py {' '.join(argv or sys.argv[1:])}`",
        "- images/s = images / labelling seconds; median of the repeats; pipelined/models is the "
        "share of the models' own rate that labelling keeps (target >= 0.9)",
        "",
        "| models | images | batch | models img/s | label plain img/s | label pipelined img/s "
        "| pipelined / models | batch B / batch 1 (pipelined) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    first = {r["pair"]: r["pipelined"] for r in rows if r["batch"] == 1}
    for r in rows:
        lines.append(
            f"| {r['pair']} | {r['images']} (x{r['repeats']}) | {r['batch']} | {r['models']:.3g} "
            f"| {r['plain']:.3g} | {r['pipelined']:.3g} | {r['pipelined'] / r['models']:.2f} "
            f"| {r['pipelined'] / first[r['pair']]:.2f} |"
        )
    if rss is not None:
        lines += [
            "",
            f"- RSS over {rss['images']} shapes images in a fresh process (batch 8, 4 workers, "
            f"{rss['rate']:.1f} img/s): {rss['warm']:.0f} MiB at most over the first 10% "
            "of the images, "
            f"peak after it {rss['peak']:.0f} MiB, at the end {rss['end']:.0f} MiB: growth "
            f"{100 * rss['growth']:.1f}% (target < 5%)",
        ]
    lines.append(f"- total wall time of the script: {time.perf_counter() - started:.0f} s")
    block = "\n".join(lines)
    print(block)
    if not args.no_results:
        write_results(args.results, device.type, block, name="label_throughput")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

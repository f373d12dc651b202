"""Frames/s of ``track()`` per route, and its memory at 100 vs 1,000 frames.

Routes and models (CPU has no trained SAM 2 or SAM 3 here, so those two run on random weights:
the work per frame is the real architecture's, the answers are not meaningful):

- ``bytetrack``: shapes-gdino + shapes-sam (the bundled models), ``every`` x ``batch`` settings;
- ``sam2``: shapes-gdino on keyframes, a full-size SAM 2.1-tiny ``Sam2VideoModel`` (the hub
  config's sizes, random weights) propagating between them;
- ``sam3``: a full-size ``Sam3VideoModel`` (the default config, random weights; its detection
  thresholds off so that random scores start objects, at most ``--sam3-objects``).

A generated shapes video (folder of 128 px PNGs) is tracked in a fresh process per run;
frames/s = frames / tracking seconds (models loaded before the clock), the median of
``--repeats``. Memory: the resident set size of a process tracking 100 frames and of one
tracking 1,000, sampled every 0.1 s (peak after the first 10 frames): flat means reading,
tracking and writing stream. For ``sam2`` and ``sam3`` the memory runs use the tests' tiny
video models (``tests/tiny_sam2_video.py``, ``tests/tiny_sam3_video.py``: the same session code
and memory bounds, 1,000 frames in minutes instead of hours).

    python benchmarks/track_throughput.py                  # CPU, every route
    python benchmarks/track_throughput.py --routes bytetrack --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the tiny video model builders
from _results import write_results  # noqa: E402

SEED = 1_000_000 + 14000  # HELD_OUT_SEEDS.start + 14000: no test or tuning video uses it
OUT = HERE / "out" / "track"
ROUTES = ("bytetrack", "sam2", "sam3")
SAM3_START_ANY = {"score_threshold_detection": 0.0, "new_det_thresh": 0.0}
"""A random SAM 3 scores every detection near 0 (it started no object at 0.2 / 0.25 on these
videos): with no threshold it starts objects up to ``max_num_objects``, so that the tracker
works as it would for a trained model finding that many."""


def build_model(route: str, size: str, folder: Path, sam3_objects: int) -> Path:
    """Save the video model of ``route`` (``size``: "full" or "tiny") in ``folder`` once."""
    import torch

    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if route == "sam2" and size == "tiny":
        from tiny_sam2_video import save_tiny_sam2_video

        return save_tiny_sam2_video(folder)
    if route == "sam3" and size == "tiny":
        from tiny_sam3_video import save_tiny_sam3_video

        return save_tiny_sam3_video(folder, **SAM3_START_ANY)
    torch.manual_seed(0)
    if route == "sam2":
        from model_families import _sam2_config
        from tiny_sam2_video import OBJECT_BIAS
        from transformers import Sam2VideoConfig, Sam2VideoModel

        from grounded_seg.official.sam2 import processor_config

        vision = _sam2_config("tiny").vision_config
        model = Sam2VideoModel(Sam2VideoConfig(vision_config=vision.to_dict())).eval()
        with torch.no_grad():  # objects judged present, as a trained model judges them
            model.mask_decoder.pred_obj_score_head.proj_out.bias.add_(OBJECT_BIAS)
        model.save_pretrained(folder)
        settings = json.dumps(processor_config(), indent=2)
        (folder / "preprocessor_config.json").write_text(settings + "\n")
        return folder
    from tiny_sam3 import write_preprocessor_config
    from transformers import Sam3VideoConfig, Sam3VideoModel

    from grounded_seg.shapes.clip_tokenizer import write_clip_tokenizer

    config = Sam3VideoConfig(
        **SAM3_START_ANY, max_num_objects=sam3_objects,
        det_nms_thresh=0.0, fill_hole_area=0,  # both need the hub's kernels package
    )  # fmt: skip
    Sam3VideoModel(config).eval().save_pretrained(folder)
    write_preprocessor_config(folder, size=1008)
    write_clip_tokenizer(folder)
    return folder


def child(route: str, folder: str, prompt: str, every: int, batch: int, device: str,
          model: str) -> dict[str, Any]:  # fmt: skip
    """Runs in a fresh process: track the folder, report frames/s and peak RSS."""
    import threading

    from grounded_seg import GroundedSAM
    from grounded_seg.video import track

    peak, stop = [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with open("/proc/self/statm") as handle:
                rss = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
            peak[0] = max(peak[0], rss)
            time.sleep(0.1)

    if route == "sam3":
        from grounded_seg.video.sam3_route import load_sam3_video

        frames = track(folder, prompt, tracker="sam3", box_threshold=0.0,  # see SAM3_START_ANY
                       predictor=load_sam3_video(model, device))  # fmt: skip
    else:
        models = GroundedSAM("shapes-gdino", "shapes-sam", device=device)
        # match_iou 0 on the sam2 route: a random video model's masks never overlap the
        # detections, so every keyframe would start new objects; matched regardless, the route
        # carries the video's own objects, as a trained model does
        options = ({"video_model": model, "match_iou": 0.0} if route == "sam2"
                   else {"batch_size": batch})  # fmt: skip
        frames = track(folder, prompt, tracker=route, every=every, predictor=models, **options)
    threading.Thread(target=sample, daemon=True).start()
    start, count, ids = time.perf_counter(), 0, set()
    for count, found in enumerate(frames, 1):
        ids.update(found.tracker_id.tolist())
        if count == 10:  # (a shorter video: the peak over all its frames)
            peak[0] = 0.0  # memory after warm-up
    seconds = time.perf_counter() - start
    stop.set()
    return {"frames": count, "fps": count / seconds, "peak_mib": peak[0], "objects": len(ids)}


def run_child(route: str, folder: Path, prompt: str, every: int, batch: int, device: str,
              model: Path | None = None) -> dict[str, Any]:  # fmt: skip
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from track_throughput import child; "
        "a = sys.argv[2:]; print(json.dumps(child(a[0], a[1], a[2], int(a[3]), int(a[4]), a[5], "
        "a[6])))"
    )
    command = [sys.executable, "-c", code, str(HERE), route, str(folder), prompt, str(every)]
    done = subprocess.run([*command, str(batch), device, str(model or "")],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{route} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_folder(root: Path, frames: int) -> tuple[Path, str]:
    """A shapes video of ``frames`` frames as a folder of PNGs, and its prompt."""
    from PIL import Image

    from grounded_seg.shapes.video import make_video

    folder = root / f"v{frames}"
    video = make_video(SEED, frames=frames)
    if not folder.is_dir():
        folder.mkdir()
        for t, frame in enumerate(video.frames):
            Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return folder, ". ".join(dict.fromkeys(video.phrases)) + "."


def report(args: argparse.Namespace, prompt: str, speed: list[tuple], memory: dict[str, dict],
           wall: float) -> str:  # fmt: skip
    """One RESULTS.md block: the frames/s rows and the memory rows of some routes."""
    import torch
    import transformers

    from grounded_seg import __version__

    now = time.gmtime()
    memory_lines = []
    for route, peaks in memory.items():
        growth = 100 * (peaks[1000] / peaks[100] - 1)
        models = {"bytetrack": "shapes models, every 1, batch 8",
                  "sam2": "shapes-gdino every 5 + tiny SAM 2.1 video model",
                  "sam3": "tiny SAM 3 video model"}[route]  # fmt: skip
        memory_lines.append(
            f"| {route} | {models} | {peaks[100]:.0f} | {peaks[1000]:.0f} | {growth:+.1f}% |"
        )
    routes = ", ".join(dict.fromkeys([row[0] for row in speed] + list(memory)))
    lines = [
        f"## Tracking throughput ({routes}), {args.device}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', now)}",
        "",
        f"- machine: {platform.system()} {platform.machine()}, os.cpu_count()={os.cpu_count()}; "
        f"versions: torch {torch.__version__}, transformers {transformers.__version__}, "
        f"grounded_seg {__version__}",
        f"- `track()` on generated 128 px shapes videos (folders of PNGs), prompt `{prompt}`; "
        f"fresh process per run, median of {args.repeats} (bytetrack) and {args.model_repeats} "
        "(sam2, sam3); peak RSS after the first 10 frames (over all frames for shorter videos); "
        "random-weight models measure cost, not answers",
        f"- command: `python benchmarks/track_throughput.py {' '.join(sys.argv[1:])}`",
        "",
        "| route | models | frames | every | batch | objects | frames/s | peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {r} | {m} | {n} | {e} | {b} | {k} | {fps:.3g} | {mib:.0f} |"
            for r, m, n, e, b, fps, mib, k in speed
        ],
        "",
        "Peak RSS after the first 10 frames, MiB:",
        "",
        "| route | models | 100 frames | 1,000 frames | growth |",
        "|---|---|---:|---:|---:|",
        *memory_lines,
        "",
        f"- total wall time of the script: {wall:.0f} s",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    parser.add_argument("--frames", type=int, default=200, help="bytetrack's video")
    parser.add_argument("--model-frames", type=int, default=20, help="sam2's and sam3's video")
    parser.add_argument("--repeats", type=int, default=3, help="bytetrack's runs per setting")
    parser.add_argument("--model-repeats", type=int, default=1, help="sam2's and sam3's")
    parser.add_argument("--sam3-objects", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-results", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="skip the frames/s runs")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    wall = time.perf_counter()
    speed: list[tuple[str, str, int, int, int, float, float, int]] = []
    memory: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for route in [] if args.memory_only else args.routes:
            if route == "bytetrack":
                folder, prompt = make_folder(root, args.frames)
                for every, batch in ((1, 1), (1, 8), (2, 8)):
                    runs = [run_child(route, folder, prompt, every, batch, args.device)
                            for _ in range(args.repeats)]  # fmt: skip
                    fps = statistics.median(r["fps"] for r in runs)
                    peak = max(r["peak_mib"] for r in runs)
                    speed.append((route, "shapes-gdino + shapes-sam", args.frames, every, batch,
                                  fps, peak, runs[0]["objects"]))  # fmt: skip
                    print(speed[-1], flush=True)
                continue
            folder, prompt = make_folder(root, args.model_frames)
            model = build_model(route, "full", OUT / f"{route}-full", args.sam3_objects)
            label = ("shapes-gdino + SAM 2.1-tiny video (full size, random)" if route == "sam2"
                     else "SAM 3 video (full size, random)")  # fmt: skip
            for every in (1, 5) if route == "sam2" else (1,):
                runs = [run_child(route, folder, prompt, every, 1, args.device, model)
                        for _ in range(args.model_repeats)]  # fmt: skip
                fps = statistics.median(r["fps"] for r in runs)
                peak = max(r["peak_mib"] for r in runs)
                speed.append((route, label, args.model_frames, every, 1, fps, peak,
                              runs[0]["objects"]))  # fmt: skip
                print(speed[-1], flush=True)
        for route in args.routes:
            model = None if route == "bytetrack" else build_model(
                route, "tiny", OUT / f"{route}-tiny", args.sam3_objects
            )  # fmt: skip
            memory[route] = {}
            for frames in (100, 1000):
                folder, prompt = make_folder(root, frames)
                every, batch = (1, 8) if route == "bytetrack" else (5 if route == "sam2" else 1, 1)
                run = run_child(route, folder, prompt, every, batch, args.device, model)
                memory[route][frames] = run["peak_mib"]
                print(route, frames, run, flush=True)
    wall = time.perf_counter() - wall
    for name, group in (("track_throughput", ("bytetrack",)), ("track_routes", ("sam2", "sam3"))):
        rows = [row for row in speed if row[0] in group]
        peaks = {route: memory[route] for route in group if route in memory}
        if not rows and not peaks:
            continue
        block = report(args, prompt, rows, peaks, wall)
        print(block)
        if not args.no_results:
            write_results(args.results, args.device.split(":")[0], block, name=name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

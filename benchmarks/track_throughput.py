"""Frames/s of ``track()`` (``bytetrack`` route, shapes models) and its memory at 100 vs 1,000
frames.

For each setting (``every`` x ``batch_size``) a generated shapes video of ``--frames`` frames
(folder of PNGs) is tracked in a fresh process; frames/s = frames / tracking seconds (models
loaded before the clock), the median of ``--repeats``. Memory: the resident set size of a
process tracking 100 frames and of one tracking 1,000, sampled every 0.1 s (peak after the
first 10 frames): flat means the reading, tracking and writing stream.

    python benchmarks/track_throughput.py                  # CPU
    python benchmarks/track_throughput.py --device cuda
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from e2e_cpu import write_results  # noqa: E402

SEED = 1_000_000 + 14000  # HELD_OUT_SEEDS.start + 14000: no test or tuning video uses it


def child(folder: str, prompt: str, every: int, batch: int, device: str) -> dict:
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

    models = GroundedSAM("shapes-gdino", "shapes-sam", device=device)
    threading.Thread(target=sample, daemon=True).start()
    start, count = time.perf_counter(), 0
    for count, _ in enumerate(track(folder, prompt, every=every, batch_size=batch,
                                    predictor=models), 1):  # fmt: skip
        if count == 10:
            peak[0] = 0.0  # memory after warm-up
    seconds = time.perf_counter() - start
    stop.set()
    return {"frames": count, "fps": count / seconds, "peak_mib": peak[0]}


def run_child(folder: Path, prompt: str, every: int, batch: int, device: str) -> dict:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from track_throughput import child; "
        "print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), "
        "sys.argv[6])))"
    )
    command = [sys.executable, "-c", code, str(HERE), str(folder), prompt, str(every), str(batch)]
    done = subprocess.run([*command, device], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_folder(root: Path, frames: int) -> tuple[Path, str]:
    from PIL import Image

    from grounded_seg.shapes.video import make_video

    video = make_video(SEED, frames=frames)
    folder = root / f"v{frames}"
    folder.mkdir()
    for t, frame in enumerate(video.frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return folder, ". ".join(dict.fromkeys(video.phrases)) + "."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    wall = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        folder, prompt = make_folder(Path(root), args.frames)
        for every, batch in ((1, 1), (1, 8), (2, 8)):
            runs = [
                run_child(folder, prompt, every, batch, args.device) for _ in range(args.repeats)
            ]
            rows.append((every, batch, statistics.median(r["fps"] for r in runs)))
            print(rows[-1], flush=True)
        memory = {}
        for frames in (100, 1000):
            small, _ = make_folder(Path(root), frames) if frames != args.frames else (folder, None)
            memory[frames] = run_child(small, prompt, 1, 8, args.device)["peak_mib"]
            print(frames, memory[frames], flush=True)
    import torch

    from grounded_seg import __version__

    now = time.gmtime()
    growth = 100 * (memory[1000] / memory[100] - 1)
    lines = [
        f"## Tracking throughput, {args.device}, {time.strftime('%Y-%m-%d %H:%M UTC', now)}",
        "",
        f"- machine: {platform.system()} {platform.machine()}, os.cpu_count()={os.cpu_count()}; "
        f"versions: torch {torch.__version__}, grounded_seg {__version__}",
        f"- `track()` route `bytetrack`, shapes-gdino + shapes-sam, a {args.frames}-frame 128 px "
        f"shapes video (folder of PNGs), prompt `{prompt}`; fresh process per run, median of "
        f"{args.repeats}",
        f"- command: `python benchmarks/track_throughput.py {' '.join(sys.argv[1:])}`",
        "",
        "| every | batch | frames/s |",
        "|---:|---:|---:|",
        *[f"| {e} | {b} | {fps:.1f} |" for e, b, fps in rows],
        "",
        f"- peak RSS after the first 10 frames (every 1, batch 8): {memory[100]:.0f} MiB over 100 "
        f"frames, {memory[1000]:.0f} MiB over 1,000 ({growth:+.1f}%)",
        f"- total wall time of the script: {time.perf_counter() - wall:.0f} s",
    ]
    block = "\n".join(lines)
    print(block)
    if not args.no_results:
        write_results(args.results, args.device.split(":")[0], block, name="track_throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())

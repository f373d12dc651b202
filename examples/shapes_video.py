"""A shapes video as a folder of frames, with its MOT ground truth: input for grounded-seg track.

    python examples/shapes_video.py shapes-video/ [--seed S] [--frames 48]
    grounded-seg track shapes-video/frames "red circle. blue star." -o tracked.mp4 \\
        --mot tracks.txt --detector shapes-gdino --segmenter shapes-sam
    grounded-seg eval-video shapes-video/gt.txt tracks.txt

Offline: the video is generated (``grounded_seg.shapes.video``); its prompt is printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from grounded_seg.shapes import HELD_OUT_SEEDS
from grounded_seg.shapes.video import make_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a new folder")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEEDS.start + 13000)
    parser.add_argument("--frames", type=int, default=48)
    args = parser.parse_args()
    video = make_video(args.seed, frames=args.frames)
    (args.out / "frames").mkdir(parents=True)
    for t, frame in enumerate(video.frames):
        Image.fromarray(frame).save(args.out / "frames" / f"{t:05d}.png")
    (args.out / "gt.txt").write_text(video.mot_text())
    print(". ".join(dict.fromkeys(video.phrases)) + ".")


if __name__ == "__main__":
    main()

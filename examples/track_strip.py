"""A frame strip of a tracked shapes video: every 8th frame, masks, boxes and "class #id".

    python examples/track_strip.py [-o docs/track_strip.png] [--seed S]

Offline: a generated shapes video (``grounded_seg.shapes.video``), tracked by ``track()`` on the
``bytetrack`` route with the bundled shapes-gdino + shapes-sam; prints its TrackEval scores.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from grounded_seg import annotate
from grounded_seg.shapes import HELD_OUT_SEEDS
from grounded_seg.shapes.video import make_video
from grounded_seg.video import track
from grounded_seg.video.metrics import score_tracks

SCALE = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="track_strip.png")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEEDS.start + 13001)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    video = make_video(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        for t, frame in enumerate(video.frames):
            Image.fromarray(frame).save(Path(folder) / f"{t:04d}.png")
        prompt = list(dict.fromkeys(video.phrases))
        frames = list(track(folder, prompt, detector="shapes-gdino", segmenter="shapes-sam"))
    scores = score_tracks(video.ids, video.boxes, [f.tracker_id for f in frames],
                          [f.xyxy for f in frames])  # fmt: skip
    shown = []
    for t in range(0, len(frames), 8):
        big = frames[t][np.arange(len(frames[t]))]
        big.xyxy = frames[t].xyxy * SCALE
        big.mask = frames[t].mask.repeat(SCALE, axis=1).repeat(SCALE, axis=2)
        image = video.frames[t].repeat(SCALE, axis=0).repeat(SCALE, axis=1)
        shown += [np.asarray(annotate(image, big)), np.full((128 * SCALE, 6, 3), 255, np.uint8)]
    Image.fromarray(np.concatenate(shown[:-1], axis=1)).save(args.output)
    text = f"HOTA {scores.hota:.3f} IDF1 {scores.idf1:.3f} MOTA {scores.mota:.3f}"
    logging.info("%s: %s, %d ID switches; wrote %s", ", ".join(prompt), text,
                 scores.id_switches, args.output)  # fmt: skip


if __name__ == "__main__":
    main()

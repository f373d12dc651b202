"""Pictures of explain() and edit() on a shapes scene, offline with the bundled models.

    python examples/explain_and_edit.py [--explain docs/explain.png] [--edit docs/edit.png]

The first is Grounding DINO's four stages for four classes (three present, one absent); the
second a strip: the scene, then the red circle removed, the blue square recoloured orange, the
yellow star cut out (on a checkerboard: transparent around it) and blurred.
"""

from __future__ import annotations

import argparse
import logging

import cv2
import numpy as np
from PIL import Image

from grounded_seg import GroundedSAM, apply_edit
from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene

SCALE = 3  # the scenes are 128 px; the strip is drawn larger


def panel(image: np.ndarray, title: str) -> np.ndarray:
    """An RGB(A) image enlarged, alpha over a checkerboard, a title band above it."""
    big = image.repeat(SCALE, axis=0).repeat(SCALE, axis=1)
    if big.shape[2] == 4:
        y, x = np.indices(big.shape[:2])
        board = np.where(((y // 12 + x // 12) % 2)[..., None] == 0, 235, 200).astype(np.float32)
        alpha = big[..., 3:] / 255.0
        big = (big[..., :3] * alpha + board * (1 - alpha)).round().astype(np.uint8)
    band = np.full((28, big.shape[1], 3), 255, np.uint8)
    cv2.putText(band, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (30, 30, 30), 1, cv2.LINE_AA)
    return np.concatenate([band, big], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--explain", default="explain.png")
    parser.add_argument("--edit", default="edit.png")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEEDS.start + 8001)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    scene = make_scene(args.seed, phrases=["red circle", "blue square", "yellow star"])
    gs = GroundedSAM(detector="shapes-gdino", segmenter="shapes-sam")
    gs.set_image(scene.image)
    why = gs.explain("red circle. blue square. yellow star. green triangle.")
    why.save(args.explain, overwrite=True)
    logging.info("%d detections explained; wrote %s", len(why.detections), args.explain)

    found = gs.predict("red circle. blue square. yellow star.")
    one = {name: found[found.data["class_name"] == name] for name in found.data["class_name"]}
    steps = [
        (scene.image, "the scene"),
        (apply_edit(scene.image, one["red circle"], "remove"), "remove: red circle"),
        (apply_edit(scene.image, one["blue square"], "recolor", color="orange"),
         "recolor: blue square"),
        (apply_edit(scene.image, one["yellow star"], "cutout"), "cutout: yellow star"),
        (apply_edit(scene.image, one["yellow star"], "blur"), "blur: yellow star"),
    ]  # fmt: skip
    gap = np.full((128 * SCALE + 28, 10, 3), 255, np.uint8)
    strip = [part for image, title in steps for part in (panel(image, title), gap)][:-1]
    Image.fromarray(np.concatenate(strip, axis=1)).save(args.edit)
    logging.info("%d edits; wrote %s", len(steps) - 1, args.edit)


if __name__ == "__main__":
    main()

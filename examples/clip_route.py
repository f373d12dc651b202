"""Picture of the CLIP route: SAM's candidate regions, CLIP's reading of each, what is kept.

    python examples/clip_route.py [-o docs/clip_route.png] [--prompt "yellow star. red circle."]

Runs offline on the bundled shapes-world models (shapes-sam proposes regions with its point grid,
shapes-clip scores every crop against the prompt's classes and the competing texts).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import supervision as sv
from PIL import Image

from grounded_seg import GroundedSAM, annotate, normalize_prompt
from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene

SCALE = 4  # the scenes are 128 px; draw on a larger copy


def enlarge(detections: sv.Detections) -> sv.Detections:
    big = detections[np.arange(len(detections))]
    big.xyxy = detections.xyxy * SCALE
    big.mask = detections.mask.repeat(SCALE, axis=1).repeat(SCALE, axis=2)
    return big


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="clip_route.png")
    parser.add_argument("--prompt", default="yellow star. red circle.")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEEDS.start + 11)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    scene = make_scene(args.seed, phrases=["yellow star", "red circle", "blue square", "red star"])
    prompt = normalize_prompt(args.prompt)
    gs = GroundedSAM(detector="shapes-clip", segmenter="shapes-sam", proposer="clip")
    proposer = gs.proposer
    state = proposer.encode_image(scene.image)
    found = proposer.candidates(state)  # step 1: regions from SAM's point grid
    probs = proposer.class_probabilities(state, prompt)  # step 2: CLIP reads each crop
    texts = list(prompt.classes) + [t.removeprefix("a photo of a ").rstrip(".")
                                    for t in proposer.competing_texts(prompt)]  # fmt: skip
    candidates = sv.Detections(
        xyxy=found.xyxy,
        mask=found.masks,
        confidence=probs.max(dim=-1).values.numpy(),
        class_id=np.arange(len(found)),
        data={"class_name": np.array([texts[int(i)] for i in probs.argmax(dim=-1)])},
    )
    gs.set_image(scene.image)
    kept = gs.predict(prompt)  # step 3: kept = best text is a prompt class, above the threshold

    image = scene.image.repeat(SCALE, axis=0).repeat(SCALE, axis=1)
    left = annotate(image, enlarge(candidates))
    right = annotate(image, enlarge(kept))
    gap = np.full((image.shape[0], 16, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([left, gap, right], axis=1)).save(args.output)
    logging.info("%d candidates; kept %d for %r; wrote %s", len(found), len(kept), prompt.caption,
                 args.output)  # fmt: skip


if __name__ == "__main__":
    main()

"""Segment what a prompt names in one image and save the annotated result.

    python examples/single_image.py IMAGE "black cat" [-o out.png] [--detector D] [--segmenter S]

Weights come from the registry names (hub, cached) or local folders; see README.
"""

from __future__ import annotations

import argparse
import logging

from PIL import Image

from grounded_seg import annotate, segment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("prompt")
    parser.add_argument("-o", "--output", default="annotated.png")
    parser.add_argument("--detector", default="grounding-dino-tiny")
    parser.add_argument("--segmenter", default="sam-vit-base")
    parser.add_argument("--box-threshold", type=float, default=0.35)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    detections = segment(
        args.image,
        args.prompt,
        detector=args.detector,
        segmenter=args.segmenter,
        box_threshold=args.box_threshold,
    )
    for name, score, box in zip(
        detections.data["class_name"], detections.confidence, detections.xyxy, strict=True
    ):
        logging.info("%-16s %.2f  box %s", name, score, box.round(1).tolist())
    annotated = annotate(Image.open(args.image), detections)
    annotated.save(args.output)
    logging.info("%d detection(s); wrote %s", len(detections), args.output)


if __name__ == "__main__":
    main()

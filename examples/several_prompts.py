"""Ask several prompts about one image: the image encoders run once, each prompt is cheap.

python examples/several_prompts.py IMAGE "cat" "dog" "potted plant. chair." [--device cuda]
"""

from __future__ import annotations

import argparse
import logging
import time

from grounded_seg import GroundedSAM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("prompts", nargs="+")
    parser.add_argument("--detector", default="grounding-dino-tiny")
    parser.add_argument("--segmenter", default="sam-vit-base")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    predictor = GroundedSAM(detector=args.detector, segmenter=args.segmenter, device=args.device)
    predictor.set_image(args.image)
    for prompt in args.prompts:
        start = time.perf_counter()
        detections = predictor.predict(prompt)
        names = ", ".join(sorted(set(detections.data["class_name"].tolist()))) or "nothing"
        logging.info(
            "%-28r %2d found (%s) in %.2f s", prompt, len(detections), names,
            time.perf_counter() - start,
        )  # fmt: skip


if __name__ == "__main__":
    main()

"""``grounded-seg label IMAGES PROMPT --out DATASET``: a folder of images into a data set."""

from __future__ import annotations

import argparse
import sys


def cmd_label(args: argparse.Namespace) -> int:
    from ..labeling import label_images, load_ontology

    if args.ontology and args.prompt:
        raise ValueError("give the classes as PROMPT or as --ontology FILE, not both")
    if not args.ontology and not args.prompt:
        raise ValueError('expected the classes to label: PROMPT ("cat. dog.") or --ontology FILE')
    prompt = load_ontology(args.ontology) if args.ontology else args.prompt
    try:
        report = label_images(
            args.images,
            prompt,
            args.out,
            format=args.format,
            proposer=args.proposer,
            detector=args.detector,
            segmenter=args.segmenter,
            device=args.device,
            dtype=args.dtype,
            box_threshold=args.box_threshold,
            text_threshold=args.text_threshold,
            max_detections=args.max_detections,
            nms_threshold=args.nms_threshold,
            max_pixels=args.max_pixels or None,  # 0: no limit
            batch_size=args.batch_size,
            workers=args.workers,
            resume=args.resume,
            overwrite=args.overwrite,
            copy_images=not args.no_copy_images,
            ray=args.ray,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(
            f"interrupted: the batches finished so far are kept in {args.out}; run the same "
            "command with --resume to continue",
            file=sys.stderr,
        )
        return 130
    print(report.summary())
    return 0

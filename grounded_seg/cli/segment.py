"""``grounded-seg segment IMAGE PROMPT``: outputs checked first, inference, atomic writes."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..export import (
    LABEL_MAP,
    detections_to_json,
    json_writer,
    label_map,
    mask_paths,
    mask_writers,
    owned_files,
)
from ..outputs import check_output, image_format, image_writer, write_all
from ..predictor import default_segmenter


def cmd_segment(args: argparse.Namespace) -> int:
    from ..api import segment
    from ..images import load_image
    from ..prompts import normalize_prompt
    from ..proposers import PROPOSERS
    from ..visualize import annotate

    image_path = Path(args.image)
    max_pixels = args.max_pixels or None  # 0: no limit
    rgb = load_image(image_path, max_pixels=max_pixels)  # bad images fail here, before loading
    prompt = normalize_prompt(args.prompt)
    # every output is checked before inference: a run that could not save fails in seconds
    inputs = [image_path]
    if args.output:
        check_output(args.output, inputs=inputs, overwrite=args.overwrite, flag="-o")
        output_format = image_format(args.output)
    if args.json_path:
        check_output(args.json_path, inputs=inputs, overwrite=args.overwrite, flag="--json")
    if (
        args.output
        and args.json_path
        and Path(args.output).resolve() == Path(args.json_path).resolve()
    ):
        raise ValueError(f"-o and --json name the same file: {args.output}")
    masks_dir = Path(args.masks_dir) if args.masks_dir else None
    if masks_dir is not None:
        if masks_dir.exists() and not masks_dir.is_dir():
            raise ValueError(f"--masks-dir {masks_dir}: exists and is not a folder")
        if not masks_dir.exists() and not masks_dir.parent.is_dir():
            raise ValueError(
                f"--masks-dir {masks_dir}: the folder {masks_dir.parent} does not exist"
            )
        earlier = owned_files(masks_dir)  # an earlier run's masks: never mixed with this one's
        if earlier and not args.overwrite:
            raise ValueError(
                f"--masks-dir {masks_dir}: holds {len(earlier)} mask file(s) of an earlier run "
                f"({earlier[0].name}, ...); pass --overwrite to replace them, or name a new folder"
            )

    start = time.perf_counter()
    detections = segment(
        rgb,
        prompt,
        proposer=args.proposer,
        detector=args.detector,
        segmenter=args.segmenter,
        box_threshold=args.box_threshold,
        text_threshold=args.text_threshold,
        max_detections=args.max_detections,
        nms_threshold=args.nms_threshold,
        device=args.device,
        dtype=args.dtype,
        max_pixels=max_pixels,
    )
    seconds = time.perf_counter() - start

    outputs = []
    mask_files: list[Path] = []
    if masks_dir is not None:
        mask_files = mask_paths(masks_dir, detections)
        masks_dir.mkdir(exist_ok=True)
        for path in [*mask_files, masks_dir / LABEL_MAP]:
            check_output(path, inputs=inputs, overwrite=args.overwrite, flag="--masks-dir")
        outputs += mask_writers(detections, mask_files)
        outputs.append((masks_dir / LABEL_MAP, image_writer(label_map(detections), "PNG")))
    if args.output:
        outputs.append((Path(args.output), image_writer(annotate(rgb, detections), output_format)))
    if args.json_path:
        report = {
            "image": str(image_path),
            "height": int(rgb.shape[0]),
            "width": int(rgb.shape[1]),
            "prompt": args.prompt,
            "classes": list(prompt.classes),
            "proposer": args.proposer,
            "detector": str(args.detector or PROPOSERS[args.proposer]),
            "segmenter": args.segmenter or default_segmenter(args.proposer),
            "seconds": round(seconds, 3),
            "detections": detections_to_json(detections, mask_files, rle=True),
        }
        outputs.append((Path(args.json_path), json_writer(report)))
    write_all(outputs, overwrite=args.overwrite)  # all or nothing; atomic each
    if masks_dir is not None:  # an earlier run's masks this run did not replace
        written = {path.resolve() for path, _ in outputs}
        for stale in owned_files(masks_dir):
            if stale.resolve() not in written:
                stale.unlink()

    print(f"{len(detections)} detection(s) for {prompt.caption!r} in {seconds:.2f} s")
    meta = detections.metadata
    if not len(detections) and meta.get("best_score") is not None:
        print(
            f"  nothing scored above --box-threshold {args.box_threshold:g}: the best was "
            f"{meta['best_score']:.3f}"
        )
    if meta.get("unknown_words"):
        words = ", ".join(repr(w) for w in meta["unknown_words"])
        print(f"  the detector does not know the words {words} (not in its vocabulary)")
    for row in detections_to_json(detections):
        box = ", ".join(f"{v:.1f}" for v in row["box_xyxy"])
        print(
            f"  {row['class_name']:<20} conf {row['confidence']:.3f}  mask {row['mask_score']:.3f}"
            f"  box [{box}]  area {row['mask_area']}"
        )
    for path in [Path(p) for p in (args.output, args.json_path) if p]:
        print(f"wrote {path}")
    if masks_dir is not None:
        print(f"wrote {len(mask_files)} mask(s) and the label map {LABEL_MAP} to {masks_dir}")
    return 0

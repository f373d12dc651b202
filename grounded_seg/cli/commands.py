"""``grounded-seg demo | eval | train | convert | models``: the commands besides ``segment``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..export import detections_to_json, json_writer
from ..outputs import atomic_write, check_output, image_format, image_writer
from ..registry import list_models


def cmd_demo(args: argparse.Namespace) -> int:

    from ..api import segment
    from ..prompts import normalize_prompt
    from ..shapes import HELD_OUT_SEEDS, PHRASES, make_scene
    from ..visualize import annotate

    prompt = normalize_prompt(args.prompt)
    output = check_output(args.output, overwrite=args.overwrite, flag="-o")
    output_format = image_format(output)
    seed = HELD_OUT_SEEDS.start if args.seed is None else args.seed
    shown = [c for c in prompt.classes if c in PHRASES][:4]
    scene = make_scene(seed, phrases=shown or None)
    start = time.perf_counter()
    detector = {"clip": "shapes-clip", "grounding_dino": "shapes-gdino"}[args.proposer]
    detections = segment(
        scene.image, prompt, proposer=args.proposer, detector=detector, segmenter="shapes-sam",
        box_threshold=args.box_threshold, device=args.device,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print(f"scene {seed}: {', '.join(scene.phrases)} (ground truth)")
    for phrase, box in zip(scene.phrases, scene.boxes, strict=True):
        print(f"  truth {phrase:<18} box [{', '.join(f'{v:.0f}' for v in box)}]")
    print(
        f"{len(detections)} detection(s) for {prompt.caption!r} by {detector} + shapes-sam "
        f"in {seconds:.2f} s"
    )
    for row in detections_to_json(detections):
        box = ", ".join(f"{v:.1f}" for v in row["box_xyxy"])
        print(f"  found {row['class_name']:<18} box [{box}] conf {row['confidence']:.3f}")
    scale = 4  # the scenes are 128 px: draw on a larger copy so labels stay readable
    big = detections[np.arange(len(detections))]
    big.xyxy = detections.xyxy * scale
    big.mask = detections.mask.repeat(scale, axis=1).repeat(scale, axis=2)
    image = scene.image.repeat(scale, axis=0).repeat(scale, axis=1)
    atomic_write(
        output, image_writer(annotate(image, big), output_format), overwrite=args.overwrite
    )
    print(f"wrote {args.output}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..checks import check_threshold
    from ..evaluation import evaluate_coco, load_coco_dataset
    from ..predictor import GroundedSAM

    check_threshold("--box-threshold", args.box_threshold)
    check_threshold("--text-threshold", args.text_threshold)
    if args.json_path:
        check_output(
            args.json_path, inputs=[args.annotations], overwrite=args.overwrite, flag="--json"
        )
    try:  # the data set is checked before any model loads
        dataset = load_coco_dataset(args.annotations, args.images, max_images=args.max_images)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    predictor = GroundedSAM(
        detector=args.detector,
        segmenter=args.segmenter,
        device=args.device,
        dtype=args.dtype,
        proposer=args.proposer,
    )
    report = evaluate_coco(
        predictor,
        dataset,
        box_threshold=args.box_threshold,
        text_threshold=args.text_threshold,
        max_detections=args.max_detections,
        progress=True,  # a run over a data set shows its progress without -v
    )
    print(report.format_table())
    if args.json_path:
        atomic_write(args.json_path, json_writer(report.to_dict()), overwrite=args.overwrite)
        print(f"wrote {args.json_path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out or f"weights/shapes/{args.model}")
    kwargs = {
        "seed": args.seed,
        "threads": args.threads,
        "overwrite": args.overwrite,
        "resume": not args.restart,
    }
    if args.steps is not None:
        kwargs["steps"] = args.steps
    gdino_only = {
        "--batch-size": args.batch_size,
        "--stop-at": args.stop_at,
        "--learning-rate": args.learning_rate,
        "--init-from": args.init_from,
        "--single-phrase-share": args.single_phrase_share,
    }
    if args.model != "gdino" and (
        args.device != "cpu" or args.workers or any(v is not None for v in gdino_only.values())
    ):
        raise ValueError(f"--device, --workers, {', '.join(gdino_only)} apply to --model gdino")
    if args.model == "sam":
        from ..shapes.train_sam import train_shapes_sam as train
    elif args.model == "clip":
        from ..shapes.train_clip import train_shapes_clip as train
    else:
        from ..shapes.train_gdino import train_shapes_gdino as train

        kwargs.update(device=args.device, workers=args.workers, stop_at=args.stop_at)
        for name in ("batch_size", "learning_rate", "init_from", "single_phrase_share"):
            if getattr(args, name) is not None:
                kwargs[name] = getattr(args, name)
    report = train(out, **kwargs)
    if "stopped_at" in report:
        print(f"stopped after step {report['stopped_at']}; run the same command again to resume")
        return 0
    summary = {k: v for k, v in report.items() if k != "curve" and not isinstance(v, list)}
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..official import convert_checkpoint, sha256_of

    start = time.perf_counter()
    digest = sha256_of(args.src)
    kind = convert_checkpoint(args.src, args.dst, tokenizer=args.tokenizer, source_sha256=digest)
    print(
        f"converted {args.src} ({kind.family} {kind.variant}, sha256 {digest[:12]}...) to "
        f"{args.dst} in {time.perf_counter() - start:.1f} s"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    specs = list_models(args.role)
    wheres = [spec.hub_id or f"weights/{spec.bundled} (bundled)" for spec in specs]
    name_w = max(len("name"), *(len(spec.name) for spec in specs))
    where_w = max(len("hub id"), *(len(where) for where in wheres))
    print(f"{'name':<{name_w}} {'role':<10} {'family':<14} {'params':>7}  {'hub id':<{where_w}} "
          "description")  # fmt: skip
    for spec, where in zip(specs, wheres, strict=True):
        print(f"{spec.name:<{name_w}} {spec.role:<10} {spec.family:<14} {spec.params:>7}  "
              f"{where:<{where_w}} {spec.description}")  # fmt: skip
    return 0

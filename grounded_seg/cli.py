"""The ``grounded-seg`` command.

    grounded-seg segment IMAGE PROMPT [-o annotated.png] [--json out.json] [--masks-dir DIR]
                 [--proposer grounding_dino|clip] [--detector NAME|PATH] [--segmenter NAME|PATH]
                 [--device DEV] [--dtype DTYPE]
                 [--box-threshold 0.35] [--text-threshold 0.25] [--overwrite]
    grounded-seg models [--role detector|segmenter]
    grounded-seg train shapes --model sam|clip|gdino [--out DIR] [--steps N] [--seed S]
                 [--threads T] [--device DEV] [--batch-size B] [--workers W] [--stop-at STEP]
                 [--learning-rate LR] [--init-from DIR] [--single-phrase-share 0-1]
    grounded-seg demo ["red circle. blue square."] [--seed S] [-o demo.png]
                 [--proposer grounding_dino|clip]
    grounded-seg convert SRC.pth DST_DIR [--tokenizer bert-base-uncased|DIR|vocab.txt]
    grounded-seg eval ANNOTATIONS [--images DIR] [--proposer ...] [--detector ...] [--segmenter ...]
                 [--device DEV] [--box-threshold 0.0] [--json out.json] [--max-images N]

Existing files are never replaced unless ``--overwrite`` is given, and the input image never is.
Exit status: 0 on success, 2 for a bad argument or input, 1 when a model cannot be loaded, 3 when
a result could not be written (nothing half-written is left, no existing file replaced).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .allocator import reuse_freed_memory
from .errors import InvalidWeightsError, OutputError, WeightsNotFoundError
from .export import detections_to_json, json_writer, mask_paths, mask_writers
from .images import DEFAULT_MAX_PIXELS
from .outputs import atomic_write, check_output, image_format, image_writer, write_all
from .registry import list_models

logger = logging.getLogger("grounded_seg.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grounded-seg", description="Segment whatever a text prompt names."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress (train always logs)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment what PROMPT names in IMAGE")
    seg.add_argument("image", help="image file")
    seg.add_argument("prompt", help='free text ("black cat") or classes ("cat. dog.")')
    seg.add_argument("-o", "--output", help="write the annotated image here (PNG, JPEG, ...)")
    seg.add_argument("--json", dest="json_path", help="write the detections here as JSON")
    seg.add_argument("--masks-dir", help="write one PNG mask per detection into this folder")
    seg.add_argument(
        "--proposer",
        choices=["grounding_dino", "clip"],
        default="grounding_dino",
        help="words -> boxes: Grounding DINO (default) or SAM regions scored by CLIP",
    )
    seg.add_argument(
        "--detector",
        default=None,
        help="the proposer's model, registry name or folder (default: grounding-dino-tiny, "
        "or clip-vit-base-patch32 with --proposer clip)",
    )
    seg.add_argument("--segmenter", default="sam-vit-base", help="registry name or folder")
    seg.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    seg.add_argument(
        "--dtype",
        default=None,
        help="float32 (default); bfloat16 (CUDA, CPU) or float16 (CUDA, MPS): autocast fast path",
    )
    seg.add_argument("--box-threshold", type=float, default=0.35)
    seg.add_argument("--text-threshold", type=float, default=0.25)
    seg.add_argument(
        "--max-detections", type=int, default=100, help="keep at most this many, the best"
    )
    seg.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse larger images, checked before decoding (0: no limit)",
    )
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")

    models = sub.add_parser("models", help="list the registered models")
    models.add_argument("--role", choices=["detector", "segmenter"], default=None)

    demo = sub.add_parser("demo", help="offline: segment a generated scene with bundled models")
    demo.add_argument("prompt", nargs="?", default="red circle. blue square.")
    demo.add_argument("--seed", type=int, default=None, help="scene seed (default: held-out)")
    demo.add_argument("-o", "--output", default="demo.png", help="annotated image to write")
    demo.add_argument("--device", default=None)
    demo.add_argument("--box-threshold", type=float, default=0.35)
    demo.add_argument(
        "--proposer",
        choices=["grounding_dino", "clip"],
        default="grounding_dino",
        help="grounding_dino: shapes-gdino (default); clip: shapes-clip over SAM candidates",
    )
    demo.add_argument("--overwrite", action="store_true")

    ev = sub.add_parser("eval", help="score boxes and masks on a COCO data set (AP, AP50, AP75)")
    ev.add_argument("annotations", help="COCO annotation file (JSON)")
    ev.add_argument("--images", default=None, help="image folder (default: images/ beside it)")
    ev.add_argument("--proposer", choices=["grounding_dino", "clip"], default="grounding_dino")
    ev.add_argument("--detector", default=None, help="the proposer's model, name or folder")
    ev.add_argument("--segmenter", default="sam-vit-base", help="registry name or folder")
    ev.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    ev.add_argument(
        "--dtype",
        default=None,
        help="float32 (default); bfloat16 (CUDA, CPU) or float16 (CUDA, MPS): autocast fast path",
    )
    ev.add_argument(
        "--box-threshold", type=float, default=0.0, help="0 (default) keeps every box, as AP wants"
    )
    ev.add_argument("--text-threshold", type=float, default=0.25)
    ev.add_argument(
        "--max-detections", type=int, default=100, help="per image (COCO's maxDets: 100)"
    )
    ev.add_argument("--max-images", type=int, default=None, help="only the first N images")
    ev.add_argument("--json", dest="json_path", help="write the report here as JSON")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --json file")

    conv = sub.add_parser(
        "convert", help="convert an official GroundingDINO / segment-anything .pth to a folder"
    )
    conv.add_argument("src", help="official checkpoint, e.g. groundingdino_swint_ogc.pth")
    conv.add_argument("dst", help="new model folder (must not exist)")
    conv.add_argument(
        "--tokenizer",
        default=None,
        help="Grounding DINO's BERT tokenizer: hub id, folder or vocab.txt (default "
        "$GROUNDED_SEG_BERT_TOKENIZER or bert-base-uncased)",
    )

    train = sub.add_parser("train", help="train a model of the shapes world (reproducible)")
    train.add_argument("world", choices=["shapes"])
    train.add_argument("--model", choices=["sam", "clip", "gdino"], required=True)
    train.add_argument("--out", default=None, help="output folder (default weights/shapes/MODEL)")
    train.add_argument("--steps", type=int, default=None, help="training steps (model default)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=1)
    train.add_argument("--overwrite", action="store_true", help="replace a finished model")
    train.add_argument(
        "--restart", action="store_true", help="ignore an interrupted run's checkpoint; start over"
    )
    gdino = train.add_argument_group("gdino only")
    gdino.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (gdino only)")
    gdino.add_argument("--batch-size", type=int, default=None, help="scenes per step (gdino)")
    gdino.add_argument("--workers", type=int, default=0, help="data worker processes (gdino)")
    gdino.add_argument(
        "--stop-at", type=int, default=None, help="end this run after that step; rerun to resume"
    )
    gdino.add_argument("--learning-rate", type=float, default=None, help="peak rate (gdino)")
    gdino.add_argument(
        "--init-from", default=None, help="continue from a trained shapes-gdino folder (gdino)"
    )
    gdino.add_argument(
        "--single-phrase-share",
        type=float,
        default=None,
        help="fraction of one-phrase captions, 0-1 (gdino)",
    )
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:

    from .api import segment
    from .prompts import normalize_prompt
    from .shapes import HELD_OUT_SEEDS, PHRASES, make_scene
    from .visualize import annotate

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


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_coco, load_coco_dataset
    from .predictor import GroundedSAM, check_threshold

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
        progress=args.verbose,
    )
    print(report.format_table())
    if args.json_path:
        atomic_write(args.json_path, json_writer(report.to_dict()), overwrite=args.overwrite)
        print(f"wrote {args.json_path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
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
        from .shapes.train_sam import train_shapes_sam as train
    elif args.model == "clip":
        from .shapes.train_clip import train_shapes_clip as train
    else:
        from .shapes.train_gdino import train_shapes_gdino as train

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


def _cmd_convert(args: argparse.Namespace) -> int:
    from .official import convert_checkpoint, sha256_of

    start = time.perf_counter()
    digest = sha256_of(args.src)
    kind = convert_checkpoint(args.src, args.dst, tokenizer=args.tokenizer, source_sha256=digest)
    print(
        f"converted {args.src} ({kind.family} {kind.variant}, sha256 {digest[:12]}...) to "
        f"{args.dst} in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    print(f"{'name':<22} {'role':<10} {'params':>7}  {'hub id':<36} description")
    for spec in list_models(args.role):
        where = spec.hub_id or f"weights/{spec.bundled} (bundled)"
        print(f"{spec.name:<22} {spec.role:<10} {spec.params:>7}  {where:<36} {spec.description}")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from .api import segment
    from .images import load_image
    from .prompts import normalize_prompt
    from .proposers import PROPOSERS
    from .visualize import annotate

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
        for path in mask_files:
            check_output(path, inputs=inputs, overwrite=args.overwrite, flag="--masks-dir")
        outputs += mask_writers(detections, mask_files)
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
            "segmenter": str(args.segmenter),
            "seconds": round(seconds, 3),
            "detections": detections_to_json(detections, mask_files),
        }
        outputs.append((Path(args.json_path), json_writer(report)))
    write_all(outputs, overwrite=args.overwrite)  # all or nothing; atomic each

    print(f"{len(detections)} detection(s) for {prompt.caption!r} in {seconds:.2f} s")
    for row in detections_to_json(detections):
        box = ", ".join(f"{v:.1f}" for v in row["box_xyxy"])
        print(
            f"  {row['class_name']:<20} conf {row['confidence']:.3f}  mask {row['mask_score']:.3f}"
            f"  box [{box}]  area {row['mask_area']}"
        )
    for path in [Path(p) for p in (args.output, args.json_path) if p]:
        print(f"wrote {path}")
    if mask_files:
        print(f"wrote {len(mask_files)} mask(s) to {args.masks_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``grounded-seg``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "train":  # a run of minutes to hours: its progress shows without -v
        logging.getLogger("grounded_seg").setLevel(logging.INFO)
    # a process of our own: large freed tensors stay in the heap (see grounded_seg.allocator)
    reuse_freed_memory()
    try:
        if args.command == "models":
            return _cmd_models(args)
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command == "eval":
            return _cmd_eval(args)
        if args.command == "convert":
            return _cmd_convert(args)
        return _cmd_segment(args)
    except OutputError as err:  # after the work: the results could not be saved
        print(f"error: {err}", file=sys.stderr)
        return 3
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (WeightsNotFoundError, InvalidWeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

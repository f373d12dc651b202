"""The ``grounded-seg`` argument parser."""

from __future__ import annotations

import argparse

from ..images import DEFAULT_MAX_PIXELS


def build_parser() -> argparse.ArgumentParser:
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

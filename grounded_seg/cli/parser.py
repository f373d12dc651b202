"""The ``grounded-seg`` argument parser: every option with its default shown in ``--help``."""

from __future__ import annotations

import argparse

from ..images import DEFAULT_MAX_PIXELS
from ..serve.settings import DEFAULT_SERVE_MAX_PIXELS

ROUTES = ("grounding_dino", "clip", "owlv2", "sam3")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help text, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text:
            return text
        return super()._get_help_string(action)


def _common(subparser: argparse.ArgumentParser) -> None:
    # SUPPRESS: "-v" given before the command is not reset by the command's own default
    subparser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress"
    )


def _models(subparser: argparse.ArgumentParser, detector_help: str) -> None:
    subparser.add_argument(
        "--proposer",
        choices=ROUTES,
        default="grounding_dino",
        help="words -> boxes: Grounding DINO (or MM-Grounding-DINO), SAM's regions scored by "
        "CLIP, OWLv2, or SAM 3 (boxes and masks)",
    )
    subparser.add_argument("--detector", default=None, help=detector_help)
    subparser.add_argument(
        "--segmenter",
        default=None,
        help="SAM, SAM 2.1 or SAM-HQ: registry name, folder, official checkpoint or hub id "
        "(default: sam-vit-base; on the sam3 route none, SAM 3 makes the masks)",
    )
    subparser.add_argument(
        "--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps"
    )
    subparser.add_argument(
        "--dtype",
        default=None,
        help="float32 when not given; bfloat16 (CUDA, CPU) or float16 (CUDA, MPS): autocast",
    )


def _answers(subparser: argparse.ArgumentParser, max_pixels_help: str) -> None:
    """The thresholds and limits of a command that segments (segment, label)."""
    subparser.add_argument(
        "--box-threshold", type=float, default=0.35, help="keep boxes scoring above"
    )
    subparser.add_argument(
        "--text-threshold", type=float, default=0.25, help="words above it form the phrase"
    )
    subparser.add_argument(
        "--max-detections", type=int, default=100, help="per image, at most this many, the best"
    )
    subparser.add_argument(
        "--nms-threshold",
        type=_iou_or_none,
        default=0.5,
        help="drop a box overlapping a better one of its class by more (none: keep all)",
    )
    subparser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help=max_pixels_help
    )


def _pixels(text: str) -> int:
    """A pixel count, also written as 40e6."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a pixel count such as 40e6, got {text!r}"
        ) from None
    if not value.is_integer() or value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole pixel count >= 0, got {text!r}")
    return int(value)


def _one_image(subparser: argparse.ArgumentParser) -> None:
    """The thresholds, size limit and overwrite rule of a command on one image file."""
    subparser.add_argument("--box-threshold", type=float, default=0.35, help="keep boxes above")
    subparser.add_argument("--text-threshold", type=float, default=0.25, help="phrase words above")
    subparser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger (0: no limit)"
    )
    subparser.add_argument("--overwrite", action="store_true", help="replace an existing -o file")


def _iou_or_none(text: str) -> float | None:
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an IoU in (0, 1] or 'none', got {text!r}"
        ) from None


DETECTOR_HELP = (
    "the route's model: registry name, folder or hub id (owner/name[@revision]); when not "
    "given, the route's default: grounding-dino-tiny, clip-vit-base-patch32, "
    "owlv2-base-patch16-ensemble or sam3"
)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="grounded-seg",
        description="Segment whatever a text prompt names.",
        formatter_class=_Help,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--version", action="version", version=f"grounded-seg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        made = sub.add_parser(name, help=text, description=text, formatter_class=_Help)
        _common(made)
        return made

    seg = command("segment", "segment what PROMPT names in IMAGE")
    seg.add_argument("image", help="image file")
    seg.add_argument("prompt", help='free text ("black cat") or classes ("cat. dog.")')
    seg.add_argument("-o", "--output", help="write the annotated image here (PNG, JPEG, ...)")
    seg.add_argument("--json", dest="json_path", help="write the detections here as JSON")
    seg.add_argument("--masks-dir", help="write one PNG mask per detection into this folder")
    _models(seg, DETECTOR_HELP)
    _answers(seg, "refuse larger images, checked before decoding (0: no limit)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")

    label = command("label", "label a folder of images into a data set (COCO, YOLO or masks)")
    label.add_argument("images", help="a folder (recursive), a glob or a text file of paths")
    label.add_argument(
        "prompt", nargs="?", default=None, help='the classes ("cat. dog."), unless --ontology'
    )
    label.add_argument("--out", required=True, help="the data set's folder (made if missing)")
    label.add_argument(
        "--format", choices=["coco", "yolo", "masks"], default="coco", help="what to write"
    )
    label.add_argument(
        "--ontology",
        default=None,
        help='JSON {"phrase": "class"}: several phrases may share a class (instead of PROMPT)',
    )
    label.add_argument("--batch-size", type=int, default=4, help="images per model call")
    label.add_argument(
        "--workers", type=int, default=4, help="threads decoding the next batches (0: none)"
    )
    label.add_argument(
        "--resume", action="store_true", help="continue the run that made --out (same settings)"
    )
    label.add_argument(
        "--overwrite", action="store_true", help="replace a data set an earlier run made"
    )
    label.add_argument(
        "--ray",
        nargs="?",
        const=True,
        default=None,
        metavar="ADDRESS",
        help="run on Ray Data: alone, a local instance; 'auto' or an address joins a cluster",
    )
    label.add_argument(
        "--no-copy-images", action="store_true", help="write labels only (no images/ copies)"
    )
    label.add_argument("--no-progress", action="store_true", help="no progress bar")
    _models(label, DETECTOR_HELP)
    _answers(label, "larger images are listed as failed, checked before decoding (0: no limit)")

    serve = command("serve", "serve the models over HTTP, with a page to try them at /")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (others: use a key)")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    _models(serve, DETECTOR_HELP)
    serve.add_argument(
        "--max-batch", type=int, default=8, help="images per model call (1: one at a time)"
    )
    serve.add_argument(
        "--batch-window-ms",
        type=float,
        default=20.0,
        help="under concurrent load, how long a batch waits for more requests (a lone one: 0)",
    )
    serve.add_argument(
        "--max-queue", type=int, default=32, help="requests in progress at most; then 503"
    )
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image file")
    serve.add_argument(
        "--max-pixels",
        type=_pixels,
        default=DEFAULT_SERVE_MAX_PIXELS,
        help="largest width x height, checked before decoding (0: no limit)",
    )
    serve.add_argument(
        "--api-key",
        default=None,
        help="require this key on /v1/ requests (or set GROUNDED_SEG_API_KEY)",
    )

    why = command("explain", "draw Grounding DINO's four stages for IMAGE and PROMPT")
    why.add_argument("image", help="image file")
    why.add_argument("prompt", help='the classes ("cat. dog.")')
    why.add_argument("-o", "--output", default="explain.png", help="the figure (PNG, PDF, SVG)")
    why.add_argument("--detector", default=None, help="a Grounding DINO: name, folder, hub id")
    why.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    _one_image(why)

    ed = command("edit", "remove, blur, cut out, recolour or replace what PROMPT names")
    ed.add_argument("image", help="image file (never modified)")
    ed.add_argument("prompt", help='what to edit ("car. person.")')
    act = ed.add_mutually_exclusive_group(required=True)
    act.add_argument("--remove", action="store_true", help="inpaint it away (OpenCV, offline)")
    act.add_argument("--blur", action="store_true", help="blur it (faces, plates)")
    act.add_argument("--cutout", action="store_true", help="keep it alone: a transparent PNG")
    act.add_argument("--recolor", metavar="COLOR", default=None, help="name, #rrggbb or r,g,b")
    act.add_argument(
        "--replace", metavar="TEXT", default=None, help="paint TEXT there (grounded-seg[edit])"
    )
    ed.add_argument("-o", "--output", required=True, help="the edited image")
    ed.add_argument(
        "--dilate", type=int, default=None, help="grow the mask by N px (default: per action)"
    )
    ed.add_argument(
        "--inpainter", default=None, help="--replace's diffusers model: hub id or folder"
    )
    ed.add_argument("--seed", type=int, default=0, help="--replace's random seed")
    _models(ed, DETECTOR_HELP)
    _one_image(ed)

    tr = command("track", "track every object PROMPT names through VIDEO, with stable ids")
    tr.add_argument("video", help="a video file (what OpenCV reads) or a folder of frames")
    tr.add_argument("prompt", help='the classes ("car. person.")')
    tr.add_argument("-o", "--output", default=None, help="annotated video (.mp4, .avi, .mkv)")
    tr.add_argument("--json", dest="json_path", default=None, help="JSON lines, one per frame")
    tr.add_argument("--mot", default=None, help="MOT-challenge text (frame,id,x,y,w,h,score)")
    tr.add_argument("--tracker", choices=["bytetrack", "sam2", "sam3"], default="bytetrack")
    tr.add_argument("--every", type=int, default=1, help="run the models on every K-th frame")
    tr.add_argument(
        "--low-threshold", type=float, default=0.1, help="lower scores may continue a track"
    )
    tr.add_argument("--lost-frames", type=int, default=30, help="keyframes a track may go unseen")
    tr.add_argument("--batch-size", type=int, default=4, help="keyframes per model call")
    tr.add_argument(
        "--video-model",
        default=None,
        help="sam2 route: SAM 2.1's video model, an official sam2.1_*.pt, a Sam2VideoModel "
        "folder or hub id (default: facebook/sam2.1-hiera-tiny)",
    )
    tr.add_argument(
        "--match-iou", type=float, default=0.5, help="sam2 route: mask IoU to continue an object"
    )
    tr.add_argument("--fps", type=float, default=None, help="a folder's frame rate (30)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    _models(tr, DETECTOR_HELP)
    tr.add_argument("--box-threshold", type=float, default=0.35, help="may start a track above")
    tr.add_argument("--text-threshold", type=float, default=0.25, help="phrase words above")
    tr.add_argument("--overwrite", action="store_true", help="replace existing output files")

    ev_video = command("eval-video", "score tracks against MOT ground truth (HOTA, IDF1, MOTA)")
    ev_video.add_argument("ground_truth", help="MOT text: frame,id,left,top,width,height,...")
    ev_video.add_argument("tracks", help="the tracker's MOT text (grounded-seg track --mot)")
    ev_video.add_argument("--json", dest="json_path", default=None, help="write the scores")
    ev_video.add_argument("--overwrite", action="store_true", help="replace an existing --json")

    models = command("models", "list the registered models")
    models.add_argument("--role", choices=["detector", "segmenter"], default=None)

    demo = command("demo", "offline: segment a generated scene with the bundled models")
    demo.add_argument("prompt", nargs="?", default="red circle. blue square.", help="the classes")
    demo.add_argument("--seed", type=int, default=None, help="scene seed (a held-out one if not)")
    demo.add_argument("-o", "--output", default="demo.png", help="annotated image to write")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    demo.add_argument("--box-threshold", type=float, default=0.35, help="keep boxes above")
    demo.add_argument(
        "--proposer",
        choices=ROUTES,
        default="grounding_dino",
        help="grounding_dino: shapes-gdino; clip: shapes-clip over SAM candidates",
    )
    demo.add_argument("--overwrite", action="store_true", help="replace an existing -o file")

    ev = command("eval", "score boxes and masks on a COCO data set (AP, AP50, AP75)")
    ev.add_argument("annotations", help="COCO annotation file (JSON)")
    ev.add_argument("--images", default=None, help="image folder (images/ beside the file if not)")
    _models(ev, DETECTOR_HELP)
    ev.add_argument(
        "--box-threshold", type=float, default=0.0, help="0 keeps every box, as AP wants"
    )
    ev.add_argument(
        "--text-threshold", type=float, default=0.25, help="words above it form the phrase"
    )
    ev.add_argument("--max-detections", type=int, default=100, help="per image (COCO's maxDets)")
    ev.add_argument("--max-images", type=int, default=None, help="only the first N images")
    ev.add_argument("--json", dest="json_path", help="write the report here as JSON")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --json file")

    conv = command(
        "convert", "convert an official GroundingDINO / segment-anything .pth to a folder"
    )
    conv.add_argument("src", help="official checkpoint, e.g. groundingdino_swint_ogc.pth")
    conv.add_argument("dst", help="new model folder (must not exist)")
    conv.add_argument(
        "--tokenizer",
        default=None,
        help="Grounding DINO's BERT tokenizer: hub id, folder or vocab.txt (if not given, "
        "$GROUNDED_SEG_BERT_TOKENIZER or bert-base-uncased)",
    )

    train = command("train", "train a model of the shapes world (reproducible)")
    train.add_argument("world", choices=["shapes"], help="the generated world")
    train.add_argument("--model", choices=["sam", "clip", "gdino"], required=True)
    train.add_argument("--out", default=None, help="output folder (weights/shapes/MODEL if not)")
    train.add_argument("--steps", type=int, default=None, help="training steps (model default)")
    train.add_argument("--seed", type=int, default=0, help="the run's seed")
    train.add_argument("--threads", type=int, default=1, help="CPU threads")
    train.add_argument("--overwrite", action="store_true", help="replace a finished model")
    train.add_argument(
        "--restart", action="store_true", help="ignore an interrupted run's checkpoint; start over"
    )
    gdino = train.add_argument_group("gdino only")
    gdino.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    gdino.add_argument("--batch-size", type=int, default=None, help="scenes per step")
    gdino.add_argument("--workers", type=int, default=0, help="data worker processes")
    gdino.add_argument(
        "--stop-at", type=int, default=None, help="end this run after that step; rerun to resume"
    )
    gdino.add_argument("--learning-rate", type=float, default=None, help="peak rate")
    gdino.add_argument(
        "--init-from", default=None, help="continue from a trained shapes-gdino folder"
    )
    gdino.add_argument(
        "--single-phrase-share", type=float, default=None, help="share of one-phrase captions"
    )
    return parser

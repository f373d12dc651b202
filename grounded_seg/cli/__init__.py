"""The ``grounded-seg`` command.

    grounded-seg segment IMAGE PROMPT [-o annotated.png] [--json out.json] [--masks-dir DIR]
                 [--proposer grounding_dino|clip] [--detector NAME|PATH] [--segmenter NAME|PATH]
                 [--device DEV] [--dtype DTYPE]
                 [--box-threshold 0.35] [--text-threshold 0.25] [--overwrite]
    grounded-seg label IMAGES PROMPT --out DATASET [--format coco|yolo|masks] [--ontology FILE]
                 [--batch-size 4] [--workers 4] [--resume] [--overwrite] [--ray [ADDRESS]]
                 [--proposer ...] [--detector ...] [--segmenter ...] [--device DEV] [--dtype ...]
                 [--box-threshold 0.35] [--text-threshold 0.25] [--no-copy-images]
    grounded-seg serve [--host 127.0.0.1] [--port 8000] [--proposer ...] [--detector ...]
                 [--segmenter ...] [--device DEV] [--dtype ...] [--max-batch 8]
                 [--batch-window-ms 20] [--max-queue 32] [--max-upload-mb 20]
                 [--max-pixels 40e6] [--api-key KEY]
    grounded-seg explain IMAGE PROMPT [-o explain.png] [--detector ...] [--device DEV]
                 [--box-threshold 0.35] [--text-threshold 0.25] [--max-pixels N] [--overwrite]
    grounded-seg edit IMAGE PROMPT {--remove | --blur | --cutout | --recolor COLOR
                 | --replace TEXT} -o OUT [--dilate N] [--inpainter NAME|DIR] [--seed S]
                 [model and threshold options as segment] [--overwrite]
    grounded-seg track VIDEO PROMPT [-o annotated.mp4] [--json tracks.jsonl] [--mot tracks.txt]
                 [--tracker bytetrack] [--every K] [--low-threshold 0.1] [--lost-frames 30]
                 [model and threshold options as segment] [--overwrite]
    grounded-seg eval-video GROUND_TRUTH.txt TRACKS.txt [--json scores.json]
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

import logging
import os
import re
import sys
from collections.abc import Sequence

from ..allocator import reuse_freed_memory
from ..errors import InvalidWeightsError, OutputError, WeightsNotFoundError
from .commands import cmd_convert, cmd_demo, cmd_eval, cmd_models, cmd_train
from .edit import cmd_edit, cmd_explain
from .label import cmd_label
from .parser import build_parser
from .segment import cmd_segment
from .serve import cmd_serve
from .track import cmd_eval_video, cmd_track

logger = logging.getLogger("grounded_seg.cli")

__all__ = ["main"]


COMMANDS = {
    "segment": cmd_segment,
    "label": cmd_label,
    "serve": cmd_serve,
    "explain": cmd_explain,
    "edit": cmd_edit,
    "track": cmd_track,
    "eval-video": cmd_eval_video,
    "models": cmd_models,
    "train": cmd_train,
    "demo": cmd_demo,
    "eval": cmd_eval,
    "convert": cmd_convert,
}

# The library's messages name Python arguments; on the command line the options are meant.
_CLI_WORDS = (
    (re.compile(r"\bpass (?:resume=False )?\(--restart\)"), "pass --restart"),
    (re.compile(r"\bpass overwrite=True\b"), "pass --overwrite"),
    (re.compile(r"\boverwrite=True\b"), "--overwrite"),
    (re.compile(r"\bpass tokenizer=\s*"), "pass --tokenizer "),
    (re.compile(r"\bmax_pixels \(--max-pixels\)"), "--max-pixels"),
    (re.compile(r"\bmax_pixels=(?=[\d,]+\b)"), "--max-pixels "),
    (re.compile(r"\bpass a larger max_pixels\b"), "pass a larger --max-pixels"),
    (re.compile(r"\(None: no limit\)"), "(0: no limit)"),
    (re.compile(r"^(box|text)_threshold:"), r"--\1-threshold:"),
    (re.compile(r"^max_detections:"), "--max-detections:"),
    (re.compile(r"^batch_size:"), "--batch-size:"),
    (re.compile(r"^workers:"), "--workers:"),
    (re.compile(r"^format:"), "--format:"),
)


def cli_words(message: str) -> str:
    """A library message as a command-line user reads it (options, not keyword arguments)."""
    for pattern, replacement in _CLI_WORDS:
        message = pattern.sub(replacement, message)
    return message


def _fail(err: BaseException, status: int) -> int:
    print(f"error: {cli_words(str(err))}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``grounded-seg``; returns the exit status: 0 ok, 1 a model cannot be
    loaded, 2 a bad argument or input (argparse's own usage errors included), 3 a result could
    not be written."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command in ("train", "serve"):  # long-running: their progress shows without -v
        logging.getLogger("grounded_seg").setLevel(logging.INFO)
    # a process of our own: large freed tensors stay in the heap (see grounded_seg.allocator)
    reuse_freed_memory()
    try:
        return COMMANDS[args.command](args)
    except OutputError as err:  # after the work: the results could not be saved
        return _fail(err, 3)
    except (WeightsNotFoundError, InvalidWeightsError) as err:
        return _fail(err, 1)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        return _fail(err, 2)
    except ImportError as err:  # an optional extra the command needs (grounded-seg[ray])
        return _fail(err, 2)
    except BrokenPipeError:  # stdout's reader left (grounded-seg ... | head): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor one at exit
        return 1

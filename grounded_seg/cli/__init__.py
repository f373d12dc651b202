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

import logging
import sys
from collections.abc import Sequence

from ..allocator import reuse_freed_memory
from ..errors import InvalidWeightsError, OutputError, WeightsNotFoundError
from .commands import cmd_convert, cmd_demo, cmd_eval, cmd_models, cmd_train
from .parser import build_parser
from .segment import cmd_segment

logger = logging.getLogger("grounded_seg.cli")

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``grounded-seg``; returns the exit status."""
    args = build_parser().parse_args(argv)
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
            return cmd_models(args)
        if args.command == "train":
            return cmd_train(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "convert":
            return cmd_convert(args)
        return cmd_segment(args)
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

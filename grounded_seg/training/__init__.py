"""The training core every trainer uses: one loop (resumable batches, one optimiser step,
logging with an ETA, evaluation hooks, atomic checkpoints) and the run's report and card.

A trainer is a recipe on top: its data, its loss, its evaluation and its card text
(``grounded_seg.shapes.train_*``, ``grounded_seg.gdino.finetune``, ``grounded_seg.clip.finetune``).
"""

from .loop import CHECKPOINT_FORMAT, LoopResult, run_training
from .optim import adamw_decaying_matrices
from .report import (
    CARD_FILE,
    LOG_FILE,
    environment,
    markdown_table,
    thin_rows,
    write_json,
    write_run,
    write_text,
)

__all__ = [
    "CARD_FILE",
    "CHECKPOINT_FORMAT",
    "LOG_FILE",
    "LoopResult",
    "adamw_decaying_matrices",
    "environment",
    "markdown_table",
    "run_training",
    "thin_rows",
    "write_json",
    "write_run",
    "write_text",
]

"""Training checkpoints: written atomically, read safely, refused clearly.

The training core (:func:`grounded_seg.training.run_training`, which every trainer runs on)
saves its resumable state with :func:`save_checkpoint` (through
:func:`grounded_seg.outputs.atomic_write`: a run killed while saving keeps the previous
checkpoint) and reads it with :func:`load_checkpoint` (``torch.load(weights_only=True)``: a
crafted file cannot run code; a corrupt one gets a message that says how to start over instead
of an unpickling traceback).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import IO, Any

import torch

from .outputs import atomic_write


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically."""

    def write(handle: IO[bytes]) -> None:
        torch.save(state, handle)

    return atomic_write(path, write, overwrite=True)


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", start_over: str = ""
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``start_over`` tells the user how to begin afresh instead (e.g. ``"pass resume=False"``).
    Raises ``ValueError`` naming the file when it is not a readable checkpoint (truncated,
    corrupt, or holding objects other than tensors and plain data).
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError) as err:
        hint = f"; delete it or {start_over} to start over" if start_over else ""
        raise ValueError(
            f"{path} is not a readable training checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}){hint}"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(state).__name__}")
    return state

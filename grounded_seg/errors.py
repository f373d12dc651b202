"""Exceptions raised by grounded_seg, so callers can tell a bad call from a missing file."""

from __future__ import annotations


class WeightsNotFoundError(FileNotFoundError):
    """A model's weights are neither local nor downloadable; the message says how to get them."""


class InvalidWeightsError(ValueError):
    """A weights file or folder exists but is corrupt, incomplete, or of the wrong model type."""


class OutputError(OSError):
    """A result could not be written (the message names the file and why); nothing was left
    half-written and no existing file was replaced without being asked to."""

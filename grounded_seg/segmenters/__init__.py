"""Mask segmenters: SAM. Each implements :class:`MaskSegmenter`."""

from .base import MaskSegmenter
from .sam import SamSegmenter

__all__ = ["MaskSegmenter", "SamSegmenter"]

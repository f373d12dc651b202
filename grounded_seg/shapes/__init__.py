"""The shapes world: generated scenes with known answers, for training and measuring accuracy."""

from .coco import export_coco, rle_decode, rle_encode
from .world import (
    COLORS,
    HELD_OUT_SEEDS,
    PHRASES,
    SHAPES,
    TRAIN_SEEDS,
    Scene,
    ShapeObject,
    background,
    make_scene,
    scenes,
)

__all__ = [
    "COLORS",
    "HELD_OUT_SEEDS",
    "PHRASES",
    "SHAPES",
    "TRAIN_SEEDS",
    "Scene",
    "ShapeObject",
    "background",
    "export_coco",
    "make_scene",
    "rle_decode",
    "rle_encode",
    "scenes",
]

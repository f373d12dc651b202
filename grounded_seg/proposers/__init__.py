"""Box proposers: Grounding DINO (default; MM-Grounding-DINO too), CLIP, OWLv2 and SAM 3.
Each implements :class:`BoxProposer`."""

from __future__ import annotations

import importlib

from .base import BoxProposer, Proposals
from .clip import ClipProposer
from .grounding_dino import GroundingDinoProposer

PROPOSERS = {
    "grounding_dino": "grounding-dino-tiny",
    "clip": "clip-vit-base-patch32",
    "owlv2": "owlv2-base-patch16-ensemble",
    "sam3": "sam3",
}
"""Each route and its default detector model."""

# route -> (module, class) of its proposer
PROPOSER_CLASSES: dict[str, tuple[str, str]] = {
    "grounding_dino": ("grounding_dino", "GroundingDinoProposer"),
    "clip": ("clip", "ClipProposer"),
    "owlv2": ("owlv2", "Owlv2Proposer"),
    "sam3": ("sam3", "Sam3Proposer"),
}


def proposer_class(route: str) -> type:
    """The proposer class of a route (a key of :data:`PROPOSERS`)."""
    module, name = PROPOSER_CLASSES[route]
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "PROPOSERS",
    "PROPOSER_CLASSES",
    "BoxProposer",
    "ClipProposer",
    "GroundingDinoProposer",
    "Proposals",
    "proposer_class",
]

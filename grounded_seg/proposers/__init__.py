"""Box proposers: Grounding DINO (default) and CLIP. Each implements :class:`BoxProposer`."""

from .base import BoxProposer, Proposals
from .clip import ClipProposer
from .grounding_dino import GroundingDinoProposer

PROPOSERS = {"grounding_dino": "grounding-dino-tiny", "clip": "clip-vit-base-patch32"}
"""Each route and its default detector model."""

__all__ = ["PROPOSERS", "BoxProposer", "ClipProposer", "GroundingDinoProposer", "Proposals"]

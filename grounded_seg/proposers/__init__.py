"""Box proposers: Grounding DINO (default). Each implements :class:`BoxProposer`."""

from .base import BoxProposer, Proposals
from .grounding_dino import GroundingDinoProposer

__all__ = ["BoxProposer", "GroundingDinoProposer", "Proposals"]

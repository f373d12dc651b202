"""Official checkpoints (GroundingDINO, segment-anything, SAM 2.1 and SAM-HQ files) on transformers
models.

``load_official_state_dict`` reads a file safely (``weights_only=True``); ``detect_checkpoint``
says which official model it holds (Grounding DINO Swin-T/B, SAM ViT-B/L/H, SAM 2.1 Hiera-T/S/B+/L,
SAM-HQ ViT-B/L/H) from the tensors alone; ``convert_checkpoint`` maps it onto its transformers
model and writes a model folder; ``converted_model_dir`` does that once per source file and reuses
the cached safetensors while the source's sha256 is unchanged. The families beyond the first two
plug in through ``families.OfficialFamily``.
"""

from .cache import converted_model_dir, sha256_of
from .checkpoint import (
    DROPPED,
    NO_OFFICIAL_COUNTERPART,
    CheckpointKind,
    detect_checkpoint,
    is_official_checkpoint,
    load_official_state_dict,
)
from .convert import convert_checkpoint

__all__ = [
    "DROPPED",
    "NO_OFFICIAL_COUNTERPART",
    "CheckpointKind",
    "convert_checkpoint",
    "converted_model_dir",
    "detect_checkpoint",
    "is_official_checkpoint",
    "load_official_state_dict",
    "sha256_of",
]

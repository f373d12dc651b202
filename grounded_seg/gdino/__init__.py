"""Training Grounding DINO: samples, batches, the losses of the lecture, fine-tuning.

>>> from grounded_seg.gdino import fine_tune_grounding_dino                 # doctest: +SKIP
>>> report = fine_tune_grounding_dino("grounding-dino-tiny", "train.json", "out/")  # doctest: +SKIP
"""

from .data import GroundingCollator, GroundingSample, phrase_count
from .finetune import TrainConfig, fine_tune_grounding_dino, train_grounding_dino
from .loss import decoder_loss_function, grounding_losses, query_selection_loss

__all__ = [
    "GroundingCollator",
    "GroundingSample",
    "TrainConfig",
    "decoder_loss_function",
    "fine_tune_grounding_dino",
    "grounding_losses",
    "phrase_count",
    "query_selection_loss",
    "train_grounding_dino",
]

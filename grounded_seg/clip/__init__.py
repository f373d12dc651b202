"""CLIP: the contrastive objective, a user's image-caption data, and fine-tuning a checkpoint.

The objective (Lecture 1): ``N`` images and their ``N`` captions are encoded and projected into one
joint space of ``D`` dimensions, both sides are L2-normalised, and

    logits = (I_e @ T_e.T) * exp(t)             # (N, N); row i: image i against every caption

where ``t`` is the learned log temperature scale (``CLIPModel.logit_scale``; OpenAI's CLIP starts
at ``t = log(1 / 0.07) = 2.659`` and clamps ``exp(t)`` at 100). The matching pairs are on the
diagonal, so the loss is the mean of the cross-entropy over rows (each image against all captions)
and over columns (each caption against all images), both with labels ``arange(N)``.

>>> from grounded_seg.clip import ImageCaptionFolder, fine_tune_clip       # doctest: +SKIP
>>> report = fine_tune_clip("clip-vit-base-patch32", "my_photos/", "clip-mine/")  # doctest: +SKIP
>>> report.val_accuracy_before, report.val_accuracy_after                 # doctest: +SKIP
"""

from .data import IMAGE_EXTENSIONS, ImageCaptionFolder, caption_batches, caption_key
from .finetune import REPORT_FILE, FineTuneReport, fine_tune_clip, projected_features
from .loss import MAX_LOGIT_SCALE, contrastive_loss

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_LOGIT_SCALE",
    "REPORT_FILE",
    "FineTuneReport",
    "ImageCaptionFolder",
    "caption_batches",
    "caption_key",
    "contrastive_loss",
    "fine_tune_clip",
    "projected_features",
]

"""A tiny OWLv2 built offline from a config, saved in the Hugging Face format.

Nothing here downloads anything. The tokenizer is the offline CLIP BPE of :mod:`tiny_clip`
(OWLv2 reads text with CLIP's tokenizer); the image processor is OWLv2's own (pad to a square
at the bottom and right, then resize to ``IMAGE_SIZE``), so the padded-square box frame of the
real model is reproduced at a small size.

The heads are set to known values, so the model's answers can be checked exactly:

* the box head's last layer is zero, so each patch's box is the box bias alone: patch
  (row ``r``, column ``c``) of the ``n x n`` grid predicts (cx, cy, w, h) =
  ``((c + 1) / n, (r + 1) / n, 1 / n, 1 / n)`` in the padded square (OWLv2 centres a patch's
  prior box on its bottom-right grid corner), up to the bias's 1e-4 epsilons (:func:`grid_boxes`);
* the class head's logit shift is 0 and its scale 1, so a box's logit for a text is the cosine
  of the two embeddings, in [-1, 1], and its score a sigmoid in [0.27, 0.73] (random weights
  otherwise saturate the sigmoid);
* the objectness head's last layer is zero: every patch's objectness is sigmoid(0) = 0.5.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny_clip import BOS_TOKEN, EOS_TOKEN, build_vocab_and_merges, write_clip_tokenizer

IMAGE_SIZE = 32  # pixels, square; 4 x 4 patches of 8 pixels: 16 boxes per image
PATCH_SIZE = 8
NUM_BOXES = (IMAGE_SIZE // PATCH_SIZE) ** 2
MAX_TEXT_LEN = 16  # tokens, as the real OWLv2's text encoder (start and end tokens included)


def tiny_owlv2_config():
    """An OWLv2 of width 32: 1-layer text and 2-layer vision towers, patch 8, 32 x 32 pixels."""
    from transformers import Owlv2Config

    vocab, _ = build_vocab_and_merges()
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=MAX_TEXT_LEN,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    # the class head compares projected text embeddings with features of the text's width
    return Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)


def save_tiny_owlv2(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny OWLv2, its CLIP tokenizer and OWLv2 image processor in
    ``folder``; ``AutoTokenizer``, ``AutoImageProcessor`` and ``Owlv2Processor`` load it offline."""
    from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    folder = Path(folder)
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(tiny_owlv2_config()).eval()
    with torch.no_grad():
        for layer in (
            model.box_head.dense2,
            model.objectness_head.dense2,
            model.class_head.logit_shift,
            model.class_head.logit_scale,
        ):
            layer.weight.zero_()
            layer.bias.zero_()
    model.save_pretrained(folder)
    tokenizer = write_clip_tokenizer(folder)
    tokenizer.model_max_length = MAX_TEXT_LEN
    image_processor = Owlv2ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def grid_boxes(side: float) -> torch.Tensor:
    """The tiny model's ``(NUM_BOXES, 4)`` xyxy boxes in pixels of a padded square of ``side``
    pixels, row by row (see the module doc), before clipping to the image."""
    n = IMAGE_SIZE // PATCH_SIZE
    rows, cols = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    cx, cy = (cols.flatten() + 1) / n, (rows.flatten() + 1) / n
    half = 0.5 / n
    return torch.stack((cx - half, cy - half, cx + half, cy + half), dim=-1) * side

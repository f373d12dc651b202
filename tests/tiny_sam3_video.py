"""A tiny SAM 3 video model (``transformers.Sam3VideoModel``) built offline from a config and saved
as the hub's ``facebook/sam3`` folder is: ``model_type`` ``sam3_video``, a detector (SAM 3's image
model) and a tracker (SAM 3's SAM 2-style memory tracker) in one ``model.safetensors``, with the
offline CLIP tokenizer and ``preprocessor_config.json`` of ``tests/tiny_sam3.py``.

The detector is ``tiny_sam3_config()`` widened to 128 channels after the ViT: the tracker splits
each object pointer (``fpn_hidden_size`` channels) into memory-sized tokens, and the memory size
is fixed at 64 in transformers (``kv_in_dim=64`` of the memory attention), so the FPN must be a
multiple of 64 wide, and more than 64: at exactly 64 transformers 5.25 skips the split and its
pointers (4-d) no longer concatenate with the memories (3-d). The detection thresholds are
lowered so that a randomly initialised model finds objects (its scores, detection x presence,
sit near 0.25), the number of objects is capped to keep the tests fast, and the steps that need
the hub's ``kernels`` (mask NMS, hole filling) are switched off.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_sam3 import IMAGE_SIZE, tiny_sam3_config, write_preprocessor_config

from grounded_seg.shapes.clip_tokenizer import write_clip_tokenizer

WIDTH = 128  # FPN, DETR, mask heads and tracker: 2 x the tracker's memory size (64)
MEMORY_FRAMES = 3  # num_maskmem: the current frame + 2 past frames of memory
POINTER_FRAMES = 4  # max_object_pointers_in_encoder
COND_FRAMES = 2  # max_cond_frame_num
MAX_OBJECTS = 4
RECONDITION_EVERY = 0  # SAM 3's periodic reconditioning off: only an object's first frame
# conditions it, so the bounded session must give exactly what transformers' session gives


def tiny_detector_config():
    """``tiny_sam3_config()`` with every part after the ViT ``WIDTH`` channels wide."""
    config = tiny_sam3_config()
    config.vision_config.fpn_hidden_size = WIDTH
    for part in (
        config.geometry_encoder_config,
        config.detr_encoder_config,
        config.detr_decoder_config,
        config.mask_decoder_config,
    ):
        part.hidden_size = WIDTH
    return config


def tiny_sam3_video_config(**overrides):
    """A ~4M-parameter Sam3VideoConfig (``overrides``: Sam3VideoConfig fields)."""
    from transformers import Sam3TrackerVideoConfig, Sam3VideoConfig

    detector = tiny_detector_config()
    side = IMAGE_SIZE // 14
    tracker = Sam3TrackerVideoConfig(
        vision_config=detector.vision_config.to_dict(),
        prompt_encoder_config=dict(hidden_size=WIDTH, image_size=IMAGE_SIZE, patch_size=14),
        mask_decoder_config=dict(
            hidden_size=WIDTH,
            mlp_dim=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            iou_head_hidden_dim=32,
        ),
        image_size=IMAGE_SIZE,
        num_maskmem=MEMORY_FRAMES,
        max_object_pointers_in_encoder=POINTER_FRAMES,
        max_cond_frame_num=COND_FRAMES,
        memory_attention_hidden_size=WIDTH,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[side, side],
        memory_encoder_hidden_size=WIDTH,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=WIDTH,
        memory_fuser_num_layers=1,
        memory_fuser_embed_dim=WIDTH,
        memory_fuser_intermediate_dim=64,
    )
    settings = dict(
        low_res_mask_size=4 * 4 * side,
        score_threshold_detection=0.2,
        new_det_thresh=0.25,
        det_nms_thresh=0.0,  # mask NMS needs the hub's kernels package
        fill_hole_area=0,  # so does hole filling
        max_num_objects=MAX_OBJECTS,
        recondition_every_nth_frame=RECONDITION_EVERY,
        hotstart_delay=0,
    )
    settings.update(overrides)
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker, **settings)


def save_tiny_sam3_video(folder: Path, seed: int = 0, tokenizer: bool = True, **overrides) -> Path:
    """A randomly initialised tiny Sam3VideoModel, its preprocessor settings and (``tokenizer``)
    its CLIP tokenizer in ``folder``; ``load_sam3_video(folder)`` loads it offline."""
    from transformers import Sam3VideoModel

    folder = Path(folder)
    torch.manual_seed(seed)
    Sam3VideoModel(tiny_sam3_video_config(**overrides)).eval().save_pretrained(folder)
    write_preprocessor_config(folder)
    if tokenizer:
        write_clip_tokenizer(folder)
    return folder

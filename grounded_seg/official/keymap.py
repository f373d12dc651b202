"""Official tensor names -> transformers tensor names, as ordered rename rules.

A key matching a rule's ``pattern`` in full goes to the rule's ``targets`` (``\\1``-style groups).
Fused projections (Swin's ``qkv``, ``nn.MultiheadAttention``'s ``in_proj``) are stacked q, k, v
along dim 0 and are cut into three equal chunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import InvalidWeightsError
from .checkpoint import Family, dropped_patterns, matches


@dataclass(frozen=True)
class Rule:
    """Official keys matching ``pattern`` go to ``targets``.

    With ``split`` the official tensor is a fused projection stacked along dim 0 in the order of
    ``targets`` and is cut into equal chunks; without it every target gets the whole tensor (a
    tensor the transformers model ties to two places).
    """

    pattern: str
    targets: tuple[str, ...]
    split: bool = False


def one(pattern: str, target: str) -> Rule:
    return Rule(pattern, (target,))


def fused(pattern: str, target: str, parts: tuple[str, ...]) -> Rule:
    """A fused projection; ``{}`` in ``target`` takes each part's name, in stacking order."""
    return Rule(pattern, tuple(target.replace("{}", part) for part in parts), split=True)


_SWIN = "model.backbone.conv_encoder.model."
_BLOCK = r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\."
_HF_BLOCK = _SWIN + r"swin.encoder.layers.\1.blocks.\2."
_ENC = r"transformer\.encoder\."
_HF_ENC = r"model.encoder.layers.\1."
_DEC = r"transformer\.decoder\.layers\.(\d+)\."
_HF_DEC = r"model.decoder.layers.\1."
_QKV = ("query", "key", "value")

GROUNDING_DINO_RULES: tuple[Rule, ...] = (
    # Swin image backbone; its per-stage output norms feed the input projections
    one(
        r"backbone\.0\.patch_embed\.proj\.(.*)",
        _SWIN + r"swin.embeddings.patch_embeddings.projection.\1",
    ),
    one(r"backbone\.0\.patch_embed\.norm\.(.*)", _SWIN + r"swin.embeddings.norm.\1"),
    one(_BLOCK + r"norm1\.(.*)", _HF_BLOCK + r"layernorm_before.\3"),
    one(_BLOCK + r"norm2\.(.*)", _HF_BLOCK + r"layernorm_after.\3"),
    one(
        _BLOCK + r"attn\.relative_position_bias_table",
        _HF_BLOCK + "attention.relative_position_bias.relative_position_bias_table",
    ),
    fused(_BLOCK + r"attn\.qkv\.(.*)", _HF_BLOCK + r"attention.{}_proj.\3", ("q", "k", "v")),
    one(_BLOCK + r"attn\.proj\.(.*)", _HF_BLOCK + r"attention.o_proj.\3"),
    one(_BLOCK + r"mlp\.(fc[12])\.(.*)", _HF_BLOCK + r"mlp.\3.\4"),
    one(
        r"backbone\.0\.layers\.(\d+)\.downsample\.(.*)",
        _SWIN + r"swin.encoder.layers.\1.downsample.\2",
    ),
    one(r"backbone\.0\.norm1\.(.*)", _SWIN + r"hidden_states_norms.stage2.\1"),
    one(r"backbone\.0\.norm2\.(.*)", _SWIN + r"hidden_states_norms.stage3.\1"),
    one(r"backbone\.0\.norm3\.(.*)", _SWIN + r"hidden_states_norms.stage4.\1"),
    # BERT text backbone and its projection to d_model
    one(r"bert\.(embeddings|encoder)\.(.*)", r"model.text_backbone.\1.\2"),
    one(r"feat_map\.(.*)", r"model.text_projection.\1"),
    # input projections, level embeddings, query content, two-stage proposals
    one(r"input_proj\.(.*)", r"model.input_proj_vision.\1"),
    one(r"transformer\.level_embed", "model.level_embed"),
    one(r"transformer\.tgt_embed\.(.*)", r"model.query_position_embeddings.\1"),
    one(r"transformer\.enc_output\.(.*)", r"model.enc_output.\1"),
    one(r"transformer\.enc_output_norm\.(.*)", r"model.enc_output_norm.\1"),
    one(r"transformer\.enc_out_bbox_embed\.(.*)", r"model.encoder_output_bbox_embed.\1"),
    # feature enhancer: deformable image self-attention
    one(_ENC + r"layers\.(\d+)\.self_attn\.(.*)", _HF_ENC + r"deformable_layer.self_attn.\2"),
    one(
        _ENC + r"layers\.(\d+)\.norm1\.(.*)", _HF_ENC + r"deformable_layer.self_attn_layer_norm.\2"
    ),
    one(_ENC + r"layers\.(\d+)\.linear([12])\.(.*)", _HF_ENC + r"deformable_layer.fc\2.\3"),
    one(_ENC + r"layers\.(\d+)\.norm2\.(.*)", _HF_ENC + r"deformable_layer.final_layer_norm.\2"),
    # feature enhancer: text self-attention
    fused(
        _ENC + r"text_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)",
        _HF_ENC + r"text_enhancer_layer.self_attn.{}.\2",
        _QKV,
    ),
    one(
        _ENC + r"text_layers\.(\d+)\.self_attn\.out_proj\.(.*)",
        _HF_ENC + r"text_enhancer_layer.self_attn.out_proj.\2",
    ),
    one(_ENC + r"text_layers\.(\d+)\.linear([12])\.(.*)", _HF_ENC + r"text_enhancer_layer.fc\2.\3"),
    one(
        _ENC + r"text_layers\.(\d+)\.norm1\.(.*)",
        _HF_ENC + r"text_enhancer_layer.layer_norm_before.\2",
    ),
    one(
        _ENC + r"text_layers\.(\d+)\.norm2\.(.*)",
        _HF_ENC + r"text_enhancer_layer.layer_norm_after.\2",
    ),
    # feature enhancer: bidirectional image <-> text cross-attention (v: vision, l: language)
    one(_ENC + r"fusion_layers\.(\d+)\.gamma_v", _HF_ENC + "fusion_layer.vision_param"),
    one(_ENC + r"fusion_layers\.(\d+)\.gamma_l", _HF_ENC + "fusion_layer.text_param"),
    one(
        _ENC + r"fusion_layers\.(\d+)\.layer_norm_v\.(.*)",
        _HF_ENC + r"fusion_layer.layer_norm_vision.\2",
    ),
    one(
        _ENC + r"fusion_layers\.(\d+)\.layer_norm_l\.(.*)",
        _HF_ENC + r"fusion_layer.layer_norm_text.\2",
    ),
    one(
        _ENC + r"fusion_layers\.(\d+)\.attn\.(values_|out_)?v_proj\.(.*)",
        _HF_ENC + r"fusion_layer.attn.\2vision_proj.\3",
    ),
    one(
        _ENC + r"fusion_layers\.(\d+)\.attn\.(values_|out_)?l_proj\.(.*)",
        _HF_ENC + r"fusion_layer.attn.\2text_proj.\3",
    ),
    # cross-modality decoder: self-attention, text cross-attention, image cross-attention, FFN
    fused(_DEC + r"self_attn\.in_proj_(weight|bias)", _HF_DEC + r"self_attn.{}.\2", _QKV),
    one(_DEC + r"self_attn\.out_proj\.(.*)", _HF_DEC + r"self_attn.out_proj.\2"),
    one(_DEC + r"norm2\.(.*)", _HF_DEC + r"self_attn_layer_norm.\2"),
    fused(_DEC + r"ca_text\.in_proj_(weight|bias)", _HF_DEC + r"encoder_attn_text.{}.\2", _QKV),
    one(_DEC + r"ca_text\.out_proj\.(.*)", _HF_DEC + r"encoder_attn_text.out_proj.\2"),
    one(_DEC + r"catext_norm\.(.*)", _HF_DEC + r"encoder_attn_text_layer_norm.\2"),
    one(_DEC + r"cross_attn\.(.*)", _HF_DEC + r"encoder_attn.\2"),
    one(_DEC + r"norm1\.(.*)", _HF_DEC + r"encoder_attn_layer_norm.\2"),
    one(_DEC + r"linear([12])\.(.*)", _HF_DEC + r"fc\2.\3"),
    one(_DEC + r"norm3\.(.*)", _HF_DEC + r"final_layer_norm.\2"),
    one(r"transformer\.decoder\.norm\.(.*)", r"model.decoder.layer_norm.\1"),
    one(r"transformer\.decoder\.ref_point_head\.(.*)", r"model.decoder.reference_points_head.\1"),
    one(r"transformer\.decoder\.bbox_embed\.(.*)", r"model.decoder.bbox_embed.\1"),
    one(r"bbox_embed\.(.*)", r"bbox_embed.\1"),
)

_TWO_WAY = r"mask_decoder\.transformer\."

SAM_RULES: tuple[Rule, ...] = (
    # ViT image encoder (qkv stays fused in transformers) and its neck
    one(r"image_encoder\.pos_embed", "vision_encoder.pos_embed"),
    one(r"image_encoder\.patch_embed\.proj\.(.*)", r"vision_encoder.patch_embed.projection.\1"),
    one(
        r"image_encoder\.blocks\.(\d+)\.norm([12])\.(.*)",
        r"vision_encoder.layers.\1.layer_norm\2.\3",
    ),
    one(r"image_encoder\.blocks\.(\d+)\.(attn|mlp)\.(.*)", r"vision_encoder.layers.\1.\2.\3"),
    one(r"image_encoder\.neck\.0\.(.*)", r"vision_encoder.neck.conv1.\1"),
    one(r"image_encoder\.neck\.1\.(.*)", r"vision_encoder.neck.layer_norm1.\1"),
    one(r"image_encoder\.neck\.2\.(.*)", r"vision_encoder.neck.conv2.\1"),
    one(r"image_encoder\.neck\.3\.(.*)", r"vision_encoder.neck.layer_norm2.\1"),
    # prompt encoder; its random Fourier matrix also encodes the image grid (tied in transformers)
    Rule(
        r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
        (
            "shared_image_embedding.positional_embedding",
            "prompt_encoder.shared_embedding.positional_embedding",
        ),
    ),
    one(r"prompt_encoder\.point_embeddings\.(\d)\.(.*)", r"prompt_encoder.point_embed.\1.\2"),
    one(r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.(.*)", r"prompt_encoder.\1.\2"),
    one(r"prompt_encoder\.mask_downscaling\.0\.(.*)", r"prompt_encoder.mask_embed.conv1.\1"),
    one(r"prompt_encoder\.mask_downscaling\.1\.(.*)", r"prompt_encoder.mask_embed.layer_norm1.\1"),
    one(r"prompt_encoder\.mask_downscaling\.3\.(.*)", r"prompt_encoder.mask_embed.conv2.\1"),
    one(r"prompt_encoder\.mask_downscaling\.4\.(.*)", r"prompt_encoder.mask_embed.layer_norm2.\1"),
    one(r"prompt_encoder\.mask_downscaling\.6\.(.*)", r"prompt_encoder.mask_embed.conv3.\1"),
    # mask decoder: the two-way transformer
    one(
        _TWO_WAY + r"layers\.(\d+)\.norm([1-4])\.(.*)",
        r"mask_decoder.transformer.layers.\1.layer_norm\2.\3",
    ),
    one(_TWO_WAY + r"layers\.(\d+)\.(.*)", r"mask_decoder.transformer.layers.\1.\2"),
    one(_TWO_WAY + r"norm_final_attn\.(.*)", r"mask_decoder.transformer.layer_norm_final_attn.\1"),
    one(
        _TWO_WAY + r"final_attn_token_to_image\.(.*)",
        r"mask_decoder.transformer.final_attn_token_to_image.\1",
    ),
    # mask decoder: output tokens, upscaling, hypernetwork MLPs, IoU head (3-layer MLPs)
    one(r"mask_decoder\.(iou_token|mask_tokens)\.(.*)", r"mask_decoder.\1.\2"),
    one(r"mask_decoder\.output_upscaling\.0\.(.*)", r"mask_decoder.upscale_conv1.\1"),
    one(r"mask_decoder\.output_upscaling\.1\.(.*)", r"mask_decoder.upscale_layer_norm.\1"),
    one(r"mask_decoder\.output_upscaling\.3\.(.*)", r"mask_decoder.upscale_conv2.\1"),
    one(
        r"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.0\.(.*)",
        r"mask_decoder.\1.proj_in.\2",
    ),
    one(
        r"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.1\.(.*)",
        r"mask_decoder.\1.layers.0.\2",
    ),
    one(
        r"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.2\.(.*)",
        r"mask_decoder.\1.proj_out.\2",
    ),
)

RULES: dict[Family, tuple[Rule, ...]] = {"grounding_dino": GROUNDING_DINO_RULES, "sam": SAM_RULES}


def rules_for(family: Family) -> tuple[Rule, ...]:
    """The rename rules of ``family`` (Grounding DINO and SAM 1 here, the others in theirs)."""
    from .families import extra_family

    extra = extra_family(family)
    return extra.rules if extra is not None else RULES[family]


def rename(key: str, family: Family) -> tuple[tuple[str, ...], bool]:
    """The transformers keys an official tensor goes to, and whether it is split among them.

    Raises :class:`InvalidWeightsError` for a key no rule knows.
    """
    for rule in rules_for(family):
        match = re.fullmatch(rule.pattern, key)
        if match is not None:
            return tuple(match.expand(target) for target in rule.targets), rule.split
    raise InvalidWeightsError(f"official {family} tensor {key!r}: no rule maps it")


def map_state_dict(
    source: dict[str, torch.Tensor], family: Family
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename (and split) every official tensor; also return the keys dropped on purpose."""
    from .families import extra_family

    extra = extra_family(family)
    if extra is not None and extra.prepare is not None:
        source = extra.prepare(source)
    mapped: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in source.items():
        if matches(dropped_patterns(family), key):
            dropped.append(key)
            continue
        targets, split = rename(key, family)
        if split and tensor.shape[0] % len(targets):
            raise InvalidWeightsError(
                f"official tensor {key!r}: expected a fused projection whose first dim divides "
                f"by {len(targets)}, got shape {tuple(tensor.shape)}"
            )
        values = tensor.chunk(len(targets), dim=0) if split else [tensor] * len(targets)
        for target, value in zip(targets, values, strict=True):
            if target in mapped:
                raise InvalidWeightsError(f"official tensors collide on {target!r} (from {key!r})")
            mapped[target] = value.contiguous()
    return mapped, dropped

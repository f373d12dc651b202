"""Official checkpoint -> a transformers model folder (config, safetensors, processors).

The architecture is read from the tensors (widths, depths, heads, window sizes, query count), the
tensors are renamed by :mod:`.keymap`, and the result must fill the transformers model exactly:
every official tensor used (bar :data:`DROPPED`), every model tensor filled (bar
:data:`NO_OFFICIAL_COUNTERPART`), every shape equal. Otherwise :class:`InvalidWeightsError`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import InvalidWeightsError
from .checkpoint import (
    CheckpointKind,
    detect_checkpoint,
    load_official_state_dict,
    matches,
    no_counterpart_patterns,
)
from .families import extra_family
from .keymap import map_state_dict

logger = logging.getLogger(__name__)

BERT_TOKENIZER_ENV = "GROUNDED_SEG_BERT_TOKENIZER"
DEFAULT_BERT_TOKENIZER = "bert-base-uncased"  # the tokenizer the official Grounding DINO uses

# The official preprocessing: ImageNet statistics; Grounding DINO resizes the short side to 800
# (long side at most 1333), SAM the long side to 1024 and pads to a square.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _count(state_dict: dict[str, torch.Tensor], pattern: str) -> int:
    return len({m.group(1) for k in state_dict if (m := re.match(pattern, k))})


def grounding_dino_config(sd: dict[str, torch.Tensor]) -> Any:
    """A ``GroundingDinoConfig`` with the sizes of the official tensors (Swin-T or Swin-B)."""
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    embed_dim = int(sd["backbone.0.patch_embed.proj.weight"].shape[0])
    depths, heads = [], []
    for stage in range(_count(sd, r"backbone\.0\.layers\.(\d+)\.")):
        depths.append(_count(sd, rf"backbone\.0\.layers\.{stage}\.blocks\.(\d+)\."))
        table = sd[f"backbone.0.layers.{stage}.blocks.0.attn.relative_position_bias_table"]
        heads.append(int(table.shape[1]))
    window = (math.isqrt(int(table.shape[0])) + 1) // 2  # the table has (2w - 1)^2 rows
    backbone = SwinConfig(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=heads,
        window_size=window,
        image_size=384 if window == 12 else 224,  # the official Swin-B was pretrained at 384
        out_features=["stage2", "stage3", "stage4"],
        out_indices=[2, 3, 4],
    )
    words = sd["bert.embeddings.word_embeddings.weight"]
    text = BertConfig(
        vocab_size=int(words.shape[0]),
        hidden_size=int(words.shape[1]),
        num_hidden_layers=_count(sd, r"bert\.encoder\.layer\.(\d+)\."),
        num_attention_heads=int(words.shape[1]) // 64,
        intermediate_size=int(sd["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(sd["bert.embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(sd["bert.embeddings.token_type_embeddings.weight"].shape[0]),
    )
    queries = sd["transformer.tgt_embed.weight"]
    return GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        num_queries=int(queries.shape[0]),
        d_model=int(queries.shape[1]),
        num_feature_levels=int(sd["transformer.level_embed"].shape[0]),
        encoder_layers=_count(sd, r"transformer\.encoder\.layers\.(\d+)\."),
        decoder_layers=_count(sd, r"transformer\.decoder\.layers\.(\d+)\."),
        encoder_ffn_dim=int(sd["transformer.encoder.layers.0.linear1.weight"].shape[0]),
        decoder_ffn_dim=int(sd["transformer.decoder.layers.0.linear1.weight"].shape[0]),
        max_text_len=256,
    )


def sam_config(sd: dict[str, torch.Tensor]) -> Any:
    """A ``SamConfig`` with the sizes of the official tensors (ViT-B, -L or -H)."""
    from transformers import SamConfig, SamVisionConfig

    patch = sd["image_encoder.patch_embed.proj.weight"]
    hidden, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = int(sd["image_encoder.pos_embed"].shape[1])
    layers = _count(sd, r"image_encoder\.blocks\.(\d+)\.")
    head_dim = int(sd["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
    rows = [int(sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) for i in range(layers)]
    global_layers = [i for i, r in enumerate(rows) if r == 2 * grid - 1]
    windowed = [r for r in rows if r != 2 * grid - 1]
    vision = SamVisionConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // head_dim,
        global_attn_indexes=global_layers,
        window_size=(windowed[0] + 1) // 2 if windowed else 0,
        mlp_dim=int(sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0]),
        output_channels=int(sd["image_encoder.neck.0.weight"].shape[0]),
        patch_size=patch_size,
        image_size=grid * patch_size,
    )
    return SamConfig(vision_config=vision.to_dict())


def _expected_tensors(family: str, config: Any) -> dict[str, tuple[int, ...]]:
    import transformers

    extra = extra_family(family)
    name = (
        extra.model_class
        if extra is not None
        else ("GroundingDinoForObjectDetection" if family == "grounding_dino" else "SamModel")
    )
    cls = getattr(transformers, name)
    with torch.device("meta"):
        model = cls(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _fill_missing(family: str, mapped: dict[str, torch.Tensor], expected: dict) -> list[str]:
    """Set the model tensors with no official counterpart to a LayerNorm's identity (or to what
    the family's ``fill`` gives)."""
    extra = extra_family(family)
    filled = []
    for key, shape in expected.items():
        if key not in mapped and matches(no_counterpart_patterns(family), key):
            if extra is not None and extra.fill is not None:
                mapped[key] = extra.fill(key, shape)
            else:
                mapped[key] = torch.ones(shape) if key.endswith("weight") else torch.zeros(shape)
            filled.append(key)
    return filled


def check_fit(
    mapped: dict[str, torch.Tensor],
    expected: dict[str, tuple[int, ...]],
    what: str,
    unknown: list[str] | None = None,
) -> None:
    """``InvalidWeightsError`` (``what``: the gaps) unless the mapped tensors fill the model's
    ``expected`` names and shapes exactly; ``unknown`` official keys no rule placed count as
    tensors with no place."""
    missing = sorted(set(expected) - set(mapped))
    unused = sorted(set(mapped) - set(expected)) + list(unknown or ())
    wrong = [
        f"{k}: expected {expected[k]}, got {tuple(mapped[k].shape)}"
        for k in sorted(set(expected) & set(mapped))
        if tuple(mapped[k].shape) != expected[k]
    ]
    if missing or unused or wrong:
        parts = [
            f"{len(items)} {kind} (e.g. {', '.join(items[:3])})"
            for kind, items in (
                ("model tensors not filled", missing),
                ("official tensors with no place", unused),
                ("shape mismatches", wrong),
            )
            if items
        ]
        raise InvalidWeightsError(f"{what}: {'; '.join(parts)}")


def mapped_state_dict(
    state_dict: dict[str, torch.Tensor], where: str = "checkpoint"
) -> tuple[CheckpointKind, Any, dict[str, torch.Tensor]]:
    """Recognise, configure and map an official state dict; checked against the model's tensors."""
    kind = detect_checkpoint(state_dict, where)
    extra = extra_family(kind.family)
    if extra is not None:
        config = extra.config(state_dict)
    elif kind.family == "grounding_dino":
        config = grounding_dino_config(state_dict)
    else:
        config = sam_config(state_dict)
    mapped, dropped = map_state_dict(state_dict, kind.family)
    expected = _expected_tensors(kind.family, config)
    filled = _fill_missing(kind.family, mapped, expected)
    check_fit(
        mapped,
        expected,
        f"{where}: the official {kind.family} {kind.variant} tensors do not fit the transformers "
        "model",
    )
    logger.info(
        "%s: %s %s, %d tensors mapped, %d dropped on purpose, %d set to identity",
        where,
        kind.family,
        kind.variant,
        len(mapped) - len(filled),
        len(dropped),
        len(filled),
    )
    return kind, config, mapped


def _load_tokenizer(tokenizer: str | os.PathLike | None) -> Any:
    from transformers import AutoTokenizer, BertTokenizer

    name = tokenizer or os.environ.get(BERT_TOKENIZER_ENV) or DEFAULT_BERT_TOKENIZER
    path = Path(name).expanduser()
    try:
        if path.is_file():  # a WordPiece vocab.txt
            return BertTokenizer(vocab_file=str(path), do_lower_case=True)
        return AutoTokenizer.from_pretrained(str(name))
    except (OSError, ValueError) as err:
        raise InvalidWeightsError(
            f"Grounding DINO needs the BERT tokenizer it was trained with ({DEFAULT_BERT_TOKENIZER}"
            f"); could not load {name!r}: {err}. Download it once (`hf download "
            f"{DEFAULT_BERT_TOKENIZER}`), or pass tokenizer= a folder or vocab.txt, or set "
            f"{BERT_TOKENIZER_ENV}"
        ) from err


def _processor_config(family: str) -> dict[str, Any]:
    extra = extra_family(family)
    if extra is not None:
        return extra.processor_config()
    common = {
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_pad": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "resample": 2,  # bilinear
    }
    if family == "grounding_dino":
        return {
            **common,
            "image_processor_type": "GroundingDinoImageProcessor",
            "format": "coco_detection",
            "do_convert_annotations": True,
            "size": {"shortest_edge": 800, "longest_edge": 1333},
        }
    return {
        **common,
        "image_processor_type": "SamImageProcessor",
        "do_convert_rgb": True,
        "size": {"longest_edge": 1024},
        "pad_size": {"height": 1024, "width": 1024},
        "mask_size": {"longest_edge": 256},
        "mask_pad_size": {"height": 256, "width": 256},
    }


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    source_sha256: str | None = None,
) -> CheckpointKind:
    """Convert an official ``.pth`` into the model folder ``dst`` (created; must not exist).

    ``dst`` receives ``config.json``, ``model.safetensors``, ``preprocessor_config.json``, the
    BERT tokenizer files for Grounding DINO (``tokenizer``: a folder, a ``vocab.txt``, a hub id;
    default ``$GROUNDED_SEG_BERT_TOKENIZER`` or ``bert-base-uncased``) and ``grounded_seg.json``
    recording the source. Returns what the checkpoint was.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst} already exists: choose a new folder (nothing is overwritten)")
    state_dict = load_official_state_dict(src)
    kind, config, mapped = mapped_state_dict(state_dict, str(src))
    tok = _load_tokenizer(tokenizer) if kind.family == "grounding_dino" else None
    tmp = dst.with_name(dst.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _write_folder(tmp, kind, config, mapped, tok, src, source_sha256)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(dst)
    logger.info("converted %s (%s %s) to %s", src, kind.family, kind.variant, dst)
    return kind


def _write_folder(
    tmp: Path,
    kind: CheckpointKind,
    config: Any,
    mapped: dict[str, torch.Tensor],
    tok: Any,
    src: Path,
    source_sha256: str | None,
) -> None:
    config.save_pretrained(tmp)
    # tied tensors are stored once per name; clone so safetensors sees no shared storage
    seen: set[int] = set()
    tensors = {}
    for key, value in mapped.items():
        ptr = value.data_ptr()
        tensors[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "preprocessor_config.json").write_text(
        json.dumps(_processor_config(kind.family), indent=2) + "\n"
    )
    if tok is not None:
        tok.save_pretrained(tmp)
    record = {"family": kind.family, "variant": kind.variant, "file": src.name}
    if source_sha256:
        record["sha256"] = source_sha256
    (tmp / "grounded_seg.json").write_text(json.dumps({"converted_from": record}, indent=2) + "\n")

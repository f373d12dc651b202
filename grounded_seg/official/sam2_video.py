"""Official SAM 2.1 checkpoints (``sam2.1_hiera_*.pt``) on ``transformers.Sam2VideoModel``: the
whole model, video parts included, for the ``sam2`` tracking route.

The image part (Hiera trunk, FPN neck, prompt encoder, mask decoder, the no-memory token) is
configured and renamed by :mod:`.sam2`'s rules, unchanged. The tensors :mod:`.sam2` drops for the
image model each get a place here: the memory attention (a frame's features attend to the
memories of earlier frames and to object pointers), the memory encoder (a frame and its mask
become a memory), the memories' temporal position encoding, the object-pointer projection and its
temporal encoding, the no-object pointer and spatial embedding, and the mask downsampler of mask
prompts. Every official tensor is placed and every model tensor filled, or
:class:`InvalidWeightsError` names what is not.

Sizes the tensors show come from them (memory widths, layers, kernels, the number of memories);
what they cannot show (attention heads of the memory attention, strides and paddings of the mask
downsampler, RoPE settings) comes from the official configs, where it is the same for every size.

:func:`load_sam2_video` accepts an official ``.pt`` (converted once into
``cache_root()/converted-video/<name>-<hash>/model``, reused while the file's sha256 holds), a
``Sam2VideoModel`` folder (``model_type`` ``sam2_video``) or a hub id of one. A ``Sam2Model``
folder (``model_type`` ``sam2``) is refused: it holds the image model only, without the memory
tensors a video needs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidWeightsError
from .convert import check_fit
from .keymap import Rule, one
from .sam2 import IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, detect, prepare, processor_config
from .sam2 import RULES as IMAGE_RULES
from .sam2 import config as image_config

logger = logging.getLogger(__name__)

# the same in every official sam2.1 yaml (memory_attention / memory_encoder / SAM2Base)
MEMORY_HEADS = 1
ROPE_THETA = 10000.0
MASK_DOWNSAMPLER_STRIDE = 2
MASK_DOWNSAMPLER_TOTAL_STRIDE = 16
MAX_OBJECT_POINTERS = 16
MEMORY_KV_DIM = 64  # Sam2VideoMemoryAttentionLayer's cross-attention reads 64-wide memories

_MA = r"memory_attention\.layers\.(\d+)\."
_HF_MA = r"memory_attention.layers.\1."
_FUSER = r"memory_encoder\.fuser\.layers\.(\d+)\."
_HF_FUSER = r"memory_encoder.memory_fuser.layers.\1."

VIDEO_RULES: tuple[Rule, ...] = (
    # memory attention: self-attention, cross-attention to memories, FFN, three norms; final norm
    one(_MA + r"(self_attn|cross_attn_image)\.([qkv]_proj)\.(.*)", _HF_MA + r"\2.\3.\4"),
    one(_MA + r"(self_attn|cross_attn_image)\.out_proj\.(.*)", _HF_MA + r"\2.o_proj.\3"),
    one(_MA + r"(linear[12])\.(.*)", _HF_MA + r"\2.\3"),
    one(_MA + r"norm([123])\.(.*)", _HF_MA + r"layer_norm\2.\3"),
    one(r"memory_attention\.norm\.(.*)", r"memory_attention.layer_norm.\1"),
    # memory encoder (mask downsampler keys already renamed by _prepare_video)
    one(r"memory_encoder\.mask_downsampler\.(.*)", r"memory_encoder.mask_downsampler.\1"),
    one(r"memory_encoder\.pix_feat_proj\.(.*)", r"memory_encoder.feature_projection.\1"),
    one(_FUSER + r"dwconv\.(.*)", _HF_FUSER + r"depthwise_conv.\2"),
    one(_FUSER + r"norm\.(.*)", _HF_FUSER + r"layer_norm.\2"),
    one(_FUSER + r"pwconv([12])\.(.*)", _HF_FUSER + r"pointwise_conv\2.\3"),
    one(_FUSER + r"gamma", _HF_FUSER + "scale"),
    one(r"memory_encoder\.out_proj\.(.*)", r"memory_encoder.projection.\1"),
    # memories' temporal positions, object pointers, no-object embeddings, mask prompts
    one(r"maskmem_tpos_enc", "memory_temporal_positional_encoding"),
    one(r"no_mem_pos_enc", "no_memory_positional_encoding"),
    one(r"no_obj_ptr", "no_object_pointer"),
    one(r"no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
    one(r"obj_ptr_proj\.layers\.0\.(.*)", r"object_pointer_proj.proj_in.\1"),
    one(r"obj_ptr_proj\.layers\.1\.(.*)", r"object_pointer_proj.layers.0.\1"),
    one(r"obj_ptr_proj\.layers\.2\.(.*)", r"object_pointer_proj.proj_out.\1"),
    one(r"obj_ptr_tpos_proj\.(.*)", r"temporal_positional_encoding_projection_layer.\1"),
    one(r"mask_downsample\.(.*)", r"mask_downsample.\1"),
)
RULES: tuple[Rule, ...] = IMAGE_RULES + VIDEO_RULES


@dataclass(frozen=True)
class Sam2VideoSettings:
    """How frames enter the video model: resized to ``size x size`` pixels (the aspect is not
    kept), scaled to [0, 1], normalised with ``image_mean`` / ``image_std`` (RGB order)."""

    size: int = IMAGE_SIZE
    image_mean: tuple[float, float, float] = tuple(IMAGENET_MEAN)  # type: ignore[assignment]
    image_std: tuple[float, float, float] = tuple(IMAGENET_STD)  # type: ignore[assignment]


def _count(sd: dict[str, torch.Tensor], pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.fullmatch(pattern, k))})


def _require(sd: dict[str, torch.Tensor], *keys: str) -> None:
    missing = [k for k in keys if k not in sd]
    if missing:
        raise InvalidWeightsError(
            f"official SAM 2.1 checkpoint: expected the video tensors {', '.join(missing)}; they "
            "are missing (an image-only or damaged state dict cannot track video)"
        )


def video_config(sd: dict[str, torch.Tensor]) -> Any:
    """A ``Sam2VideoConfig`` sized from the official tensors (the image part: ``.sam2.config``)."""
    from transformers import Sam2VideoConfig

    image = image_config(sd)
    _require(
        sd,
        "maskmem_tpos_enc",
        "memory_attention.norm.weight",
        "memory_attention.layers.0.linear1.weight",
        "memory_attention.layers.0.self_attn.q_proj.weight",
        "memory_attention.layers.0.cross_attn_image.k_proj.weight",
        "memory_encoder.pix_feat_proj.weight",
        "memory_encoder.out_proj.weight",
        "memory_encoder.fuser.layers.0.dwconv.weight",
        "memory_encoder.fuser.layers.0.pwconv1.weight",
        "memory_encoder.mask_downsampler.encoder.0.weight",
    )
    width = int(sd["memory_attention.norm.weight"].shape[0])
    kv_dim = int(sd["memory_attention.layers.0.cross_attn_image.k_proj.weight"].shape[1])
    if kv_dim != MEMORY_KV_DIM:
        raise InvalidWeightsError(
            f"official SAM 2.1 checkpoint: expected memories {MEMORY_KV_DIM} wide (what "
            f"Sam2VideoModel's memory attention reads), got {kv_dim}"
        )
    dwconv = sd["memory_encoder.fuser.layers.0.dwconv.weight"]
    downsampler = sd["memory_encoder.mask_downsampler.encoder.0.weight"]
    layers = _downsampler_layers(sd)
    if MASK_DOWNSAMPLER_STRIDE**layers != MASK_DOWNSAMPLER_TOTAL_STRIDE:
        raise InvalidWeightsError(
            f"official SAM 2.1 checkpoint: expected a mask downsampler of "
            f"{MASK_DOWNSAMPLER_TOTAL_STRIDE.bit_length() - 1} stride-2 convolutions, got {layers}"
        )
    side = IMAGE_SIZE // 16
    return Sam2VideoConfig(
        vision_config=image.vision_config.to_dict(),
        prompt_encoder_config=image.prompt_encoder_config.to_dict(),
        mask_decoder_config=image.mask_decoder_config.to_dict(),
        image_size=IMAGE_SIZE,
        num_maskmem=int(sd["maskmem_tpos_enc"].shape[0]),
        enable_occlusion_spatial_embedding="no_obj_embed_spatial" in sd,
        enable_temporal_pos_encoding_for_object_pointers="obj_ptr_tpos_proj.weight" in sd,
        max_object_pointers_in_encoder=MAX_OBJECT_POINTERS,
        memory_attention_hidden_size=width,
        memory_attention_num_layers=_count(sd, r"memory_attention\.layers\.(\d+)\..*"),
        memory_attention_num_attention_heads=MEMORY_HEADS,
        memory_attention_downsample_rate=width
        // int(sd["memory_attention.layers.0.self_attn.q_proj.weight"].shape[0]),
        memory_attention_feed_forward_hidden_size=int(
            sd["memory_attention.layers.0.linear1.weight"].shape[0]
        ),
        memory_attention_rope_feat_sizes=[side, side],
        rope_parameters={"rope_type": "axial", "rope_theta": ROPE_THETA},
        memory_encoder_hidden_size=int(sd["memory_encoder.pix_feat_proj.weight"].shape[0]),
        memory_encoder_output_channels=int(sd["memory_encoder.out_proj.weight"].shape[0]),
        mask_downsampler_embed_dim=int(
            sd[f"memory_encoder.mask_downsampler.encoder.{3 * layers}.weight"].shape[0]
        ),
        mask_downsampler_kernel_size=int(downsampler.shape[-1]),
        mask_downsampler_stride=MASK_DOWNSAMPLER_STRIDE,
        mask_downsampler_padding=int(downsampler.shape[-1]) // 2,
        mask_downsampler_total_stride=MASK_DOWNSAMPLER_TOTAL_STRIDE,
        memory_fuser_num_layers=_count(sd, r"memory_encoder\.fuser\.layers\.(\d+)\..*"),
        memory_fuser_embed_dim=int(dwconv.shape[0]),
        memory_fuser_intermediate_dim=int(
            sd["memory_encoder.fuser.layers.0.pwconv1.weight"].shape[0]
        ),
        memory_fuser_kernel_size=int(dwconv.shape[-1]),
        memory_fuser_padding=int(dwconv.shape[-1]) // 2,
    )


def _downsampler_layers(sd: dict[str, torch.Tensor]) -> int:
    """Conv + LayerNorm + GELU per layer in ``encoder.{3k, 3k+1, 3k+2}``, then the final conv."""
    convs = _count(sd, r"memory_encoder\.mask_downsampler\.encoder\.(\d+)\.weight")
    return (convs - 1) // 2  # each layer has a conv and a norm with weights; the final conv one


def _prepare_video(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`.sam2.prepare`, then the mask downsampler's ``nn.Sequential`` indices -> layers."""
    out = prepare(sd)
    layers = _downsampler_layers(sd)
    prefix = "memory_encoder.mask_downsampler."
    renamed = {}
    for key, value in out.items():
        m = re.fullmatch(re.escape(prefix) + r"encoder\.(\d+)\.(weight|bias)", key)
        if m is None:
            renamed[key] = value
            continue
        index, part = int(m.group(1)), m.group(2)
        if index == 3 * layers:
            renamed[f"{prefix}final_conv.{part}"] = value
        elif index % 3 in (0, 1) and index < 3 * layers:
            kind = "conv" if index % 3 == 0 else "layer_norm"
            renamed[f"{prefix}layers.{index // 3}.{kind}.{part}"] = value
        else:
            renamed[key] = value  # no rule knows it: reported below
    return renamed


def mapped_video_state_dict(
    sd: dict[str, torch.Tensor], where: str = "checkpoint"
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Configure and map an official SAM 2.1 state dict onto ``Sam2VideoModel``, strictly: every
    official tensor placed, every model tensor filled, every shape equal."""
    from transformers import Sam2VideoModel

    variant = detect(sd)
    if variant is None:
        raise InvalidWeightsError(
            f"{where}: expected an official SAM 2.1 checkpoint (image_encoder.trunk.*, "
            f"sam_mask_decoder.*, memory_attention.*), got keys like {', '.join(sorted(sd)[:4])}"
        )
    config = video_config(sd)
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in _prepare_video(sd).items():
        rule = next((r for r in RULES if re.fullmatch(r.pattern, key)), None)
        if rule is None:
            unknown.append(key)
            continue
        match = re.fullmatch(rule.pattern, key)
        for target in (match.expand(t) for t in rule.targets):
            if target in mapped:
                raise InvalidWeightsError(f"{where}: official tensors collide on {target!r}")
            mapped[target] = tensor.contiguous()
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Sam2VideoModel(config).state_dict().items()}
    check_fit(
        mapped,
        expected,
        f"{where}: the official SAM 2.1 {variant} tensors do not fit Sam2VideoModel",
        unknown,
    )
    logger.info("%s: SAM 2.1 %s video model, %d tensors mapped", where, variant, len(mapped))
    return config, mapped


def convert_video_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the ``Sam2VideoModel`` folder ``dst`` (must not exist) from an official ``.pt``:
    ``config.json``, ``model.safetensors``, ``preprocessor_config.json``, ``grounded_seg.json``."""
    from safetensors.torch import save_file

    from .checkpoint import load_official_state_dict

    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst} already exists: choose a new folder (nothing is overwritten)")
    config, mapped = mapped_video_state_dict(load_official_state_dict(src), str(src))
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        config.save_pretrained(tmp)
        seen: set[int] = set()  # tied tensors (the prompt encoder's Fourier matrix) stored apart
        tensors = {}
        for key, value in mapped.items():
            tensors[key] = value.clone() if value.data_ptr() in seen else value
            seen.add(value.data_ptr())
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor_config(), indent=2))
        record = {"converted_from": {"family": "sam2_video", "file": src.name}}
        (tmp / "grounded_seg.json").write_text(json.dumps(record, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(dst)
    return dst


def converted_video_dir(src: str | os.PathLike) -> Path:
    """The converted ``Sam2VideoModel`` folder of an official ``.pt``, converting on first use;
    reused while the file's size and modification time (or else its sha256) are unchanged."""
    import hashlib

    from .cache import cache_root, sha256_of

    src = Path(src).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {src}")
    key = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:12]
    entry = cache_root() / "converted-video" / f"{src.stem}-{key}"
    record_path, model_dir = entry / "source.json", entry / "model"
    stat = src.stat()
    try:
        record = json.loads(record_path.read_text()) if model_dir.is_dir() else {}
    except (OSError, json.JSONDecodeError):
        record = {}
    if record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns:
        return model_dir
    digest = sha256_of(src)
    if record.get("sha256") != digest:
        entry.mkdir(parents=True, exist_ok=True)
        fresh = entry / "model.new"
        shutil.rmtree(fresh, ignore_errors=True)
        convert_video_checkpoint(src, fresh)
        shutil.rmtree(model_dir, ignore_errors=True)
        fresh.rename(model_dir)
        logger.info("converted %s to %s", src, model_dir)
    record = {"path": str(src.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
              "sha256": digest}  # fmt: skip
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return model_dir


def _settings(folder: Path | None) -> Sam2VideoSettings:
    """Size, mean and std from a folder's ``preprocessor_config.json`` (defaults: official)."""
    path = None if folder is None else folder / "preprocessor_config.json"
    if path is None or not path.is_file():
        return Sam2VideoSettings()
    config = json.loads(path.read_text())
    size = config.get("size") or {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if not isinstance(size, dict) or size.get("height") != size.get("width"):
        raise InvalidWeightsError(f"{path}: size: expected a square {{height: S, width: S}}")
    return Sam2VideoSettings(
        int(size["height"]),
        tuple(float(v) for v in config.get("image_mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        tuple(float(v) for v in config.get("image_std", IMAGENET_STD)),  # type: ignore[arg-type]
    )


def load_sam2_video(
    path_or_folder: str | os.PathLike, device: str | torch.device | None = None
) -> tuple[Any, Sam2VideoSettings]:
    """``(Sam2VideoModel, Sam2VideoSettings)`` from an official SAM 2.1 ``.pt`` (converted once,
    cached), a ``Sam2VideoModel`` folder or a hub id of one; loaded strictly in float32 on
    ``device``, in eval mode. ``InvalidWeightsError`` for a ``Sam2Model`` (image-only) folder or
    any other model; ``FileNotFoundError`` for a missing path."""
    from .._loading import load_pretrained
    from .checkpoint import is_official_checkpoint

    if not isinstance(path_or_folder, (str, os.PathLike)):
        raise TypeError(f"video model: expected a path, got {type(path_or_folder).__name__}")
    path = Path(path_or_folder).expanduser()
    if path.is_file() and is_official_checkpoint(path):
        path = converted_video_dir(path)
    folder = path if path.is_dir() else None
    if folder is not None and (folder / "config.json").is_file():
        kind = json.loads((folder / "config.json").read_text()).get("model_type")
        if kind == "sam2":
            raise InvalidWeightsError(
                f"video model {str(path_or_folder)!r}: a Sam2Model folder holds SAM 2's image "
                "model only (no memory attention, memory encoder or object pointers); pass the "
                "official sam2.1_*.pt or a Sam2VideoModel folder (model_type sam2_video)"
            )
    location = folder if folder is not None else path_or_folder
    model, _ = load_pretrained(location, "segmenter", "sam2_video", "Sam2VideoModel", {}, device)
    return model, _settings(folder)

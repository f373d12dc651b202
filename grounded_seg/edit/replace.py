"""``replace``: the masked objects painted over by a text-to-image inpainting model (diffusers).

Optional: ``pip install "grounded-seg[edit]"``. The default model is Stable Diffusion 2's
inpainting checkpoint from the hub (``stabilityai/stable-diffusion-2-inpainting``, about 5 GB;
gated models and other ones by name or local folder with ``inpainter=``). Loaded through
``diffusers.AutoPipelineForInpainting``, which picks the pipeline class the folder names.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import WeightsNotFoundError

DEFAULT_INPAINTER = "stabilityai/stable-diffusion-2-inpainting"


def load_inpainter(
    model: str | os.PathLike = DEFAULT_INPAINTER, device: str | torch.device | None = None
) -> Any:
    """A diffusers inpainting pipeline from a local folder or a hub id, on ``device`` (``None``:
    cuda, then mps, then cpu). Missing weights (offline, never downloaded) raise
    ``WeightsNotFoundError`` saying how to get them."""
    from ..devices import resolve_device

    try:
        from diffusers import AutoPipelineForInpainting
    except ImportError:
        raise ImportError('replace needs diffusers: pip install "grounded-seg[edit]"') from None
    source = os.fspath(model)
    local = os.path.isdir(source)
    if not local and (source.startswith((".", "/", "~")) or source.count("/") != 1):
        raise WeightsNotFoundError(
            f"inpainter: no such folder, and not a hub id (owner/name): {source!r}"
        )
    try:
        pipeline = AutoPipelineForInpainting.from_pretrained(
            source, local_files_only=local, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as err:
        where = "the folder" if local else "the hub cache"
        raise WeightsNotFoundError(
            f"inpainter {source!r} could not be loaded from {where} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); download it once with "
            f"`hf download {source}` (for a gated model, accept its licence on its hub page "
            "first), or pass a local diffusers folder"
        ) from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(resolve_device(device))


def replace(
    rgb: np.ndarray,
    mask: np.ndarray,
    text: str,
    pipeline: Any,
    *,
    seed: int = 0,
    steps: int = 30,
    guidance: float = 7.5,
) -> np.ndarray:
    """``rgb`` (``(H, W, 3)`` uint8) with the ``mask`` (``(H, W)`` bool) region painted as
    ``text`` describes; pixels outside the mask unchanged, same size as the input.

    The pipeline works at its native size (the long side at ``sample_size x vae_scale_factor``,
    512 for Stable Diffusion 2, both sides multiples of 8); its output is resized back and
    composited through the mask. ``seed`` makes it repeatable on one device."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"replace: expected the text of what to paint, got {text!r}")
    height, width = rgb.shape[:2]
    native = int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor)
    scale = native / max(height, width)
    size = (max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8))
    image = Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS)
    region = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).resize(
        size, Image.Resampling.NEAREST
    )
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    painted = pipeline(
        prompt=text.strip(),
        image=image,
        mask_image=region,
        height=size[1],
        width=size[0],
        num_inference_steps=int(steps),
        guidance_scale=float(guidance),
        generator=generator,
        output_type="np",
    ).images[0]
    painted = Image.fromarray((np.clip(painted, 0, 1) * 255).round().astype(np.uint8))
    back = np.asarray(painted.resize((width, height), Image.Resampling.LANCZOS))
    return np.where(mask[..., None], back, rgb).astype(np.uint8)

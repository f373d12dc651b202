"""Devices and dtypes: chosen by argument, never by global state."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the device to run on.

    ``None`` or ``"auto"`` picks CUDA, then Apple MPS, then the CPU. An explicit device that this
    machine does not have raises ``ValueError`` rather than failing later inside torch.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device: expected a str, torch.device or None, got {type(device).__name__}"
        )
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(
            f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        ) from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but torch.cuda.is_available() is False")
    if resolved.type == "cuda" and resolved.index is not None:
        count = torch.cuda.device_count()
        if resolved.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    if resolved.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {device!r} was asked for, but MPS is not available")
    return resolved


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 matmuls natively (AVX512-BF16 or AMX, through oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def resolve_dtype(
    dtype: str | torch.dtype | None, device: torch.device, *, warn: bool = True
) -> torch.dtype:
    """Return the compute dtype: float32 by default; half precision is an opt-in fast path.

    ``bfloat16`` is allowed on CUDA and on the CPU (where a CPU with AVX512-BF16 or AMX runs its
    matmuls several times faster than float32; without them it is slow, and a warning says so);
    ``float16`` on CUDA and MPS. Anything else raises ``ValueError``. Half precision changes the
    answers by rounding: boxes move by a fraction of a pixel and masks by their edge pixels (the
    test suite bounds both against float32 on trained models). ``warn=False`` checks without
    the slow-CPU warning (for a caller whose constructor resolves the same dtype again).
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[key]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a str, torch.dtype or None, got {type(dtype).__name__}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype: expected float32, float16 or bfloat16, got {dtype}")
    if dtype == torch.float16 and device.type not in ("cuda", "mps"):
        raise ValueError(
            f"dtype {dtype} is an opt-in fast path for CUDA and MPS; on {device.type} use "
            "float32, or bfloat16"
        )
    if warn and dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bfloat16():
        logger.warning(
            "bfloat16 on a CPU without AVX512-BF16/AMX is emulated and slower than float32"
        )
    if dtype == torch.bfloat16 and device.type == "mps":
        raise ValueError("dtype torch.bfloat16 is not supported on mps; use float16 or float32")
    return dtype


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """The half-precision fast path: ``torch.autocast`` on ``device`` for bfloat16/float16.

    Matmuls, linear layers and convolutions run in ``dtype``; reductions that lose accuracy in
    half precision (softmax, layer norm) stay float32, and so do the weights. For ``None`` or
    float32 this is a no-op context.
    """
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class ModelHolder:
    """What every model wrapper (proposer, segmenter) shares: the ``device`` and ``dtype`` of its
    ``self.model``'s weights, and ``autocast()``, the context its forward passes run in (autocast
    for a half ``self.compute_dtype``, else nothing)."""

    model: torch.nn.Module
    compute_dtype: torch.dtype | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context the model runs in: autocast for a half ``compute_dtype``, else nothing."""
        return autocast(self.device, self.compute_dtype)

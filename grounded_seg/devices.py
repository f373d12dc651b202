"""Devices and dtypes: chosen by argument, never by global state."""

from __future__ import annotations

import torch

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


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Return the model dtype: float32 by default; float16/bfloat16 only on an accelerator.

    Half precision is an opt-in fast path for CUDA (float16 also for MPS); on the CPU it is slow and
    less accurate, so asking for it there raises ``ValueError``.
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
    if dtype != torch.float32:
        allowed = device.type == "cuda" or (device.type == "mps" and dtype == torch.float16)
        if not allowed:
            raise ValueError(
                f"dtype {dtype} is an opt-in fast path for CUDA; on {device.type} use float32"
            )
    return dtype

"""One walk for the installers that swap a transformers module for an equivalent of ours."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .._equivalents import Equivalent, log_fallback, refusal


def replace_modules(
    model: nn.Module,
    class_name: str | tuple[str, ...],
    installed_type: type[nn.Module],
    make: Callable[[nn.Module], nn.Module],
    equivalent: Equivalent,
) -> int:
    """Replace every submodule of ``model`` whose class is named ``class_name`` (or one of the
    names, for a module transformers carries under several model prefixes) by
    ``make(module)`` (same training mode), without descending into what is replaced or already
    installed (an ``installed_type``). Idempotent.

    Each replaced class must pass ``equivalent``'s fingerprint and self-check
    (:func:`grounded_seg._equivalents.refusal`); the modules of a class that does not stay as
    they are, and one INFO line says why. Returns how many ``installed_type`` modules the model
    holds after the call (0 after a fallback).
    """
    names = (class_name,) if isinstance(class_name, str) else class_name
    found: list[tuple[nn.Module, str, nn.Module]] = []
    installed = _walk(model, names, installed_type, found)
    reasons: dict[type, str | None] = {}
    for parent, name, child in found:
        cls = type(child)
        if cls not in reasons:
            reasons[cls] = refusal(equivalent, child)
        if reasons[cls] is None:
            replacement = make(child)
            replacement.train(child.training)
            setattr(parent, name, replacement)
            installed += 1
    for cls, reason in reasons.items():
        if reason is not None:
            kept = sum(type(child) is cls for _, _, child in found)
            log_fallback(equivalent, cls.__name__, kept, reason)
    return installed


def _walk(
    module: nn.Module,
    names: tuple[str, ...],
    installed_type: type[nn.Module],
    found: list[tuple[nn.Module, str, nn.Module]],
) -> int:
    """Append ``(parent, attribute, child)`` for each module to replace; return how many
    ``installed_type`` modules there are already."""
    installed = 0
    for name, child in module.named_children():
        if isinstance(child, installed_type):
            installed += 1
        elif type(child).__name__ in names:
            found.append((module, name, child))
        else:
            installed += _walk(child, names, installed_type, found)
    return installed

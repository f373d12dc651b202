"""One walk for the installers that swap a transformers module for an equivalent of ours."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_modules(
    model: nn.Module,
    class_name: str | tuple[str, ...],
    installed_type: type[nn.Module],
    make: Callable[[nn.Module], nn.Module],
) -> int:
    """Replace every submodule of ``model`` whose class is named ``class_name`` (or one of the
    names, for a module transformers carries under several model prefixes) by
    ``make(module)`` (same training mode), without descending into what is replaced or already
    installed (an ``installed_type``). Idempotent. Returns how many ``installed_type`` modules
    the model holds after the call."""
    installed = 0
    for name, child in list(model.named_children()):
        if isinstance(child, installed_type):
            installed += 1
        elif type(child).__name__ in ((class_name,) if isinstance(class_name, str) else class_name):
            replacement = make(child)
            replacement.train(child.training)
            setattr(model, name, replacement)
            installed += 1
        else:
            installed += replace_modules(child, class_name, installed_type, make)
    return installed

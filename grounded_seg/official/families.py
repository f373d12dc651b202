"""The official checkpoint families beyond the first two (SAM 2.1, SAM-HQ), each described by one
:class:`OfficialFamily` in its own module (``.sam2``, ``.sam_hq``).

Grounding DINO and SAM 1 keep their rules in ``.keymap`` and ``.checkpoint``; a family here brings
the same pieces (how to recognise its tensors, its config read from them, its rename rules, what
is dropped or filled on purpose, its processor) so that detection, conversion, the converted-model
cache and the strict fill check treat every family alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class OfficialFamily:
    """One official checkpoint family on its transformers model.

    ``detect(state_dict)`` returns the variant (``"hiera-t"``, ``"vit-b"``...) when the tensors are
    this family's, else ``None``; ``config(state_dict)`` the transformers config sized from them;
    ``rules`` (``keymap.Rule``) rename official keys; ``dropped`` and ``no_counterpart`` are
    ``(pattern, reason)`` pairs as in ``.checkpoint``; ``prepare`` (optional) rewrites the state
    dict before renaming (for tensors that are not a plain rename or split);
    ``processor_config()`` is the ``preprocessor_config.json`` the converted folder gets.
    """

    family: str
    model_class: str
    detect: Callable[[dict[str, torch.Tensor]], str | None]
    config: Callable[[dict[str, torch.Tensor]], Any]
    rules: tuple[Any, ...]
    processor_config: Callable[[], dict[str, Any]]
    dropped: tuple[tuple[str, str], ...] = ()
    no_counterpart: tuple[tuple[str, str], ...] = ()
    prepare: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    fill: Callable[[str, tuple[int, ...]], torch.Tensor] | None = field(default=None)


def extra_families() -> tuple[OfficialFamily, ...]:
    """SAM-HQ, then SAM 2.1 (SAM-HQ holds every SAM 1 tensor too, so it is tried before SAM 1)."""
    from .sam2 import SAM2
    from .sam_hq import SAM_HQ

    return (SAM_HQ, SAM2)


def extra_family(name: str) -> OfficialFamily | None:
    """The :class:`OfficialFamily` called ``name``, or ``None`` for Grounding DINO and SAM 1."""
    for family in extra_families():
        if family.family == name:
            return family
    return None

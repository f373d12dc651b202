"""Strict loading of transformers models and their processors, with errors that say what to do.

Two rules beyond strictness:

* **No code from a model folder runs.** Every ``from_pretrained`` gets ``trust_remote_code=False``,
  and a local folder whose JSON files carry an ``auto_map`` (the hook transformers uses to
  import a ``.py`` shipped with the weights) is refused before transformers reads it, with an
  :class:`InvalidWeightsError` instead of transformers' interactive "run the custom code?"
  prompt.
* **One load at a time.** transformers' loading switches process-wide state while it runs
  (the default dtype, the skipped weight initialisation, lazy imports of its own modules), so
  two threads loading at once could build a model with missing weights. Every load holds
  ``LOAD_LOCK``; models, once loaded, are shared freely.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, TypeVar

import torch

from .availability import hub_offline
from .errors import InvalidWeightsError, WeightsNotFoundError
from .progress import quiet_loading_bar
from .registry import ModelSource, weights_dirs

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=torch.nn.Module)

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# reentrant: resolving an official checkpoint converts it, which loads a model too
LOAD_LOCK = threading.RLock()
_NO_REMOTE_CODE = {"trust_remote_code": False}


def _location(source: ModelSource) -> tuple[str, dict[str, Any]]:
    if source.local_dir is not None:
        return str(source.local_dir), {"local_files_only": True, **_NO_REMOTE_CODE}
    if source.hub_id is None:
        assert source.spec is not None  # resolve_model gives a folder, a hub id or a spec
        raise WeightsNotFoundError(
            f"{source.spec.role} {source.label!r}: not found in "
            f"{', '.join(str(d / str(source.spec.bundled)) for d in weights_dirs())}; "
            f"{how_to_get(source)}"
        )
    kwargs: dict[str, Any] = {"local_files_only": hub_offline(), **_NO_REMOTE_CODE}
    if source.revision:
        kwargs["revision"] = source.revision
    return source.hub_id, kwargs


def how_to_get(source: ModelSource) -> str:
    """One sentence telling the user how to put the weights where grounded_seg looks."""
    if source.hub_id is not None:
        revision = f" --revision {source.revision}" if source.revision else ""
        if source.spec is None:  # a hub id passed as such: the Hugging Face cache
            return f"download it once with `hf download {source.hub_id}{revision}`, then run again"
        target = weights_dirs()[0] / source.spec.name
        access = (
            f"request access on https://huggingface.co/{source.hub_id} and log in with "
            "`hf auth login`, then "
            if source.spec.gated
            else ""
        )
        return (
            f"{access}download them once with `hf download {source.hub_id}{revision} --local-dir "
            f"{target}` (or run online once: they are cached), then run again"
        )
    if source.spec is None:
        return (
            "pass a folder holding config.json and model.safetensors (as written by "
            "save_pretrained), a hub id (owner/name), or a registry name from `grounded-seg models`"
        )
    return (
        f"it ships in a clone of grounded_seg under weights/{source.spec.bundled}; "
        f"run from a clone, or train it again with `{source.spec.reproduce}`"
    )


def refuse_remote_code(folder: Path, role: str, label: str) -> None:
    """``InvalidWeightsError`` when a JSON file of ``folder`` asks to import code it ships
    (an ``auto_map`` entry): grounded_seg only runs the model classes transformers itself has."""
    for path in sorted(folder.glob("*.json")):
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # not ours to judge here: the loader reports unreadable files
        if isinstance(content, dict) and "auto_map" in content:
            raise InvalidWeightsError(
                f"{role} {label!r}: {path} names custom code to import (auto_map); "
                "grounded_seg runs no code shipped with a model. Use a folder holding a model "
                "transformers knows (model_type and processor classes of its own)"
            )


def _without_remote_code_advice(err: BaseException) -> str:
    """transformers' message, minus its advice to enable remote code (never ours to give)."""
    text = str(err)
    if "trust_remote_code" not in text:
        return text
    return (
        "it needs custom code shipped with the model (transformers asks for "
        "trust_remote_code); grounded_seg runs no such code"
    )


def _weights_file(folder: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return folder / _WEIGHT_FILES[0]


def load_config(
    source: ModelSource, expected_model_type: str | tuple[str, ...] | None, role: str
) -> Any:
    """The model's config, after checking it is of ``expected_model_type`` (one type, several,
    or ``None``: any)."""
    from transformers import AutoConfig

    location, kwargs = _location(source)
    if source.local_dir is not None and not (source.local_dir / "config.json").is_file():
        raise InvalidWeightsError(
            f"{role} {source.label!r}: {source.local_dir} has no config.json; {how_to_get(source)}"
        )
    try:
        config = AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as err:
        if source.local_dir is not None:
            raise InvalidWeightsError(
                f"{role} {source.label!r}: could not read {source.local_dir / 'config.json'}: "
                f"{_without_remote_code_advice(err)}"
            ) from err
        if "trust_remote_code" in str(err):
            raise InvalidWeightsError(
                f"{role} {source.label!r}: {location}: {_without_remote_code_advice(err)}"
            ) from err
        raise WeightsNotFoundError(
            f"{role} {source.label!r}: weights not found locally (searched "
            f"{', '.join(str(d / source.label) for d in weights_dirs())} and the Hugging Face "
            f"cache) and the hub could not provide {location}: {err}. {how_to_get(source)}"
        ) from err
    expected = (
        (expected_model_type,) if isinstance(expected_model_type, str) else expected_model_type
    )
    if expected is not None and config.model_type not in expected:
        raise InvalidWeightsError(
            f"{role} {source.label!r}: expected a {' or '.join(map(repr, expected))} model, got "
            f"model_type {config.model_type!r} in {location}"
        )
    return config


def model_family(name_or_path: str | os.PathLike, role: str) -> str:
    """The family that runs a model (``"sam"``, ``"sam2"``, ``"grounding_dino"``...), read from its
    registry entry, or from the ``model_type`` of its folder's (or hub id's) ``config.json``:
    what a folder holds picks its class, not the name it was given.

    ``InvalidWeightsError`` when the folder holds a model no family of grounded_seg runs.
    """
    from .registry import MODEL_TYPE_FAMILY, resolve_model

    with LOAD_LOCK:
        source = resolve_model(name_or_path, role)  # type: ignore[arg-type]
        if source.local_dir is None and source.spec is not None:
            return source.spec.family
        config = load_config(source, None, role)
    family = MODEL_TYPE_FAMILY.get(config.model_type)
    if family is None:
        known = ", ".join(sorted(MODEL_TYPE_FAMILY))
        raise InvalidWeightsError(
            f"{role} {source.label!r}: holds a {config.model_type!r} model; grounded_seg runs "
            f"model types {known}"
        )
    return family


def load_model(
    source: ModelSource,
    model_cls: type[ModelT],
    config: Any,
    role: str,
    device: torch.device,
) -> ModelT:
    """Load weights strictly (every tensor used, none missing) in float32; move to device; eval.

    Half precision is not a cast of the weights: components run their forward passes under
    autocast (``grounded_seg.devices.autocast``), so the weights stay float32.
    """
    location, kwargs = _location(source)
    try:
        model, info = model_cls.from_pretrained(
            location, config=config, output_loading_info=True, dtype=torch.float32, **kwargs
        )
    except Exception as err:  # transformers, safetensors and torch raise many kinds here
        where = _weights_file(source.local_dir) if source.local_dir else location
        if source.local_dir is None and isinstance(err, OSError):
            raise WeightsNotFoundError(
                f"{role} {source.label!r}: could not get the weights of {location}: {err}. "
                f"{how_to_get(source)}"
            ) from err
        raise InvalidWeightsError(
            f"{role} {source.label!r}: could not load weights from {where}: "
            f"{type(err).__name__}: {_without_remote_code_advice(err)}. The file may be "
            "truncated or corrupt; "
            f"{how_to_get(source)}"
        ) from err
    problems = {
        key: sorted(str(k) for k in info.get(key, ()))
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    problems = {key: value for key, value in problems.items() if value}
    if problems or info.get("error_msgs"):
        summary = "; ".join(
            f"{len(v)} {k.replace('_', ' ')} (e.g. {', '.join(v[:3])})" for k, v in problems.items()
        )
        raise InvalidWeightsError(
            f"{role} {source.label!r}: the weights in {location} do not fit the model: {summary} "
            f"{info.get('error_msgs') or ''}".strip()
        )
    return model.to(device=device).eval()


def load_component(source: ModelSource, loader: Any, role: str, what: str) -> Any:
    """Load a tokenizer or image processor with ``loader.from_pretrained``, with a clear error."""
    location, kwargs = _location(source)
    try:
        return loader.from_pretrained(location, **kwargs)
    except (OSError, ValueError, TypeError) as err:
        raise InvalidWeightsError(
            f"{role} {source.label!r}: could not load its {what} from {location}: "
            f"{_without_remote_code_advice(err)}. {how_to_get(source)}"
        ) from err


def load_pretrained(
    name_or_path: str | os.PathLike,
    role: str,
    model_type: str | tuple[str, ...],
    model_cls: type[ModelT] | str | dict[str, type[ModelT] | str],
    components: dict[str, Any],
    device: str | torch.device | None = None,
) -> tuple[ModelT, dict[str, Any]]:
    """Resolve a name or path, check its ``model_type``, load the model strictly (float32) on
    ``device``, then each component (``{"tokenizer": "AutoTokenizer", ...}``).

    ``model_type`` may name several accepted types; ``model_cls`` is then a dict from each type to
    the class that loads it (the folder's ``config.json`` decides, not the caller).

    Classes may be given by their name in ``transformers`` (imported under the lock: its lazy
    imports are not thread-safe either). Thread-safe: loads run one at a time.
    """
    from .devices import resolve_device
    from .registry import resolve_model

    torch_device = resolve_device(device)
    with LOAD_LOCK:
        source = resolve_model(name_or_path, role)
        if source.local_dir is not None:
            logger.info("%s %r: loading %s", role, source.label, source.local_dir)
            refuse_remote_code(source.local_dir, role, source.label)
        else:
            logger.info("%s %r: loading %s from the Hugging Face cache or hub", role,
                        source.label, source.hub_id)  # fmt: skip
        config = load_config(source, model_type, role)
        cls = model_cls[config.model_type] if isinstance(model_cls, dict) else model_cls
        with quiet_loading_bar(logger):
            model = load_model(source, _transformers_class(cls), config, role, torch_device)
        loaded = {
            what: load_component(source, _transformers_class(loader), role, what.replace("_", " "))
            for what, loader in components.items()
        }
    return model, loaded


def _transformers_class(cls: Any) -> Any:
    if isinstance(cls, str):
        import transformers

        return getattr(transformers, cls)
    return cls

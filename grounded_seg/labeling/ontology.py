"""What to prompt and what to call it: prompt phrases mapped to data-set classes.

As autodistill's ``CaptionOntology``: ``{"kitten": "cat", "cat": "cat", "puppy": "dog"}``
prompts three phrases and labels two classes. A plain prompt maps each class to itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..prompts import Prompt, PromptInput, normalize_prompt


@dataclass(frozen=True)
class Ontology:
    """``prompt``: the phrases the detector is asked for; ``classes``: the data set's class
    names, in first-seen order (COCO category id ``i + 1``, YOLO class ``i``);
    ``class_of_phrase[j]``: the index in ``classes`` of ``prompt.classes[j]``."""

    prompt: Prompt
    classes: tuple[str, ...]
    class_of_phrase: tuple[int, ...]

    @property
    def merges(self) -> bool:
        """Whether two or more phrases share a class (their boxes are then de-duplicated)."""
        return len(self.classes) < len(self.prompt.classes)

    def to_dict(self) -> dict[str, str]:
        return {
            phrase: self.classes[c]
            for phrase, c in zip(self.prompt.classes, self.class_of_phrase, strict=True)
        }


def ontology_from_prompt(prompt: PromptInput) -> Ontology:
    """Each class of the prompt is its own data-set class."""
    normalized = normalize_prompt(prompt)
    return Ontology(normalized, normalized.classes, tuple(range(len(normalized.classes))))


def ontology_from_mapping(mapping: Mapping[str, Any], source: str = "ontology") -> Ontology:
    """``{phrase: class name}``; ``ValueError`` naming ``source`` for anything else."""
    if not isinstance(mapping, Mapping):
        raise ValueError(
            f"{source}: expected a JSON object mapping phrases to class names, got "
            f"{type(mapping).__name__}"
        )
    if not mapping:
        raise ValueError(f"{source}: maps no phrase to a class; nothing to label")
    phrases, names = [], []
    for phrase, name in mapping.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(
                f"{source}: {phrase!r} must map to a class name (a non-empty string), got {name!r}"
            )
        phrases.append(phrase)
        names.append(" ".join(name.split()))
    try:
        prompt = normalize_prompt(phrases)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: its phrases cannot be a prompt: {err}") from err
    if len(prompt.classes) != len(phrases):
        raise ValueError(f"{source}: two phrases are the same once normalised: {phrases}")
    classes = tuple(dict.fromkeys(names))
    return Ontology(prompt, classes, tuple(classes.index(n) for n in names))


def load_ontology(path: str | os.PathLike) -> Ontology:
    """Read ``{phrase: class name}`` from a JSON file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ontology file not found: {path}")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a JSON ontology ({err})") from err
    return ontology_from_mapping(mapping, str(path))


def resolve_ontology(prompt: PromptInput | Mapping[str, str] | Ontology | None) -> Ontology:
    """A prompt, a ``{phrase: class}`` mapping or an :class:`Ontology` as an ontology."""
    if isinstance(prompt, Ontology):
        return prompt
    if isinstance(prompt, Mapping):
        return ontology_from_mapping(prompt)
    if prompt is None:
        raise ValueError("prompt: expected the classes to label (or an ontology), got None")
    return ontology_from_prompt(prompt)

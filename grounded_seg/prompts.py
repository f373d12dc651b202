"""Prompts: one normalisation, class token spans, long-prompt passes, and phrases from tokens.

The normalisation (``normalize_prompt``) is the only place a prompt is interpreted:

* a ``str`` is lower-cased, split on ``"."`` into classes, each class stripped and its inner
  whitespace collapsed to one space; empty pieces (``"cat. . dog."``) are dropped and repeated
  classes are kept once. ``"the running girl"`` is one class, ``"cat. dog."`` two.
* a list or tuple of ``str`` is a class list: each item is lower-cased, stripped, whitespace
  collapsed and trailing dots removed. Items may not be empty, repeated or contain an inner
  ``"."`` (the index of each class is its ``class_id``, so nothing is dropped or merged silently).
* text must be valid Unicode (no lone surrogates, as undecodable command-line bytes become);
  tokenizers' special tokens typed in a prompt (``"[SEP]"``, ``"<|endoftext|>"``) are read as
  the characters they are, never as the special tokens.

Normalisation is linear in the prompt's length. Error messages quote at most a short excerpt of
an offending class. A class list long enough to need many passes of the text encoder is logged
as a warning (each pass is a full Grounding DINO forward on the image).

Grounding DINO reads the classes as one caption, ``"cat. potted plant."``. Every token of the
caption is mapped back to the class it came from (``TextPass.class_token_spans``), so a box is
always labelled with exactly one of the given classes, never a merged ("cat dog"), partial
("potted") or empty label. A caption longer than the text encoder's window is split into several
passes, whole classes per pass (``plan_text_passes``); a class is never cut.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

PromptInput = str | Sequence[str]

_WHITESPACE = re.compile(r"\s+")
MANY_PASSES = 8  # a prompt needing more passes than this is logged as a warning


def excerpt(text: str, limit: int = 60) -> str:
    """``repr`` of ``text``, cut to ``limit`` characters with its full length said when longer."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def _check_unicode(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{where}: expected text, got characters that are not valid Unicode at position "
            f"{err.start} of {excerpt(text)} (undecodable bytes, e.g. a file name in another "
            "encoding); pass UTF-8 text"
        ) from None


@dataclass(frozen=True)
class Prompt:
    """A normalised prompt: the classes in order; a class's index is its ``class_id``.

    Build it with :func:`normalize_prompt`; built directly, its classes are checked to be what
    normalisation gives (non-empty, lower-case, single-spaced, no ``"."``, no repeats), with a
    ``TypeError``/``ValueError`` otherwise.
    """

    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.classes, tuple):
            if not isinstance(self.classes, list):
                raise TypeError(
                    f"Prompt.classes: expected a tuple of str, got {type(self.classes).__name__}"
                )
            object.__setattr__(self, "classes", tuple(self.classes))
        if not self.classes:
            raise ValueError("Prompt.classes: expected at least one class, got none")
        seen: set[str] = set()
        for index, name in enumerate(self.classes):
            where = f"Prompt.classes[{index}]"
            if not isinstance(name, str):
                raise TypeError(f"{where}: expected str, got {type(name).__name__}")
            _check_unicode(name, where)
            if not name or name != _clean(name) or "." in name:
                raise ValueError(
                    f"{where}: expected a normalised class (non-empty, lower-case, single "
                    f"spaces, no '.'), got {excerpt(name)}; build prompts with normalize_prompt"
                )
            if name in seen:
                raise ValueError(f"{where}: class {excerpt(name)} is repeated")
            seen.add(name)

    @property
    def caption(self) -> str:
        """The caption Grounding DINO reads, e.g. ``"cat. potted plant."``."""
        return build_caption(self.classes)[0]


def _clean(text: str) -> str:
    return _WHITESPACE.sub(" ", text.lower()).strip()


def normalize_prompt(prompt: PromptInput) -> Prompt:
    """Normalise a text prompt or class list into a :class:`Prompt` (rules in the module doc).

    >>> normalize_prompt("Cat.  Potted   Plant.").classes
    ('cat', 'potted plant')
    >>> normalize_prompt(["Black cat", "dog"]).classes
    ('black cat', 'dog')

    Raises ``TypeError`` for anything but a ``str`` or a list/tuple of ``str``, and ``ValueError``
    for an empty prompt, an empty or repeated class in a list, or a class containing ``"."``.
    """
    if isinstance(prompt, Prompt):
        return prompt
    if isinstance(prompt, str):
        _check_unicode(prompt, "prompt")
        classes: dict[str, None] = {}  # ordered and O(1) to look up: linear in the prompt
        for piece in prompt.split("."):
            cleaned = _clean(piece)
            if cleaned and cleaned not in classes:
                classes[cleaned] = None
            elif cleaned:
                logger.info("prompt repeats the class %s; it is kept once", excerpt(cleaned))
        if not classes:
            raise ValueError(f"prompt: expected text naming what to find, got {excerpt(prompt)}")
        return Prompt(tuple(classes))
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError("prompt: expected at least one class, got an empty list")
        indices: dict[str, int] = {}
        for index, item in enumerate(prompt):
            if not isinstance(item, str):
                raise TypeError(
                    f"prompt[{index}]: expected str, got {type(item).__name__} "
                    f"({excerpt(repr(item))})"
                )
            _check_unicode(item, f"prompt[{index}]")
            cleaned = _clean(item).rstrip(".").strip()
            if not cleaned:
                raise ValueError(
                    f"prompt[{index}]: expected a non-empty class name, got {excerpt(item)}"
                )
            if "." in cleaned:
                raise ValueError(
                    f"prompt[{index}]: a class may not contain '.', which separates classes; "
                    f"got {excerpt(item)} (pass the pieces as separate list items)"
                )
            if cleaned in indices:
                raise ValueError(
                    f"prompt[{index}]: class {excerpt(cleaned)} repeats "
                    f"prompt[{indices[cleaned]}]; each class must appear once because its index "
                    "is its class_id"
                )
            indices[cleaned] = index
        return Prompt(tuple(indices))
    raise TypeError(
        f"prompt: expected a str or a list of str, got {type(prompt).__name__} "
        f"({excerpt(repr(prompt))})"
    )


def build_caption(classes: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join classes into ``"a. b."``; also return each class's character span ``[start, end)``."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    position = 0
    for name in classes:
        if parts:
            parts.append(" ")
            position += 1
        spans.append((position, position + len(name)))
        parts.append(name + ".")
        position += len(name) + 1
    return "".join(parts), spans


@dataclass(frozen=True)
class Word:
    """A whole word of the caption: token positions ``[start, end)`` and its text."""

    class_index: int  # index into TextPass.class_ids
    start: int
    end: int
    char_start: int
    char_end: int


@dataclass(frozen=True)
class TextPass:
    """One forward pass of the text encoder over some of the prompt's classes.

    ``class_ids`` are indices into :attr:`Prompt.classes`; ``class_token_spans[i]`` is the token
    range ``[start, end)`` of ``class_ids[i]`` inside ``input_ids`` (which include ``[CLS]``,
    the ``"."`` separators and ``[SEP]``).
    """

    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    caption: str
    input_ids: tuple[int, ...]
    class_token_spans: tuple[tuple[int, int], ...]
    words: tuple[Word, ...]


def _tokenize_caption(
    tokenizer: Any, caption: str
) -> tuple[list[int], list[tuple[int, int]], list]:
    encoding = tokenizer(
        caption, return_offsets_mapping=True, add_special_tokens=True, split_special_tokens=True
    )
    try:
        word_ids = encoding.word_ids()
    except (ValueError, AttributeError) as err:  # slow tokenizers have no word alignment
        raise TypeError(
            f"tokenizer: expected a fast (tokenizers-backed) tokenizer with offsets, got "
            f"{type(tokenizer).__name__}"
        ) from err
    offsets = [tuple(pair) for pair in encoding["offset_mapping"]]
    return list(encoding["input_ids"]), offsets, word_ids


def _make_pass(tokenizer: Any, classes: Sequence[str], class_ids: Sequence[int]) -> TextPass:
    caption, char_spans = build_caption(classes)
    input_ids, offsets, word_ids = _tokenize_caption(tokenizer, caption)
    token_spans: list[tuple[int, int]] = []
    for char_start, char_end in char_spans:
        positions = [
            i
            for i, (start, end) in enumerate(offsets)
            if word_ids[i] is not None and end > start and start >= char_start and end <= char_end
        ]
        if not positions:
            raise ValueError(f"class {excerpt(caption[char_start:char_end])} produced no tokens")
        token_spans.append((positions[0], positions[-1] + 1))
    words: list[Word] = []
    i = 0
    while i < len(input_ids):
        if word_ids[i] is None:
            i += 1
            continue
        j = i
        while j + 1 < len(input_ids) and word_ids[j + 1] == word_ids[i]:
            j += 1
        owner = [k for k, (s, e) in enumerate(token_spans) if s <= i and j < e]
        if owner:
            words.append(Word(owner[0], i, j + 1, offsets[i][0], offsets[j][1]))
        i = j + 1
    return TextPass(
        tuple(class_ids),
        tuple(classes),
        caption,
        tuple(input_ids),
        tuple(token_spans),
        tuple(words),
    )


def plan_text_passes(prompt: Prompt, tokenizer: Any, max_text_len: int) -> list[TextPass]:
    """Split the prompt's classes into as few passes as fit ``max_text_len`` tokens each.

    Classes keep their order and are never cut. A single class too long for one pass raises
    ``ValueError`` saying how long it is and what the window is.
    """
    # one batched call (10,000 classes: one call, not 10,000); special tokens as plain text
    encoded = tokenizer(list(prompt.classes), add_special_tokens=False, split_special_tokens=True)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    budget = max_text_len - 2  # [CLS] and [SEP]
    groups: list[list[int]] = []
    used = budget + 1
    for index, length in enumerate(lengths):
        need = length + 1  # the class and its "."
        if need > budget:
            raise ValueError(
                f"class {excerpt(prompt.classes[index])} is {length} tokens long; the text "
                f"encoder reads at most {max_text_len} tokens per pass ({budget - 1} for one "
                "class). Shorten it."
            )
        if used + need > budget:
            groups.append([])
            used = 0
        groups[-1].append(index)
        used += need
    passes = [_make_pass(tokenizer, [prompt.classes[i] for i in g], g) for g in groups]
    for text_pass in passes:
        if len(text_pass.input_ids) > max_text_len:  # the tokenizer disagreed with the count
            raise RuntimeError(
                f"caption {text_pass.caption!r} tokenised to {len(text_pass.input_ids)} tokens, "
                f"more than the {max_text_len} planned"
            )
    if len(passes) > MANY_PASSES:
        logger.warning(
            "%d classes need %d passes of the text encoder: every image costs %d Grounding DINO "
            "forward passes (only the image backbone is shared); fewer classes per call are "
            "faster", len(prompt.classes), len(passes), len(passes)
        )  # fmt: skip
    elif len(passes) > 1:
        logger.info("prompt of %d classes split into %d passes", len(prompt.classes), len(passes))
    return passes


def class_scores(token_probs: torch.Tensor, text_pass: TextPass) -> torch.Tensor:
    """Per-class score of each query: the highest token probability inside the class's span.

    ``token_probs`` is ``(Q, T)`` (sigmoid of the logits); the result is ``(Q, C)`` for the
    ``C = len(text_pass.class_ids)`` classes of the pass.
    """
    columns = [
        token_probs[:, start:end].max(dim=-1).values for start, end in text_pass.class_token_spans
    ]
    return torch.stack(columns, dim=-1)


def phrase_for(
    token_probs: torch.Tensor, text_pass: TextPass, class_index: int, text_threshold: float
) -> str:
    """The whole words of one class whose best token probability exceeds ``text_threshold``.

    ``token_probs`` is ``(T,)`` for one query. Words are whole (``"pottedplant"``, never
    ``"pot"``) and in caption order, adjacent words keep the caption's spacing (``"black-cat"``);
    when no word passes, the class name itself is returned, so a phrase is never empty.
    """
    phrase = ""
    previous: Word | None = None
    for word in text_pass.words:
        if word.class_index != class_index:
            continue
        if float(token_probs[word.start : word.end].max()) > text_threshold:
            if previous is None:
                phrase = text_pass.caption[word.char_start : word.char_end]
            elif previous.end == word.start:  # adjacent: keep the caption's own spacing
                phrase += text_pass.caption[previous.char_end : word.char_end]
            else:
                phrase += " " + text_pass.caption[word.char_start : word.char_end]
            previous = word
    return phrase or text_pass.class_names[class_index]

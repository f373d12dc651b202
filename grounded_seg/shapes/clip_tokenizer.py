"""An offline byte-level BPE tokenizer for CLIPs trained on the shapes world.

Nothing here downloads anything. The tokenizer is a byte-level BPE like CLIP's own: the 256
byte-unicode characters (GPT-2's ``bytes_to_unicode``), each also with the ``</w>`` end-of-word
suffix, merges that spell each word of :data:`MERGED_WORDS` as a single token, then
``<|startoftext|>`` and ``<|endoftext|>`` as the last two ids. Any text tokenizes without unknown
tokens (a word without merges splits into its bytes).

>>> tokenizer = write_clip_tokenizer("my_clip/")                          # doctest: +SKIP
>>> tokenizer.tokenize("a photo of a purple star.")                       # doctest: +SKIP
['a</w>', 'photo</w>', 'of</w>', 'a</w>', 'purple</w>', 'star</w>', '.</w>']
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .world import COLORS, SHAPES

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

MERGED_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            # the CLIP route's template "a photo of a {}." and its background texts
            *"a an the of photo picture background plain texture".split(),
            # the shapes world
            *COLORS,
            *SHAPES,
            *"shape on grey gray".split(),
        ]
    )
)
"""Words spelled as one token each (every word of the shapes world's phrases and the route's
template ``"a photo of a {}."`` and background texts ``"background"``, ``"a plain background"``,
``"a texture"``)."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _word_symbols(word: str) -> list[str]:
    """The byte-unicode symbols of one word, the last one with the ``</w>`` suffix."""
    table = bytes_to_unicode()
    symbols = [table[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    return symbols


def bpe(word: str, merges: Sequence[tuple[str, str]]) -> list[str]:
    """The pieces of one lower-case ``word`` under ``merges`` (lower rank first), as CLIP's BPE."""
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    pieces = _word_symbols(word)
    while len(pieces) > 1:
        rank = min(ranks.get(pair, len(ranks)) for pair in itertools.pairwise(pieces))
        if rank == len(ranks):
            break
        first, second = merges[rank]
        merged, i = [], 0
        while i < len(pieces):
            if i + 1 < len(pieces) and pieces[i] == first and pieces[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(pieces[i])
                i += 1
        pieces = merged
    return pieces


def build_vocab_and_merges(
    words: Sequence[str] = MERGED_WORDS,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (token -> id) and the merge list that spell each of ``words`` as one token.

    Words are added in order: a word is first split with the merges so far, then merges joining its
    pieces left to right are appended. Appended merges rank after every earlier one, so they never
    change how an earlier word is split: each word of ``words`` ends as exactly one token.
    """
    characters = list(bytes_to_unicode().values())
    tokens = characters + [f"{c}</w>" for c in characters]
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    for word in words:
        if not word or word != word.lower() or len(word.split()) != 1:
            raise ValueError(f"words: expected lower-case single words, got {word!r}")
        pieces = bpe(word, merges)
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            merged = pieces[0] + pieces[1]
            if merged not in known:
                tokens.append(merged)
                known.add(merged)
            pieces = bpe(word, merges)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: str | os.PathLike, words: Sequence[str] = MERGED_WORDS) -> Any:
    """Write ``vocab.json`` and ``merges.txt`` to ``folder``; load, check and save a CLIPTokenizer.

    Returns the ``transformers.CLIPTokenizer`` (also saved with ``save_pretrained`` in ``folder``,
    so ``AutoTokenizer.from_pretrained(folder)`` loads it offline). Every word of ``words`` is
    checked to be one token.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(words)
    vocab_file = folder / "vocab.json"
    merges_file = folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file))
    text = " ".join(words)
    ids = tokenizer(text).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    if ids[0] != vocab[BOS_TOKEN] or ids[-1] != vocab[EOS_TOKEN]:
        raise RuntimeError(f"the tokenizer does not frame texts with {BOS_TOKEN}/{EOS_TOKEN}")
    if tokens[1:-1] != [f"{w}</w>" for w in words]:
        raise RuntimeError(f"some words are not single tokens: {tokens}")
    if tokenizer.decode(ids, skip_special_tokens=True) != text or len(tokenizer) != len(vocab):
        raise RuntimeError("the tokenizer does not round-trip its own words")
    tokenizer.save_pretrained(folder)
    return tokenizer

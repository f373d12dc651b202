"""A tiny CLIP built offline from a config, saved in the Hugging Face format.

Nothing here downloads anything. The tokenizer is a byte-level BPE like CLIP's own: the 256
byte-unicode characters (GPT-2's ``bytes_to_unicode``), each also with the ``</w>`` end-of-word
suffix, a few merges for the words of the generated shape data set, then ``<|startoftext|>`` and
``<|endoftext|>`` as the last two ids. Any text tokenizes without unknown tokens (a word without
merges splits into its bytes).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

IMAGE_SIZE = 32  # pixels, square; 4 x 4 patches of 8 pixels
MAX_TEXT_LEN = 32  # tokens, <|startoftext|> and <|endoftext|> included

MERGED_WORDS = (
    "a an the of photo picture red green blue yellow circle square triangle shape on grey gray"
).split()

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


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


def build_vocab_and_merges(words: tuple[str, ...] | list[str] = MERGED_WORDS):
    """The vocabulary (token -> id) and the merge list that spell each of ``words`` as one token.

    Each word gets a left-to-right chain of merges (``r e`` -> ``re``, ``re d</w>`` -> ``red</w>``);
    when the chains of two words interfere a word may end as a few pieces, never as unknowns.
    """
    characters = list(bytes_to_unicode().values())
    tokens = characters + [f"{c}</w>" for c in characters]
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    for word in words:
        parts = [*word[:-1], f"{word[-1]}</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            merged = parts[0] + parts[1]
            if pair not in merges:
                merges.append(pair)
            if merged not in known:
                tokens.append(merged)
                known.add(merged)
            parts = [merged, *parts[2:]]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: Path):
    """Write ``vocab.json`` and ``merges.txt`` to ``folder``; load, check, save a CLIPTokenizer."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges()
    vocab_file = folder / "vocab.json"
    merges_file = folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file))
    ids = tokenizer("a red circle").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert ids[0] == vocab[BOS_TOKEN] and ids[-1] == vocab[EOS_TOKEN], tokens
    assert tokens[1:-1] == ["a</w>", "red</w>", "circle</w>"], tokens
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red circle"
    assert len(tokenizer) == len(vocab)
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_clip_config(vocab_size: int | None = None):
    """A 62k-parameter CLIP: 2-layer text and vision towers of width 32, patch 8, 32 x 32 pixels."""
    from transformers import CLIPConfig

    vocab, _ = build_vocab_and_merges()
    text = dict(
        vocab_size=vocab_size or len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TEXT_LEN,
        projection_dim=32,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
        projection_dim=32,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny CLIP, its tokenizer and image processor (side 32) in ``folder``.

    ``AutoProcessor``, ``AutoTokenizer`` and ``AutoImageProcessor`` load it offline.
    """
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    folder = Path(folder)
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config()).eval()
    model.save_pretrained(folder)
    tokenizer = write_clip_tokenizer(folder)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder

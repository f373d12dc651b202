"""Image-caption pairs of a user's own domain, and batches free of repeated captions."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..images import load_image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
"""File name endings (any letter case) that :class:`ImageCaptionFolder` treats as images."""

CAPTIONS_FILE = "captions.jsonl"


class ImageCaptionFolder:
    """Image-caption pairs of a user's own domain, read from a folder.

    Captions come from one of two places:

    * ``root/captions.jsonl`` (when present it wins, and only the images it lists are used): one
      JSON object per line, ``{"file": "relative/path.png", "caption": "a red circle"}``, the path
      relative to ``root``; blank lines are ignored; an image may be listed more than once, with
      different captions.
    * otherwise a sidecar ``<stem>.txt`` next to each image found under ``root`` (recursively,
      sorted by path): ``cat_01.jpg`` is captioned by ``cat_01.txt`` (UTF-8).

    Images are files ending in one of :data:`IMAGE_EXTENSIONS` (any letter case). Captions are
    stripped of surrounding whitespace.

    Raises (from the constructor):
        NotADirectoryError / FileNotFoundError: ``root`` is not a folder.
        FileNotFoundError: a ``captions.jsonl`` line names an image that does not exist.
        ValueError: no pairs at all; an image without its ``.txt``; an empty caption; a
            ``captions.jsonl`` line that is not a JSON object with string ``file`` and
            ``caption``, or whose file is not an image. Every message names the file (and line).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root: expected a folder path, got {type(root).__name__}")
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise FileNotFoundError(f"image-caption folder not found: {self.root}")
        if not self.root.is_dir():
            raise NotADirectoryError(f"expected an image-caption folder, got a file: {self.root}")
        jsonl = self.root / CAPTIONS_FILE
        self.source = "jsonl" if jsonl.is_file() else "sidecar"
        pairs = self._read_jsonl(jsonl) if self.source == "jsonl" else self._read_sidecars()
        if not pairs:
            where = jsonl if self.source == "jsonl" else self.root
            extensions = ", ".join(IMAGE_EXTENSIONS)
            layout = '{"file": "relative/path.png", "caption": "..."}'
            raise ValueError(
                f"no image-caption pairs in {where}: expected images ({extensions}) each with a "
                f"sidecar <stem>.txt caption, or a {CAPTIONS_FILE} with lines {layout}"
            )
        self.files: list[Path] = [path for path, _ in pairs]
        self.captions: list[str] = [caption for _, caption in pairs]

    def _read_sidecars(self) -> list[tuple[Path, str]]:
        images = sorted(
            p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        pairs = []
        for image in images:
            sidecar = image.with_suffix(".txt")
            if not sidecar.is_file():
                raise ValueError(
                    f"image {image} has no caption: expected {sidecar.name} next to it "
                    f"(or a {CAPTIONS_FILE} in {self.root})"
                )
            caption = sidecar.read_text(encoding="utf-8").strip()
            if not caption:
                raise ValueError(f"empty caption in {sidecar} (for image {image})")
            pairs.append((image, caption))
        return pairs

    def _read_jsonl(self, jsonl: Path) -> list[tuple[Path, str]]:
        pairs = []
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{jsonl}, line {number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON: {err}") from err
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
            file, caption = entry.get("file"), entry.get("caption")
            if not isinstance(file, str) or not file.strip():
                raise ValueError(f'{where}: expected a "file" string (a path relative to root)')
            if not isinstance(caption, str):
                raise ValueError(f'{where}: expected a "caption" string for {file!r}')
            if Path(file).is_absolute():
                raise ValueError(f"{where}: expected a path relative to {self.root}, got {file!r}")
            image = self.root / file
            if image.suffix.lower() not in IMAGE_EXTENSIONS:
                raise ValueError(
                    f"{where}: {file!r} is not an image: expected one of {IMAGE_EXTENSIONS}"
                )
            if not image.is_file():
                raise FileNotFoundError(f"{where}: image {file!r} not found at {image}")
            if not caption.strip():
                raise ValueError(f"{where}: empty caption for image {file!r}")
            pairs.append((image, caption.strip()))
        return pairs

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        """Pair ``index``: the RGB uint8 ``(H, W, 3)`` image (:func:`load_image`), its caption."""
        return load_image(self.files[index]), self.captions[index]

    def __repr__(self) -> str:
        return f"ImageCaptionFolder({str(self.root)!r}, {len(self)} pairs from {self.source})"


def caption_key(caption: str) -> str:
    """The form in which two captions count as the same text: lower case, whitespace collapsed.

    This is what CLIP's tokenizer sees (it lower-cases and collapses whitespace), so two captions
    with the same key get the same embedding.
    """
    return " ".join(caption.lower().split())


def caption_batches(
    captions: Sequence[str],
    batch_size: int,
    *,
    seed: int | None = None,
    groups: Sequence[Any] | None = None,
) -> list[list[int]]:
    """Indices of ``captions`` in shuffled batches that never hold the same caption twice.

    With the labels ``arange(N)`` of :func:`contrastive_loss`, two pairs of one batch with the same
    caption (compared by :func:`caption_key`) are false negatives: the loss would push apart a
    caption and an image that match. Pairs are therefore dealt, in an order shuffled by ``seed``
    (``None``: kept in order), into the first batch that has room and holds neither their caption
    nor their ``groups`` value (the image file, so that one image captioned twice is not its own
    negative either). A duplicate is thus moved to another batch, never dropped; only batches of a
    single pair are left out (a batch of one has no negatives: its loss is 0). With ``K`` distinct
    captions a batch holds at most ``K`` pairs.

    Returns:
        A list of batches, each a list of indices into ``captions`` (at least 2, at most
        ``batch_size``).
    """
    if batch_size < 2:
        raise ValueError(f"batch_size: expected an int >= 2, got {batch_size!r}")
    if groups is not None and len(groups) != len(captions):
        raise ValueError(f"groups: expected {len(captions)} values, got {len(groups)}")
    order = list(range(len(captions)))
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(captions), generator=generator).tolist()
    open_batches: list[tuple[list[int], set[Any]]] = []
    full: list[list[int]] = []
    for index in order:
        keys = {("caption", caption_key(captions[index]))}
        if groups is not None:
            keys.add(("group", groups[index]))
        for slot, (batch, taken) in enumerate(open_batches):
            if taken.isdisjoint(keys):
                batch.append(index)
                taken.update(keys)
                if len(batch) == batch_size:
                    full.append(batch)
                    del open_batches[slot]
                break
        else:
            open_batches.append(([index], set(keys)))
    return full + [batch for batch, _ in open_batches if len(batch) >= 2]

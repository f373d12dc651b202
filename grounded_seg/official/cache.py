"""Converted official checkpoints, cached as safetensors beside the sha256 of their source.

The cache lives in ``$GROUNDED_SEG_CACHE/converted`` (default ``~/.cache/grounded_seg``), one
folder per source path: ``model/`` (the converted model folder) and ``source.json`` (the source's
path, size, modification time and sha256). A second load whose source has the same size and
modification time reuses ``model/`` at once; otherwise the source is hashed again, and a changed
hash converts it again. The user's ``.pth`` is only ever read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from .convert import convert_checkpoint

logger = logging.getLogger(__name__)

CACHE_ENV = "GROUNDED_SEG_CACHE"


def cache_root() -> Path:
    """``$GROUNDED_SEG_CACHE`` or ``~/.cache/grounded_seg``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "grounded_seg"


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 23) -> str:
    """The hex sha256 of a file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _entry(src: Path) -> Path:
    key = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:12]
    return cache_root() / "converted" / f"{src.stem}-{key}"


def converted_model_dir(src: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> Path:
    """The converted model folder for an official ``.pth``, converting it on first use.

    ``tokenizer`` is passed to :func:`convert_checkpoint` (Grounding DINO only).
    """
    src = Path(src).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {src}")
    entry = _entry(src)
    record_path, model_dir = entry / "source.json", entry / "model"
    stat = src.stat()
    record = {}
    if record_path.is_file() and model_dir.is_dir():
        try:
            record = json.loads(record_path.read_text())
        except json.JSONDecodeError:
            record = {}
        if record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns:
            logger.debug("%s: cached conversion in %s", src, model_dir)
            return model_dir
    digest = sha256_of(src)
    if record.get("sha256") == digest and model_dir.is_dir():
        logger.info("%s: touched but unchanged (same sha256); reusing %s", src, model_dir)
    else:
        if record:
            logger.info("%s changed since its conversion (sha256 differs): converting again", src)
        entry.mkdir(parents=True, exist_ok=True)
        fresh = entry / "model.new"
        if fresh.exists():
            shutil.rmtree(fresh)
        convert_checkpoint(src, fresh, tokenizer=tokenizer, source_sha256=digest)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        fresh.rename(model_dir)
    record = {
        "path": str(src.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": digest,
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return model_dir

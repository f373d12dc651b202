"""Which images a labelling run reads: a folder (recursive), a glob, a text file of paths, or a
list; each with the name it gets in the data set (its path relative to a common root)."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
)
"""File extensions a folder or glob is searched for (case-insensitive)."""

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class ImageSource:
    """One input image: ``path`` where it is read from, ``name`` its relative POSIX path in the
    data set (``images/<name>``, ``labels/<stem>.txt``, ...), ``index`` its place in the sorted
    input (the data set's image id is ``index + 1``)."""

    index: int
    path: Path
    name: str


@dataclass(frozen=True)
class ImageSet:
    """The images of a run, the folders they were found under (``roots``: nothing is ever
    written there) and the folder their names are relative to (``base``)."""

    sources: tuple[ImageSource, ...]
    roots: tuple[Path, ...]
    description: str
    base: Path  # the folder names are relative to


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _folder(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return [p for p in found if _is_image(p) and p.is_file()]


def _listed(list_file: Path) -> list[Path]:
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{list_file}: expected a text file of image paths ({err})") from err
    paths = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line).expanduser()
            paths.append(path if path.is_absolute() else list_file.parent / path)
    return paths


def _common_root(paths: Sequence[Path]) -> Path:
    parents = [str(p.parent.resolve()) for p in paths]
    return Path(os.path.commonpath(parents)) if parents else Path(".")


def collect_images(images: str | os.PathLike | Sequence[str | os.PathLike]) -> ImageSet:
    """The images to label, sorted by name, each named relative to its root.

    ``images`` is a folder (searched recursively for :data:`IMAGE_EXTENSIONS`; hidden files and
    folders skipped), a glob (``"data/**/*.jpg"``, ``**`` recursive), a text file with one path
    per line (relative to the file's folder; blank lines and ``#`` comments skipped; listed
    files are not checked here: a missing one is reported as failed by the run), or a list of
    paths. Raises ``FileNotFoundError`` for a folder or list that does not exist and
    ``ValueError`` when nothing is found, before any model loads.
    """
    if isinstance(images, (str, os.PathLike)):
        text = os.fspath(images)
        path = Path(text).expanduser()
        if path.is_dir():
            found, roots = _folder(path), (path.resolve(),)
            what = f"folder {path}"
            if not found:
                raise ValueError(
                    f"{path}: no images in this folder or below (looked for "
                    f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
        elif path.is_file() and not _is_image(path):
            found, roots, what = _listed(path), (), f"list {path}"
            if not found:
                raise ValueError(f"{path}: the list names no images")
        elif path.is_file():
            found, roots, what = [path], (), f"image {path}"
        elif _GLOB_CHARS & set(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            roots, what = (), f"glob {text!r}"
            if not found:
                raise ValueError(f"{text!r}: no files match this pattern")
            fixed = _fixed_part(path)
            if fixed.is_dir():  # names relative to the pattern's folder, as a folder's are
                return _named(found, fixed.resolve(), (), what)
        else:
            raise FileNotFoundError(f"{path}: no such folder, image, list file or pattern")
    elif isinstance(images, Sequence) and not isinstance(images, bytes):
        found, roots, what = [Path(p) for p in images], (), f"{len(images)} listed paths"
        if not found:
            raise ValueError("images: expected at least one image, got an empty list")
    else:
        raise TypeError(
            "images: expected a folder, a glob, a text file of paths or a list of paths, got "
            f"{type(images).__name__}"
        )
    return _named(found, roots[0] if roots else _common_root(found), roots, what)


def _fixed_part(pattern: Path) -> Path:
    """The leading folders of a glob pattern that hold no wildcard."""
    parts = []
    for part in pattern.parts:
        if _GLOB_CHARS & set(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _named(found: Sequence[Path], root: Path, roots: tuple[Path, ...], what: str) -> ImageSet:
    named: dict[str, Path] = {}
    for path in found:
        try:
            name = path.resolve().relative_to(root).as_posix()
        except ValueError:  # outside the common root (a symlinked folder): its own name
            name = path.name
        if name in named:
            if named[name].resolve() != path.resolve():
                raise ValueError(
                    f"two images would have the same name {name!r} in the data set: "
                    f"{named[name]} and {path}"
                )
            logger.warning("%s is listed twice; labelled once", path)
            continue
        named[name] = path
    ordered = sorted(named.items())
    sources = tuple(ImageSource(i, path, name) for i, (name, path) in enumerate(ordered))
    folders = roots or tuple(sorted({p.parent.resolve() for p in named.values()}))
    return ImageSet(sources, folders, what, root)

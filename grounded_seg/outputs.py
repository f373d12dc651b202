"""Writing files so that nothing the user has is lost: atomic, never over the input, checked early.

Every file grounded_seg writes (annotated images, JSON, masks, training checkpoints) goes through
:func:`atomic_write`: the bytes go to a temporary file in the target's own folder, are flushed to
disk, and only then take the target's name in one rename. A run killed at any moment (SIGKILL,
Ctrl-C, a full disk) leaves either the old file or the complete new one, never half of one; at
worst a hidden ``.NAME.*.tmp`` stays behind.

Without ``overwrite`` the final step is a hard link, which fails if the name was taken meanwhile
(by another process, after the checks): an existing file is never replaced silently. With it,
``os.replace`` swaps the name; a symlink at the target is replaced itself, never written through.

:func:`check_output` runs before any model loads, so a run that could not save its result fails
in seconds, not after inference: the folder must exist and take a new file, the target must not
be the input (compared by inode, so a hard link to the input counts) and, if it exists, must be a
regular file or a link that ``overwrite`` allows replacing.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import OutputError

Writer = Callable[[IO[bytes]], None]


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read, which sets it back at once
    os.umask(mask)
    return mask


def same_file(a: Path, b: Path) -> bool:
    """Whether two existing paths are one file (same device and inode: hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(
    path: str | os.PathLike,
    *,
    inputs: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
    flag: str = "",
) -> Path:
    """Check, before any work, that ``path`` can be written; return it as a ``Path``.

    ``inputs`` are files that must never be written over; ``flag`` names the option in messages
    (``"-o"``, ``"--json"``). Raises ``ValueError`` (bad target, exists without ``overwrite``) or
    :class:`OutputError` (the folder does not take new files).
    """
    target = Path(path)
    label = f"{flag} {target}".strip()
    for given in inputs:
        source = Path(given)
        if source.exists() and (same_file(target, source) or target.resolve() == source.resolve()):
            raise ValueError(f"{label}: that is the input {source}; refusing to write over it")
    if os.path.lexists(target):
        mode = os.lstat(target).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise ValueError(f"{label}: exists and is not a regular file; name a new file")
        if not overwrite:
            raise ValueError(f"{label}: exists; pass --overwrite to replace it")
    folder = target.parent
    if not folder.is_dir():
        raise ValueError(f"{label}: the folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".check")
    except OSError as err:
        raise OutputError(f"{label}: cannot create files in {folder}: {err.strerror}") from err
    os.close(fd)
    os.unlink(probe)
    return target


@contextlib.contextmanager
def _staged(target: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """A temporary file beside ``target``, removed on any failure (Ctrl-C included)."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle, temporary
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _stage(target: Path, write: Writer) -> Path:
    """Write ``target``'s new content into a temporary file beside it; return that file."""
    with _staged(target) as (handle, temporary):
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give a normal file's mode
    return temporary


def _commit(temporary: Path, target: Path, overwrite: bool) -> None:
    """Give ``temporary`` the name ``target`` in one step (see the module doc)."""
    if overwrite:
        os.replace(temporary, target)
        return
    try:
        os.link(temporary, target)
    except FileExistsError:
        temporary.unlink(missing_ok=True)
        raise
    except OSError as err:  # a file system without hard links: exclusive create, then replace
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            temporary.unlink(missing_ok=True)
            raise
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.replace(temporary, target)
    else:
        temporary.unlink()


def atomic_write(path: str | os.PathLike, write: Writer, *, overwrite: bool = False) -> Path:
    """Write a file atomically: ``write(handle)`` fills a temporary file, which then takes the
    name ``path`` (see the module doc). Without ``overwrite`` an existing ``path`` is never
    replaced (``OutputError``). Any failure raises :class:`OutputError` naming the file and
    leaves ``path`` as it was."""
    return write_all([(path, write)], overwrite=overwrite)[0]


def write_all(
    outputs: Sequence[tuple[str | os.PathLike, Writer]], *, overwrite: bool = False
) -> list[Path]:
    """Write several files all or nothing, as far as a file system allows.

    Every file is first written in full to its temporary; if any of that fails, no target is
    touched. Then each takes its name; if one of those steps fails, the files this call created
    are removed again (a file it replaced under ``overwrite`` stays replaced).
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, write in outputs:
            target = Path(path)
            try:
                staged.append((_stage(target, write), target))
            except OSError as err:
                raise OutputError(f"could not write {target}: {_reason(err)}") from err
        created: list[Path] = []
        for temporary, target in staged:
            existed = os.path.lexists(target)
            try:
                _commit(temporary, target, overwrite)
            except FileExistsError as err:
                _remove(created)
                raise OutputError(
                    f"{target} appeared while this run was working; not replaced (pass "
                    "--overwrite to replace it)"
                ) from err
            except OSError as err:
                _remove(created)
                raise OutputError(f"could not write {target}: {_reason(err)}") from err
            if not existed:
                created.append(target)
        return [target for _, target in staged]
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


# ----------------------------------------------------------------- what goes into the files


def image_format(path: str | os.PathLike, flag: str = "-o") -> str:
    """The PIL format a file name asks for, checked by encoding a 1 x 1 image with it: an
    extension PIL only reads (``.psd``) or has no encoder for (``.h5``) fails here, early."""
    from PIL import Image

    extension = Path(path).suffix.lower()
    name = Image.registered_extensions().get(extension)
    if name is None:
        raise ValueError(
            f"{flag} {path}: expected an image file name (.png, .jpg, .webp, .tif, ...), got "
            f"extension {extension or '(none)'!r}"
        )
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=name)
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(
            f"{flag} {path}: PIL cannot write {name} files ({err}); use .png or .jpg"
        ) from err
    return name


def image_writer(image: Any, format_name: str) -> Writer:
    """A writer that encodes a PIL image (or a uint8 array) in ``format_name``."""
    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)

    def write(handle: IO[bytes]) -> None:
        picture.save(handle, format=format_name)

    return write


def bytes_writer(data: bytes) -> Writer:
    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    return write

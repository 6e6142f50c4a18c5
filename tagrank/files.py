"""Writing files so that a kill, a full disk or a read-only folder never leaves half of one, and says so in one line.

Every file a run writes for a user or for a later run (caches, checkpoints, metrics, predictions, exported
models, reports) goes through :func:`atomic_write`: a temporary file beside the target, renamed into place.
A folder's fault (full, read-only, not writable) becomes :class:`CannotWrite` naming the path and what to
do; :func:`check_writable` asks the same before any work is done. The folder helpers say where a folder
cannot be made (:func:`file_in_the_way`) and make the temporary folder a cache folder is built in.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tagrank.errors import TagrankError


class CannotWrite(TagrankError):
    """A file that cannot be written where it must go: the folder is full, read-only, or not a folder."""


# Why a write fails where the fault is the folder's, not tagrank's: said in words, with what to do.
FOLDER_FAULTS = {
    errno.ENOSPC: "is full (no space left on the device)",
    errno.EDQUOT: "is over its disk quota",
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "is not writable (permission denied)",
    errno.EPERM: "is not writable (operation not permitted)",
}
# torch.save and TorchScript's writer report a full disk as "unexpected pos 8576 vs 8406": a write
# that failed this close to the end of the space is taken as the disk being full.
NEARLY_FULL_BYTES = 1 << 20


def cannot_write(path: Path, err: OSError, hint: str = "") -> CannotWrite:
    """One line for an OS error while writing ``path``: the folder and what is wrong with it, and ``hint``."""
    path = Path(path)
    fault = FOLDER_FAULTS.get(err.errno)
    reason = f"its folder {path.parent} {fault}" if fault else (err.strerror or str(err))
    return CannotWrite(f"cannot write {path}: {reason}" + (f"; {hint}" if hint else ""))


@contextmanager
def writing(path: Path, hint: str = "") -> Iterator[None]:
    """Turn a folder's fault (full, read-only, not writable) while writing ``path`` into :class:`CannotWrite`;
    any other error passes through as it is."""
    try:
        yield
    except OSError as err:
        if err.errno not in FOLDER_FAULTS:
            raise
        raise cannot_write(path, err, hint) from err


def check_writable(path: Path, key: str) -> Path:
    """Before any work: can ``path`` be written? Not a folder, no file where its folder must be, and the
    nearest existing folder takes a new file (tried, not asked: ``os.access`` says yes to root on
    ``/proc`` and to everyone on a folder that is full). One line naming ``key``=path and why not."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CannotWrite(f"{key}={str(path)!r} is a folder: name a file")
    blocker = file_in_the_way(path.parent)
    if blocker is not None:
        raise CannotWrite(f"{key}={str(path)!r}: {blocker} is a file, so the folder {path.parent} cannot be made")
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        fault = FOLDER_FAULTS.get(err.errno, f"does not take new files ({err.strerror or err})")
        raise CannotWrite(f"{key}={str(path)!r}: the folder {folder} {fault}") from err
    return path


def atomic_write(path: Path, write: Callable[[str], None], hint: str = "") -> None:
    """Let ``write`` fill a temporary file beside ``path``, then rename it into place: a reader (or a
    run started after a kill) sees the old file or the new one, never half of one. A folder that is
    full or read-only is :class:`CannotWrite` (with ``hint``: what to do), and no temporary file is left."""
    path = Path(path)
    with writing(path, hint):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            # mkstemp's file is owner-only (0600); give the result the mode open() would (0666 less the
            # umask): caches, predictions and exported models are often shared.
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except RuntimeError as err:  # torch's writers: "unexpected pos ..." where the disk filled up
            if shutil.disk_usage(path.parent).free >= NEARLY_FULL_BYTES:
                raise
            raise cannot_write(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), hint) from err
        finally:
            Path(tmp).unlink(missing_ok=True)


def torch_saver(obj: object) -> Callable[[str], None]:
    """A ``write`` for :func:`atomic_write` that saves ``obj`` with ``torch.save``: serialised in memory
    first, so that a full disk is the OS's own ENOSPC, not torch's "unexpected pos" (the file's size is
    the checkpoint's or the features', a few MB to a few hundred)."""
    import torch

    def fill(tmp: str) -> None:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())

    return fill


def file_in_the_way(folder: Path) -> Path | None:
    """The file, if any, at ``folder`` or at one of its parents: where a folder to be made cannot be."""
    return next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)


def make_temp_folder(parent: Path, name: str) -> Path:
    """A new folder ``.<name>.XXXX.partial`` in ``parent`` to build a cache folder in, then rename. With
    the mode mkdir gives (0777 less the umask), not mkdtemp's owner-only 0700: caches are often shared."""
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".partial"))
    os.chmod(folder, 0o777 & ~_umask())
    return folder


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: set it straight back
    os.umask(mask)
    return mask


def text_writer(text: str) -> Callable[[str], None]:
    """A ``write`` for :func:`atomic_write` that writes ``text`` as UTF-8 and syncs it to the disk."""

    def fill(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return fill


def atomic_write_text(path: Path, text: str, hint: str = "") -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: see :func:`atomic_write`."""
    atomic_write(path, text_writer(text), hint)

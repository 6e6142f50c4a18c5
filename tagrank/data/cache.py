"""Cache files that carry their own proof: a checksum file written with each one and checked on every load.

A cache (a dataset's manifest and vocabulary, backbone features, decoded images) only saves time: tagrank
can always recompute it, so a damaged one must be recomputed, never used. Parsing alone does not catch
damage: a manifest cut at a line boundary still parses (with fewer records), and a feature file with 4 KB
of garbage written over it still loads (with one row of 3e38).

:func:`write` lets ``fill`` write the file under a temporary name, renames it into place, then writes
``<file>.check`` beside it the same way: ``{"bytes": size, "sha256": ..., "count": n, "unit": "records"}``
(the records, tags, rows or images the file holds).
:func:`read` returns a file's bytes and count after checking them against its ``.check`` (one read: what
is checked is what is parsed); :func:`verify` checks without keeping the bytes, for a file that is then
memory-mapped or read by another library. Both raise :class:`Unverified` naming the file and why; callers
rebuild the cache with one warning, or stop when the file is the user's. A file from before checksums
were kept, or a kill between the two renames, leaves no matching ``.check``: rebuilt, never trusted.

sha256 runs at about 1 GB/s on one core (40 MB of features: ~50 ms).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tagrank.errors import TagrankError

SUFFIX = ".check"


class Unverified(TagrankError):
    """A cache file that cannot be trusted: missing its checksum, cut short, or changed since it was written."""


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
CACHE_HINT = "free space there, or set TAGRANK_CACHE to a writable folder with space"
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


def _text_filler(text: str) -> Callable[[str], None]:
    def fill(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return fill


def atomic_write_text(path: Path, text: str, hint: str = "") -> None:
    atomic_write(path, _text_filler(text), hint)


def check_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + SUFFIX)


def write(path: Path, fill: Callable[[str], None], count: int, unit: str = "records", hint: str = CACHE_HINT) -> None:
    """Write ``path`` atomically (``fill`` writes the temporary file) and then its checksum file.

    ``count`` (of ``unit``: records, tags, rows, images) is what the reader must find in the file; ``hint``
    is what to do when its folder is full or read-only (a cache's: ``TAGRANK_CACHE``)."""
    path = Path(path)
    atomic_write(path, fill, hint)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        size = f.tell()
    record = {"file": path.name, "bytes": size, "sha256": digest, "count": int(count), "unit": unit}
    try:
        atomic_write_text(check_path(path), json.dumps(record) + "\n", hint)
    except CannotWrite:  # a file without its checksum is rebuilt, never trusted: do not leave one
        path.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str, count: int, unit: str = "records", hint: str = CACHE_HINT) -> None:
    write(path, _text_filler(text), count, unit, hint)


def expected(path: Path) -> dict:
    """The checksum record of ``path``, or :class:`Unverified` saying why there is no usable one."""
    path, check = Path(path), check_path(path)
    if not path.is_file():
        raise Unverified(f"{path}: missing")
    try:
        record = json.loads(check.read_text(encoding="utf-8"))
        if not (isinstance(record, dict) and all(type(record.get(k)) is int for k in ("bytes", "count"))
                and all(isinstance(record.get(k), str) for k in ("sha256", "unit"))):
            raise ValueError("expected keys bytes, sha256, count and unit")
    except FileNotFoundError:
        raise Unverified(f"{path}: no checksum file {check.name} (written by an older tagrank, "
                         "or its write was interrupted)") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise Unverified(f"{path}: its checksum file {check.name} is damaged ({err})") from None
    return record


def _compare(path: Path, record: dict, size: int, digest: str) -> int:
    if size != record["bytes"]:
        raise Unverified(f"{path}: {size} bytes, but {record['bytes']} ({record['count']} {record['unit']}) when written: "
                         f"{'cut short' if size < record['bytes'] else 'appended to'}")
    if digest != record["sha256"]:
        raise Unverified(f"{path}: changed since it was written (same size, different sha256)")
    return record["count"]


def read(path: Path) -> tuple[bytes, int]:
    """The bytes of ``path`` and its count, checked against its checksum file."""
    record = expected(path)
    data = Path(path).read_bytes()
    return data, _compare(path, record, len(data), hashlib.sha256(data).hexdigest())


def verify(path: Path) -> int:
    """The count of ``path`` after checking the file against its checksum file (streamed)."""
    record = expected(path)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        size = f.tell()
    return _compare(path, record, size, digest)


def check_count(path: Path, count: int, found: int) -> None:
    """A checked file must hold the count that was written: else its writer and its reader disagree."""
    if found != count:
        raise Unverified(f"{path}: holds {found}, but its checksum file says {count}")

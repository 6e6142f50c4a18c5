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

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from tagrank.errors import TagrankError
from tagrank.files import CannotWrite, atomic_write, atomic_write_text, text_writer

SUFFIX = ".check"


class Unverified(TagrankError):
    """A cache file that cannot be trusted: missing its checksum, cut short, or changed since it was written."""


CACHE_HINT = "free space there, or set TAGRANK_CACHE to a writable folder with space"


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
    write(path, text_writer(text), count, unit, hint)


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

"""Fetch a dataset's official archives, verify their checksums, and unpack them atomically.

``tagrank-data download=coco`` (archives, URLs and checksums in ``conf/download/<name>.yaml``):

* each archive is downloaded to ``<dest>.partial/archives/<file>.part``; an interrupted transfer is
  resumed with an HTTP ``Range`` request (restarted from zero if the server ignores it), and retried
  ``retries`` times: at once after a transfer that got somewhere, after 1, 2, 4 ... s (at most 30)
  after one that got nothing (a server or name that cannot be reached yet); a killed command resumes
  where it stopped when run again;
* the checksum is verified before anything is unpacked; a mismatch deletes the file (after a resumed
  transfer it is downloaded once more from the start) and stops with an error;
* archives are unpacked into ``<dest>.partial/tree/`` and ``<dest>`` appears only when every archive is
  in, by one rename: a dataset folder is either complete or absent, never half there.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tagrank.errors import TagrankError
from tagrank.files import atomic_write_text, file_in_the_way

log = logging.getLogger("tagrank")
MARKER = ".tagrank-download.json"
CHUNK = 1 << 20


class _Incomplete(Exception):
    pass


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def expected_digest(archive: dict[str, Any], allow_unverified: bool) -> tuple[str, str] | None:
    for algorithm in ("sha256", "md5"):
        if archive.get(algorithm):
            return algorithm, str(archive[algorithm]).lower()
    if allow_unverified:
        log.warning("%s: no checksum configured; not verified (download.allow_unverified=true)", archive["url"])
        return None
    raise TagrankError(f"{archive['url']}: no md5 or sha256 configured; add it to the download config or set "
                       "download.allow_unverified=true")


def _transfer(url: str, part: Path, timeout: float) -> bool:
    """Download ``url`` into ``part``, resuming from its current size; True if it resumed."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the part is complete (or too long)
            return True
        raise
    with resp:
        resumed = bool(offset) and resp.status == 206 and (resp.headers.get("Content-Range") or "").startswith(f"bytes {offset}-")
        if not resumed:
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as f:
            while block := resp.read(CHUNK):
                f.write(block)
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Incomplete(f"connection closed after {size} of {total} bytes")
    return resumed


def fetch(archive: dict[str, Any], folder: Path, timeout: float = 60.0, retries: int = 3,
          allow_unverified: bool = False) -> Path:
    """The verified archive in ``folder`` (downloaded, or resumed, as needed)."""
    url = str(archive["url"])
    name = archive.get("filename") or Path(urlparse(url).path).name
    path, part = folder / name, folder / f"{name}.part"
    if path.is_file():  # only ever renamed into place after its checksum matched
        return path
    folder.mkdir(parents=True, exist_ok=True)
    digest = expected_digest(archive, allow_unverified)
    failures, restarted, stalled = 0, False, 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            resumed = _transfer(url, part, timeout)
        except urllib.error.HTTPError as err:
            raise TagrankError(f"{url}: HTTP {err.code} {err.reason}") from err
        except (urllib.error.URLError, OSError, http.client.HTTPException, _Incomplete) as err:
            failures += 1
            done = part.stat().st_size if part.exists() else 0
            if failures > retries:
                kept = (f"{done} bytes are kept in {part} and the same command resumes from there" if done
                        else "nothing was received")
                raise TagrankError(f"{url}: download interrupted ({err}) after {retries} retries; {kept}") from err
            # A transfer that got somewhere is resumed at once; one that got nothing waits before the next.
            stalled = 0 if done > before else stalled + 1
            wait = min(2 ** (stalled - 1), 30) if stalled else 0
            log.warning("%s: interrupted (%s); %s%s (retry %d/%d)", url, err,
                        f"resuming from byte {done}" if done else "nothing received",
                        f", trying again in {wait} s" if wait else "", failures, retries)
            time.sleep(wait)
            continue
        if digest is not None:
            got = file_digest(part, digest[0])
            if got != digest[1]:
                part.unlink()
                if resumed and not restarted:
                    log.warning("%s: %s mismatch after resuming; downloading again from the start", url, digest[0])
                    restarted = True
                    continue
                raise TagrankError(f"{url}: {digest[0]} checksum is {got}, expected {digest[1]}: the file is corrupt or "
                                   "not the published archive; it was deleted and nothing was unpacked")
        os.replace(part, path)
        return path


def _merge(src: Path, dst: Path) -> None:
    """Move ``src``'s content into ``dst``, folder by folder (files already there are replaced)."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and target.is_dir():
            _merge(entry, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)


def unpack(archive: Path, into: Path) -> None:
    """Extract a zip or tar archive into ``into`` (via a staging folder: a failure leaves nothing behind)."""
    stage = into.parent / f"unpacking-{archive.name}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:  # refuses absolute paths and ".." (see zipfile docs)
                z.extractall(stage)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                t.extractall(stage, filter="data")
        else:
            raise TagrankError(f"{archive}: neither a zip nor a tar archive")
    except BaseException as err:  # any failure, a Ctrl-C too: no half-extracted folder stays
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(err, (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError)):
            raise TagrankError(f"{archive}: cannot unpack ({err}); delete it to download it again") from err
        raise
    _merge(stage, into)
    shutil.rmtree(stage, ignore_errors=True)


def download_dataset(name: str, archives: list[dict[str, Any]], dest: str | Path, keep_archives: bool = False,
                     timeout: float = 60.0, retries: int = 3, allow_unverified: bool = False) -> Path:
    """Download, verify and unpack ``archives`` so that ``dest`` appears complete, or not at all."""
    if not archives:
        raise TagrankError(f"download={name}: no archives configured")
    dest = Path(dest).expanduser().resolve()
    wanted = [str(a["url"]) for a in archives]
    if dest.exists():
        marker = dest / MARKER
        if marker.is_file() and json.loads(marker.read_text()).get("archives") == wanted:
            log.info("%s is already downloaded", dest)
            return dest
        raise TagrankError(f"download.dest={dest} exists but is not a complete download of {name}; remove it or "
                           "choose another download.dest")
    blocker = file_in_the_way(dest.parent)  # dest itself, when there, was dealt with above
    if blocker is not None:
        raise TagrankError(f"download.dest={dest}: {blocker} is a file, not a folder")
    work = dest.with_name(dest.name + ".partial")
    tree, done_file = work / "tree", work / "unpacked.json"
    done = json.loads(done_file.read_text()) if done_file.is_file() else []
    for archive in archives:
        url = str(archive["url"])
        if url in done:
            continue
        log.info("downloading %s", url)
        path = fetch(archive, work / "archives", timeout=timeout, retries=retries, allow_unverified=allow_unverified)
        log.info("unpacking %s", path.name)
        unpack(path, tree)
        done.append(url)
        atomic_write_text(done_file, json.dumps(done))
        if not keep_archives:
            path.unlink()
    # The marker says "complete": written whole (tagrank.files) or not at all, like every other output.
    atomic_write_text(tree / MARKER, json.dumps({"name": name, "archives": wanted}, indent=1))
    os.rename(tree, dest)
    if keep_archives:
        _merge(work / "archives", dest.with_name(dest.name + ".archives"))
    shutil.rmtree(work, ignore_errors=True)
    return dest

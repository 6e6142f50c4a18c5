"""Where a dataset's records come from: one ``Source`` subclass per format, built once into a cache.

A source turns raw data (a generator, a VOC devkit, COCO JSON...) into ranked-tag records. Its
parameters name the cache folder, so changing any of them builds a new dataset instead of silently
reusing a stale one; the folder appears whole (built aside, then renamed) or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import ClassVar

from tagrank import files
from tagrank.data import cache
from tagrank.data.records import MANIFEST, Record, write_manifest
from tagrank.errors import TagrankError

log = logging.getLogger("tagrank")


@dataclass
class Source:
    """Base class; subclasses are dataclasses whose fields are their (plain) parameters."""

    name = "source"
    # Settings added after datasets were first built, with the value that gives the old records: at that
    # value they stay out of the cache key, so a cache built before they existed is still found.
    later_settings: ClassVar[dict] = {}
    # Settings renamed since datasets were first built, new name -> the name the cache key has always used:
    # the key of the same data stays the same, so a cache built before the rename is still found.
    key_names: ClassVar[dict] = {}

    def build(self, out_dir: Path) -> list[Record]:
        """Write whatever files the dataset needs under ``out_dir`` and return its records."""
        raise NotImplementedError

    def image_root(self, dataset_dir: Path) -> Path:
        """The folder that record image paths are relative to (the cache folder by default)."""
        return dataset_dir

    def cache_key(self) -> str:
        params = asdict(self) if is_dataclass(self) else {}
        params = {self.key_names.get(k, k): v for k, v in params.items()
                  if k not in self.later_settings or v != self.later_settings[k]}
        blob = json.dumps({"source": type(self).__name__, **params}, sort_keys=True, default=str)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def verified(dataset_dir: Path) -> bool:
    """Whether ``dataset_dir`` holds a manifest that matches its checksum file (see ``tagrank.data.cache``)."""
    try:
        cache.verify(dataset_dir / MANIFEST)
        return True
    except cache.Unverified:
        return False


def ensure_built(source: Source, cache_dir: Path) -> Path:
    """The dataset folder of ``source`` under ``cache_dir``, building it first if it is not there.

    A folder whose manifest does not match its checksum (cut short, overwritten, from before checksums were
    kept) is rebuilt from the source, with one warning: training on part of a dataset must never be silent.
    """
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / source.cache_key()
    if target.exists():
        try:
            cache.verify(target / MANIFEST)
            return target
        except cache.Unverified as err:
            if (target / MANIFEST).exists() or cache.check_path(target / MANIFEST).exists():
                log.warning("dataset cache %s; rebuilding the dataset from its source", err)
    # A full or read-only cache folder is one line naming it (CannotWrite), with the half-built folder gone.
    with files.writing(target, cache.CACHE_HINT):
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = files.make_temp_folder(cache_dir, target.name)
        try:
            records = source.build(tmp)
            if not records:
                raise TagrankError(f"data source {source.name!r} produced no records (check data.root and its contents)")
            write_manifest(records, tmp / MANIFEST)
            files.atomic_write_text(tmp / "source.json",
                                    json.dumps({"source": type(source).__name__, **asdict(source)}, indent=1, default=str))
            if verified(target):
                return target  # another process (a SLURM array, parallel trials) finished the same build first
            if target.exists():  # damaged, or half-built by an older version: set aside, never reused
                target.rename(tmp.with_suffix(".old"))
            try:
                tmp.rename(target)
            except OSError:  # lost the race to another process's rename: use its (identical) folder
                if not verified(target):
                    raise
        finally:
            for leftover in (tmp, tmp.with_suffix(".old")):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
    return target

"""What every converter of a user's raw data shares: the root folder, bad-input policy, splits, merging.

* :class:`RawSource` is the base of the real-data sources: ``data.root`` (resolved to an absolute path,
  so the cache key names the data itself), ``data.on_error`` (``raise``: stop at the first bad input with
  ``<file>:<line or id>: ...``; ``skip``: leave the bad record out and count it), and a cache key that
  also covers the size and modification time of the annotation files, so edited data is rebuilt.
* Every image of the records is decoded once at conversion (``data.check_images``; at 1/8 scale, about
  1.5 ms of CPU a COCO photo, on several threads): an unreadable one stops the conversion naming the
  file, or under ``skip`` is left out and counted, instead of stopping feature extraction or training
  later. It is left out after the split, so the other images keep their splits.
* Skipped records and images left without any tag are written to ``skipped.json`` beside the manifest;
  ``tagrank-data`` prints them with the statistics.
* :func:`split_sizes`: ``data.split`` gives exact sizes when they add up to the number of images, and is
  otherwise used as proportions (a subset of the data, a fixture, or fractions such as ``[0.7, 0.1, 0.2]``).
* :func:`merge_ranked` merges several ranked lists of one image (annotators, captions) by mean rank.
* :func:`first_mentions` finds the tags a caption names, in order (longest phrase first), for the
  caption converters (COCO, Karpathy-layout caption sets).

The streaming JSON reader the caption converters use is :mod:`tagrank.data.sources.json_stream`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from PIL import Image

from tagrank.data.records import SPLITS, Record, assign_splits
from tagrank.data.sources.base import Source
from tagrank.errors import TagrankError
from tagrank.files import atomic_write_text

log = logging.getLogger("tagrank")
SKIPPED = "skipped.json"
ON_ERROR = ("raise", "skip")
# What PIL raises for a file it cannot decode (truncated, not an image, a broken header, a decompression bomb).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
PhraseIndex = dict[str, list[tuple[tuple[str, ...], str]]]  # first word -> (phrase, tag), longest first


class Problems:
    """Bad input under ``data.on_error``: raise at once, or count (and log) and go on."""

    def __init__(self, on_error: str) -> None:
        self.skip = on_error == "skip"
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []
        self.no_tags = 0

    def __call__(self, kind: str, where: str, message: str) -> None:
        text = f"{where}: {message}"
        if not self.skip:
            raise TagrankError(f"{text} (data.on_error=skip leaves such records out and counts them)")
        self.counts[kind] += 1
        if len(self.examples) < 20:
            self.examples.append(text)
        log.warning("skipped: %s", text)

    def summary(self) -> dict:
        return {"skipped": dict(sorted(self.counts.items())), "skipped_total": sum(self.counts.values()),
                "no_tags": self.no_tags, "examples": self.examples}


def fingerprint(paths: Iterable[Path]) -> str:
    """Size and modification time of the given files and of every file under the given folders, so an
    annotation edited in place (not only one added or removed) rebuilds the dataset."""
    h = hashlib.sha256()
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        h.update(f"{p}:{len(files)};".encode())
        for f in files:
            try:
                st = f.stat()
                h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                h.update(f"{f}:absent;".encode())
    return h.hexdigest()[:8]


def image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be decoded as an image, or None. A JPEG is decoded at 1/8 scale (PIL's draft
    mode): every byte of its compressed data is still read and checked, at 60% of a full decode's cost."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except IMAGE_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


@dataclass
class RawSource(Source):
    """Base of the converters that read a user's data folder (``data.root``)."""

    root: str | None = None
    on_error: str = "raise"
    check_images: bool = True

    later_settings: ClassVar[dict] = {"check_images": True}  # the records of a good dataset do not change

    layout = "the dataset folder"  # what data.root must hold, for error messages
    version = 1  # bump when a converter gives other records for the same data and settings

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise TagrankError(f"data.on_error={self.on_error!r}: expected one of {list(ON_ERROR)}")
        if self.root:
            self.root = str(Path(self.root).expanduser().resolve())

    def require_root(self) -> Path:
        if not self.root:
            raise TagrankError(f"data={self.name}: set data.root=<folder> ({self.layout})")
        root = Path(self.root)
        if not root.is_dir():
            what = "a file, not a folder" if root.exists() else "no such folder"
            raise TagrankError(f"data.root={self.root}: {what} (expected {self.layout})")
        return root

    def image_root(self, dataset_dir: Path) -> Path:
        return Path(self.require_root())

    def inputs(self) -> list[Path]:
        """Annotation files and folders whose change must rebuild the dataset."""
        return []

    def rules(self) -> str:
        """Anything else that decides the records (a synonym table): a change rebuilds the dataset."""
        return ""

    def cache_key(self) -> str:
        if not self.root:
            return super().cache_key()
        rules = hashlib.sha256(f"{self.version}|{self.rules()}".encode()).hexdigest()[:4]
        return f"{super().cache_key()}-{fingerprint(self.inputs())}{rules}"

    def build(self, out_dir: Path) -> list[Record]:
        problems = Problems(self.on_error)
        records = self.convert(self.require_root(), problems)
        if self.check_images:
            records = self.readable(records, self.image_root(Path(out_dir)), problems)
        # Through tagrank.files as every output: a full or read-only cache is one line naming it.
        atomic_write_text(Path(out_dir) / SKIPPED, json.dumps(problems.summary(), indent=1))
        if problems.no_tags:
            log.warning("%s: %d images have no tag and are left out", self.name, problems.no_tags)
        if not records:
            raise TagrankError(f"data.root={self.root}: no image with a tag was found (expected {self.layout}; "
                               f"skipped: {problems.summary()['skipped_total']}, without tags: {problems.no_tags})")
        return records

    def convert(self, root: Path, problems: Problems) -> list[Record]:
        raise NotImplementedError

    @staticmethod
    def readable(records: list[Record], image_root: Path, problems: Problems) -> list[Record]:
        """The records whose image decodes; the others go to ``problems`` (decoding releases the GIL: threads)."""
        paths = [image_root / r.image for r in records]
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            found = list(pool.map(image_problem, paths))
        kept = []
        for record, path, problem in zip(records, paths, found):
            if problem is None:
                kept.append(record)
            else:
                problems("unreadable_image", str(path), f"cannot read the image ({problem})")
        return kept


def split_sizes(n: int, split: Sequence[float]) -> list[int]:
    """Sizes of train/val/test: ``split`` itself when it adds up to ``n``, else ``n`` shared in its proportions.

    Shared by largest remainder; a split with a positive share gets at least one image when ``n`` allows.
    """
    if len(split) != 3 or any(s < 0 for s in split) or sum(split) <= 0:
        raise TagrankError(f"data.split={list(split)}: expected three non-negative sizes or proportions (train, val, test)")
    if all(float(s).is_integer() for s in split) and sum(split) == n:
        return [int(s) for s in split]
    total = float(sum(split))
    exact = [n * s / total for s in split]
    sizes = [math.floor(x) for x in exact]
    for i in sorted(range(3), key=lambda i: -(exact[i] - sizes[i]))[: n - sum(sizes)]:
        sizes[i] += 1
    for i in range(3):
        if split[i] > 0 and sizes[i] == 0 and n >= sum(1 for s in split if s > 0):
            sizes[max(range(3), key=lambda j: sizes[j])] -= 1
            sizes[i] = 1
    if sum(split) > 1.0 + 1e-9:  # looked like sizes but does not fit this dataset
        log.warning("data.split=%s adds up to %g, but there are %d images: split in proportion, %s",
                    list(split), sum(split), n, dict(zip(SPLITS, sizes)))
    return sizes


def assign(items: list[tuple[str, list[str]]], split: Sequence[float], seed: int) -> list[Record]:
    """Records from ``(image, tags)`` pairs, split at random (fixed seed) in image-path order."""
    items = sorted(items)
    labels = assign_splits(len(items), split_sizes(len(items), split), seed)
    return [Record(image=image, tags=tags, split=label) for (image, tags), label in zip(items, labels)]


def merge_ranked(lists: Sequence[Sequence[str]]) -> list[str]:
    """One ranked list from several (annotators' lists, captions' mentions) by mean rank.

    A tag's rank in a list is its 0-based position; in a list that does not name it, it counts as ranked
    just after that list's last tag (so a tag named by every annotator beats one named once). Ties are
    broken by first appearance (list by list, position by position).
    """
    lists = [list(dict.fromkeys(lst)) for lst in lists]
    if len(lists) == 1:
        return lists[0]
    first: dict[str, int] = {}
    for lst in lists:
        for tag in lst:
            first.setdefault(tag, len(first))
    total = dict.fromkeys(first, 0.0)
    for lst in lists:
        pos = {t: i for i, t in enumerate(lst)}
        for tag in total:
            total[tag] += pos.get(tag, len(lst))
    return sorted(first, key=lambda t: (total[t], first[t]))


def parse_xml(path: Path, problems: Problems) -> ET.Element | None:
    """The root element of an XML file, or None (after ``problems``) when it is malformed or unreadable."""
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as err:
        line, col = err.position
        problems("malformed_xml", f"{path}:{line}", f"malformed XML at column {col} ({err})")
    except OSError as err:
        problems("unreadable", str(path), f"cannot read ({err.strerror or err})")
    return None


def ranked_by_area(areas: Iterable[tuple[str, float]]) -> list[str]:
    """Classes by total area, largest first; ties by first appearance."""
    total: dict[str, float] = {}
    for name, area in areas:
        total[name] = total.get(name, 0.0) + area
    order = {name: i for i, name in enumerate(total)}
    return sorted(total, key=lambda n: (-total[n], order[n]))


def index_phrases(phrases: Mapping[tuple[str, ...], str]) -> PhraseIndex:
    """``{phrase as words: tag}`` indexed by first word, longest phrase first, so a scan tries "hot dog"
    before "hot"."""
    index: dict[str, list] = defaultdict(list)
    for phrase, tag in phrases.items():
        index[phrase[0]].append((phrase, tag))
    for options in index.values():
        options.sort(key=lambda pt: -len(pt[0]))
    return dict(index)


def first_mentions(words: Sequence[str], index: PhraseIndex) -> tuple[str, ...]:
    """Tags in the order the words first name them; at each word the longest phrase wins and its words
    are used up (so "hot dog" names hot dog, not dog)."""
    found: dict[str, None] = {}
    i, n = 0, len(words)
    while i < n:
        for phrase, tag in index.get(words[i], ()):
            k = len(phrase)
            if k == 1 or tuple(words[i:i + k]) == phrase:
                found.setdefault(tag, None)
                i += k
                break
        else:
            i += 1
    return tuple(found)

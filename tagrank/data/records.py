"""The one representation every dataset becomes: ranked-tag records, a manifest and a vocabulary.

A record is ``{"image": <path relative to the image root>, "tags": [most important first], "split":
"train"|"val"|"test"}``; a dataset is a ``manifest.jsonl`` of records and a ``vocab.json`` beside it.
Converters (one per source format) only have to produce records; everything downstream (splits, the
vocabulary, the DataModule, the metrics) is shared.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tagrank.data import cache
from tagrank.errors import TagrankError

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.jsonl"
VOCAB = "vocab.json"


def unique_in_order(tags: Iterable[str]) -> list[str]:
    """Drop repeated tags, keeping each at its first (most important) position."""
    return list(dict.fromkeys(tags))


@dataclass
class Record:
    image: str
    tags: list[str]
    split: str
    # each annotator's own ranked list (captions: one a caption), kept for the leave-one-annotator-out
    # protocol (tagrank.loo); empty where the source has one list per image
    lists: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tags = unique_in_order(self.tags)
        self.lists = [unique_in_order(lst) for lst in self.lists]
        if self.split not in SPLITS:
            raise TagrankError(f"record for {self.image!r}: split {self.split!r} is not one of {SPLITS}")


def write_manifest(records: Sequence[Record], path: Path) -> None:
    """Write the manifest and its checksum file (``tagrank.data.cache``): a manifest is read only whole."""
    text = "".join(json.dumps({k: v for k, v in asdict(r).items() if k != "lists" or v}) + "\n" for r in records)
    cache.write_text(Path(path), text, count=len(records))


def read_manifest(path: Path) -> list[Record]:
    """Read and check a manifest: :class:`~tagrank.data.cache.Unverified` when it is not the manifest that
    was written (cut short, changed, no checksum file), else every problem names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TagrankError(f"{path}: manifest not found")
    records = []
    data, count = cache.read(path)
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise TagrankError(f"{path}: cannot read the manifest as UTF-8 text ({err})") from err
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            record = Record(image=str(raw["image"]), tags=[str(t) for t in raw["tags"]], split=str(raw["split"]),
                            lists=[[str(t) for t in lst] for lst in raw.get("lists", [])])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise TagrankError(
                f"{path}:{line_no}: expected a JSON object with keys image, tags (a list), split and optionally lists (a list of lists) ({err!r})"
            ) from err
        except TagrankError as err:  # a bad split value
            raise TagrankError(f"{path}:{line_no}: {err}") from err
        records.append(record)
    if not records:
        raise TagrankError(f"{path}: the manifest holds no records")
    cache.check_count(path, count, len(records))
    return records


def assign_splits(n: int, sizes: Sequence[int], seed: int) -> list[str]:
    """A deterministic random split of ``n`` items into train/val/test of the given sizes."""
    if sum(sizes) != n:
        raise TagrankError(f"split sizes {list(sizes)} add up to {sum(sizes)}, but the dataset has {n} images")
    labels = [s for s, size in zip(SPLITS, sizes) for _ in range(size)]
    random.Random(seed).shuffle(labels)
    return labels


@dataclass
class Vocabulary:
    """Tags kept for learning: seen at least ``min_tag_count`` times in the training split.

    Ordered by training frequency (most frequent first, then by name), so index order is also the
    frequency prior's ranking.
    """

    tags: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    min_tag_count: int = 1

    def __post_init__(self) -> None:
        self.index = {t: i for i, t in enumerate(self.tags)}

    def __len__(self) -> int:
        return len(self.tags)

    @classmethod
    def build(cls, records: Iterable[Record], min_tag_count: int) -> Vocabulary:
        counts = Counter(t for r in records if r.split == "train" for t in r.tags)
        kept = sorted((t for t, c in counts.items() if c >= min_tag_count), key=lambda t: (-counts[t], t))
        return cls(tags=kept, counts={t: counts[t] for t in kept}, min_tag_count=min_tag_count)

    def encode(self, tags: Iterable[str]) -> list[int]:
        """Ids of the tags in the vocabulary, in order; the others are dropped."""
        return [self.index[t] for t in tags if t in self.index]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tags[i] for i in ids if 0 <= i < len(self.tags)]

    def save(self, path: Path) -> None:
        text = json.dumps({"min_tag_count": self.min_tag_count, "tags": self.tags, "counts": self.counts}, indent=1)
        cache.write_text(Path(path), text, count=len(self.tags), unit="tags")

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        """The vocabulary saved at ``path``; :class:`~tagrank.data.cache.Unverified` if it is not the one saved."""
        data, count = cache.read(Path(path))
        try:
            raw = json.loads(data.decode("utf-8"))
            vocab = cls(tags=list(raw["tags"]), counts=dict(raw["counts"]), min_tag_count=int(raw["min_tag_count"]))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise TagrankError(f"{path}: not a tagrank vocabulary (expected keys tags, counts, min_tag_count): {err}") from err
        cache.check_count(Path(path), count, len(vocab))
        return vocab


def dataset_stats(records: Sequence[Record], vocab: Vocabulary) -> dict:
    """Figures a user checks after a conversion: sizes, vocabulary before/after filtering, list lengths."""
    lengths = sorted(len(vocab.encode(r.tags)) for r in records)
    all_train = {t for r in records if r.split == "train" for t in r.tags}
    top = sorted(vocab.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return {
        "images": {s: sum(r.split == s for r in records) for s in SPLITS},
        "vocab_before_filter": len(all_train),
        "vocab_after_filter": len(vocab),
        "min_tag_count": vocab.min_tag_count,
        "mean_list_length": sum(lengths) / max(len(lengths), 1),
        "median_list_length": lengths[len(lengths) // 2] if lengths else 0,
        "top_tags": top,
        "empty_after_filter": sum(1 for n in lengths if n == 0),
    }

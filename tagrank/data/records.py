"""The one representation every dataset becomes: ranked-tag records, a manifest and a vocabulary.

A record is ``{"image": <path relative to the image root>, "tags": [most important first], "split":
"train"|"val"|"test"}``; a dataset is a ``manifest.jsonl`` of records and a ``vocab.json`` beside it.
Converters (one per source format) only have to produce records; everything downstream (splits, the
vocabulary, the DataModule, the metrics) is shared.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

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

    def __post_init__(self) -> None:
        self.tags = unique_in_order(self.tags)
        if self.split not in SPLITS:
            raise TagrankError(f"record for {self.image!r}: split {self.split!r} is not one of {SPLITS}")


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Let ``write`` fill a temporary file beside ``path``, then rename it into place: a reader (or a
    run started after a kill) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def write_manifest(records: Sequence[Record], path: Path) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(asdict(r)) + "\n" for r in records))


def read_manifest(path: Path) -> list[Record]:
    """Read and check a manifest; every problem names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TagrankError(f"{path}: manifest not found")
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TagrankError(f"{path}: cannot read the manifest as UTF-8 text ({err})") from err
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            record = Record(image=str(raw["image"]), tags=[str(t) for t in raw["tags"]], split=str(raw["split"]))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise TagrankError(
                f"{path}:{line_no}: expected a JSON object with keys image, tags (a list) and split ({err!r})"
            ) from err
        except TagrankError as err:  # a bad split value
            raise TagrankError(f"{path}:{line_no}: {err}") from err
        records.append(record)
    if not records:
        raise TagrankError(f"{path}: the manifest holds no records")
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
        data = {"min_tag_count": self.min_tag_count, "tags": self.tags, "counts": self.counts}
        atomic_write_text(Path(path), json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(tags=list(data["tags"]), counts=dict(data["counts"]), min_tag_count=int(data["min_tag_count"]))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise TagrankError(f"{path}: not a tagrank vocabulary (expected keys tags, counts, min_tag_count): {err}") from err


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

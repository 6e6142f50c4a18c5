"""Caption data sets in Karpathy's layout (Flickr8k, Flickr30k, COCO) as ranked-tag benchmarks.

``data.annotations`` (relative to ``data.root`` or absolute; by default the one ``dataset_*.json`` in
``data.root``) is Karpathy's file: ``{"images": [{"filename", "filepath" (COCO only), "split",
"sentences": [{"raw", "tokens"}, ...]}, ...]}``. The photos are under ``data.images`` (relative to
``data.root`` or absolute; default ``<root>/images``), COCO's ``filepath`` being a subfolder of it. The
file's own split is used, never a re-split: ``train``, ``val``, ``test``, and COCO's ``restval`` as train.

Tags come from ``data.vocabulary`` (relative to ``data.root`` or absolute): one tag a line, the tag
first, then the other forms that mean it; ``#`` starts a comment; blank lines are ignored::

    man men mans              # forms are separated by spaces
    shirt shirts t-shirt      # a form keeps its "-" and "'", as the caption words do
    hot_dog hot_dogs          # a form of several words joins them with "_" (this tag is "hot dog")

A caption's words are its ``tokens``, lower-cased, or, for a sentence without tokens, its ``raw`` text
split the way Karpathy's files were made (lower case; runs of letters and digits, kept whole across
"-" and "'"; other punctuation dropped). At each word the longest form wins, so "hot dogs" names hot
dog and not dog. A caption's ranked list is the tags in the order it first names them; the captions
of a photo are merged by mean rank (``tagrank.data.sources.raw.merge_ranked``), so a tag that only one
caption of five names ranks low. A photo none of whose captions names a tag is left out and counted.

Bad input stops with one line naming the file and the line or photo, or with ``data.on_error=skip`` is
left out and counted: a form given to two tags, a form no caption word can match, a split other than
those above, a photo listed but not on disk (or listed twice), a sentence with neither tokens nor text.
A vocabulary without any tag always stops.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagrank.data.sources.json_stream import json_items
from tagrank.data.sources.raw import Problems, RawSource, first_mentions, index_phrases, merge_ranked
from tagrank.data.records import Record
from tagrank.errors import TagrankError

SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")


def words_of(text: str) -> list[str]:
    """A caption's raw text split as Karpathy's ``tokens`` were (the same on all 40,000 Flickr8k captions),
    so that a sentence without tokens matches the same forms."""
    return _WORD.findall(text.lower())


def read_tag_forms(path: Path, problems: Problems) -> dict[tuple[str, ...], str]:
    """``{form as words: tag}`` from a vocabulary file (see the module docstring)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TagrankError(f"data.vocabulary={path}: cannot read ({err})") from err
    forms: dict[tuple[str, ...], str] = {}
    line_of: dict[tuple[str, ...], int] = {}
    for line_no, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        phrases = [tuple(words_of(field.replace("_", " "))) for field in fields]
        bad = [field for field, phrase in zip(fields, phrases) if "_".join(phrase) != field.lower()]
        if bad:
            problems("bad_form", f"{path}:{line_no}", f"form {bad[0]!r} can never match a caption word (expected letters "
                     "and digits, with - or ' inside a word and _ between the words of a form)")
            continue
        tag = " ".join(phrases[0])
        for field, phrase in zip(fields, phrases):
            owner = forms.setdefault(phrase, tag)
            line_of.setdefault(phrase, line_no)
            if owner != tag:
                problems("duplicate_form", f"{path}:{line_no}",
                         f"form {field!r} already names tag {owner!r} (line {line_of[phrase]}); a form names one tag only")
    if not forms:
        raise TagrankError(f"data.vocabulary={path}: no tags (expected one tag a line, then its other forms: 'man men')")
    return forms


def caption_words(sentence: Any) -> list[str] | None:
    """A sentence's words: its tokens, else its raw text split; None when it has neither."""
    if not isinstance(sentence, dict):
        return None
    tokens, raw = sentence.get("tokens"), sentence.get("raw")
    if isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens):
        return [t.lower() for t in tokens]
    if isinstance(raw, str) and raw.strip():
        return words_of(raw)
    return None


@dataclass
class CaptionsSource(RawSource):
    """Karpathy-layout caption JSON + images + a tag vocabulary file; see the module docstring."""

    annotations: str | None = None
    images: str = "images"
    vocabulary: str | None = None

    name = "captions"
    version = 2  # 2: each caption's own list kept in the manifest's `lists` (leave one annotator out)
    layout = "a folder with Karpathy's dataset_<name>.json and images/"

    def path(self, value: str) -> Path:
        """A setting's file or folder: relative to data.root, or absolute."""
        return Path(self.root, Path(value).expanduser())

    def inputs(self) -> list[Path]:
        files = [self.path(self.annotations)] if self.annotations else sorted(Path(self.root).glob("dataset_*.json"))
        return files + ([self.path(self.vocabulary)] if self.vocabulary else [])

    def image_root(self, dataset_dir: Path) -> Path:
        return self.path(self.images)

    def annotation_file(self, root: Path) -> Path:
        if self.annotations:
            path = self.path(self.annotations)
            if not path.is_file():
                raise TagrankError(f"data.annotations={path}: not found (expected Karpathy's dataset_<name>.json)")
            return path
        found = sorted(root.glob("dataset_*.json"))
        if len(found) != 1:
            raise TagrankError(f"data.root={root}: {len(found)} dataset_*.json files ({', '.join(p.name for p in found)}); "
                               "set data.annotations=<Karpathy's JSON file>")
        return found[0]

    def convert(self, root: Path, problems: Problems) -> list[Record]:
        if not self.vocabulary:
            raise TagrankError(f"data={self.name}: set data.vocabulary=<file> (one tag a line, then its other forms)")
        index = index_phrases(read_tag_forms(self.path(self.vocabulary), problems))
        path, images = self.annotation_file(root), self.path(self.images)
        if not images.is_dir():
            raise TagrankError(f"data.images={images}: no such folder (the photos named in {path.name})")
        on_disk: dict[Path, set[str]] = {}
        seen: set[str] = set()
        records, n_listed = [], 0
        for key, i, item in json_items(path):
            if key != "images" or i is None:
                continue
            n_listed += 1
            where = f"{path}: images[{i}]"
            if not (isinstance(item, dict) and isinstance(item.get("filename"), str)
                    and isinstance(item.get("filepath", ""), str) and isinstance(item.get("sentences"), list)):
                problems("bad_entry", where, "expected an object with a string filename, a split and a list of sentences")
                continue
            image = Path(item.get("filepath", ""), item["filename"]).as_posix()
            where = f"{where} ({image})"
            split = SPLITS.get(item.get("split"))
            if split is None:
                problems("bad_split", where, f"split {item.get('split')!r}: expected one of {list(SPLITS)}")
                continue
            folder = (images / image).parent
            if folder not in on_disk:
                on_disk[folder] = {e.name for e in os.scandir(folder)} if folder.is_dir() else set()
            if Path(image).name not in on_disk[folder]:
                problems("missing_image", where, f"{images / image} does not exist")
                continue
            if image in seen:
                problems("duplicate_image", where, "the photo is listed twice")
                continue
            seen.add(image)
            lists = []
            for j, sentence in enumerate(item["sentences"]):
                words = caption_words(sentence)
                if words is None:
                    problems("no_text", f"{where}: sentences[{j}]", "expected 'tokens' (a list of words) or 'raw' (its text)")
                    continue
                lists.append(first_mentions(words, index))
            tags = merge_ranked(lists)
            if not tags:
                problems.no_tags += 1
                continue
            records.append(Record(image, tags, split, lists=[lst for lst in lists if lst] if len(lists) > 1 else []))
        if not n_listed:
            raise TagrankError(f"{path}: no 'images' list (expected Karpathy's layout: {{\"images\": [{{\"filename\", "
                               "\"split\", \"sentences\"}}, ...]}})")
        return records

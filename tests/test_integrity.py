"""Damaged caches are rebuilt, never used; unreadable images are caught at conversion (issue 12, cases 2, 3, 6).

The damage is what a disk, a careless copy or a killed job really does: a file cut at a line boundary
(still parses), garbage written over part of a file in place (same size, still loads), a JPEG replaced
by other bytes. Every rebuild says which file and why in exactly one warning line.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from tagrank import files
from tagrank.data import cache
from tagrank.data.sources.boxes import BoxesSource
from tagrank.data.datamodule import RankedTagDataModule, image_transform
from tagrank.data.features import cached_features, feature_cache_path
from tagrank.data.records import MANIFEST, VOCAB, read_manifest
from tagrank.errors import TagrankError

from .test_converters import jpeg, lists, run_prepare, write_boxes

SYNTHETIC = dict(n_train=6, n_val=2, n_test=4, render_size=32)


def synthetic_dm(cache_dir: Path) -> RankedTagDataModule:
    dm = RankedTagDataModule("tagrank.data.synthetic.SyntheticSource", str(cache_dir), **SYNTHETIC)
    dm.setup()
    return dm


class TinyBackbone(nn.Module):
    """A real (small, seeded) conv net: 512 features an image, so 4 KB of garbage lands inside one file's rows."""

    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 512, 3, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


def features(dm: RankedTagDataModule, backbone: nn.Module) -> torch.Tensor:
    return cached_features(dm, backbone, "tiny", "d0", 32, image_transform(32, backbone.mean, backbone.std))


def warnings_about(caplog, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and str(path) in r.getMessage()]


def assert_one_warning(caplog, path: Path, *words: str) -> str:
    found = warnings_about(caplog, path)
    assert len(found) == 1, found
    assert "\n" not in found[0] and all(w in found[0] for w in words), found[0]
    return found[0]


# --- case 2: a feature cache damaged in place ------------------------------------------------------

def test_feature_cache_overwritten_in_place_same_size_is_recomputed(tmp_path, caplog):
    dm, backbone = synthetic_dm(tmp_path), TinyBackbone()
    good = features(dm, backbone)
    path = feature_cache_path(tmp_path, dm.name, "tiny", "d0", 32)
    data = path.read_bytes()
    at = data.find(good.numpy().tobytes())  # the tensor's bytes, stored as they are inside the zip
    assert at > 0 and len(good.numpy().tobytes()) > 8192
    garbage = random.Random(0).randbytes(4096)
    path.write_bytes(data[: at + 2048] + garbage + data[at + 2048 + 4096:])
    assert path.stat().st_size == len(data)
    # torch still loads the damaged file, with other numbers in it: only a checksum can tell
    assert not torch.equal(torch.load(path, weights_only=True)["features"], good)
    caplog.set_level(logging.INFO)
    again = features(dm, backbone)
    assert torch.equal(again, good)
    assert_one_warning(caplog, path, "changed since it was written", "recomput")
    caplog.clear()
    assert torch.equal(features(dm, backbone), good) and warnings_about(caplog, path) == []  # the rebuilt one is trusted


# --- case 3: a manifest (and a vocabulary) damaged in the dataset cache ----------------------------

@pytest.mark.parametrize("keep", ["three quarters", "train and val only", "mid-line"])
def test_manifest_cut_short_is_rebuilt_from_its_source(tmp_path, caplog, keep):
    clean = synthetic_dm(tmp_path)
    manifest = clean.dataset_dir / MANIFEST
    text = manifest.read_text()
    lines = text.splitlines(keepends=True)
    cut = {"three quarters": "".join(lines[: len(lines) * 3 // 4]),
           "train and val only": "".join(lines[: SYNTHETIC["n_train"] + SYNTHETIC["n_val"]]),  # test split empty
           "mid-line": text[: len(text) // 2]}[keep]
    manifest.write_text(cut)
    caplog.set_level(logging.INFO)
    dm = synthetic_dm(tmp_path)
    assert dm.records == clean.records and dm.vocab.tags == clean.vocab.tags
    assert_one_warning(caplog, manifest, "cut short", "rebuilding the dataset")
    assert manifest.read_text() == text


def test_vocabulary_changed_in_the_cache_is_rebuilt_from_the_manifest(tmp_path, caplog):
    clean = synthetic_dm(tmp_path)
    vocab = clean.dataset_dir / VOCAB
    data = json.loads(vocab.read_text())
    data["tags"] = data["tags"][:-1]  # still a valid vocabulary, one tag short
    vocab.write_text(json.dumps(data, indent=1))
    caplog.set_level(logging.INFO)
    dm = synthetic_dm(tmp_path)
    assert dm.vocab.tags == clean.vocab.tags
    assert_one_warning(caplog, vocab, "rebuilding the vocabulary")


# --- case 6: data.on_error=skip skips unreadable images at conversion ------------------------------

def photo(path: Path) -> None:
    """A JPEG with real detail (noise), so that cutting it leaves the decoder short of data."""
    jpeg(path)
    from PIL import Image

    Image.effect_noise((96, 64), 60).convert("RGB").save(path, quality=90)


@pytest.mark.parametrize("damage", ["random bytes", "cut in half"])
def test_unreadable_image_is_left_out_at_conversion_and_counted(tmp_path, capsys, damage):
    root = tmp_path / "boxes"
    write_boxes(root)
    bad = root / "images" / "b.jpg"
    photo(bad)
    whole = bad.read_bytes()
    bad.write_bytes(random.Random(1).randbytes(len(whole)) if damage == "random bytes" else whole[: len(whole) // 2])
    (tmp_path / "raise").mkdir()
    with pytest.raises(TagrankError, match=rf"{bad}: cannot read the image .*data.on_error=skip"):
        BoxesSource(root=str(root)).build(tmp_path / "raise")
    out = tmp_path / "out"
    stats = run_prepare(["data=boxes", f"data.root={root}", "data.on_error=skip", "data.split=[1,0,0]", f"out={out}"],
                        tmp_path)
    assert lists(read_manifest(out / MANIFEST)) == {"a": ["chair", "tvmonitor", "book"]}
    assert stats["left_out"]["skipped"] == {"unreadable_image": 1}
    assert str(bad) in stats["left_out"]["examples"][0]
    assert "1 bad records skipped (unreadable_image 1)" in capsys.readouterr().out


def test_check_file_records_size_checksum_and_count(tmp_path):
    path = tmp_path / "x.bin"
    cache.write(path, lambda tmp: Path(tmp).write_bytes(b"abc"), count=3)
    assert cache.read(path) == (b"abc", 3) and cache.verify(path) == 3
    assert json.loads(cache.check_path(path).read_text())["bytes"] == 3
    path.write_bytes(b"abd")
    with pytest.raises(cache.Unverified, match="changed since it was written"):
        cache.verify(path)
    path.write_bytes(b"ab")
    with pytest.raises(cache.Unverified, match=r"2 bytes, but 3 \(3 records\) when written: cut short"):
        cache.read(path)
    cache.check_path(path).write_text("{")
    with pytest.raises(cache.Unverified, match="checksum file x.bin.check is damaged"):
        cache.read(path)
    cache.check_path(path).unlink()
    with pytest.raises(cache.Unverified, match="no checksum file"):
        cache.verify(path)


def test_atomically_written_files_get_the_usual_mode_not_the_temporary_files(tmp_path):
    # mkstemp makes owner-only files; a cache or exported model written through it must not stay so.
    old = os.umask(0o022)
    try:
        files.atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644

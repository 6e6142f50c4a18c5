"""A phone's portrait photo is stored sideways with an EXIF orientation tag; every viewer (and annotator)
sees it upright, so tagrank decodes it upright everywhere (issue 23, fault 6), and caches made before
are rebuilt, not reused."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import torch
from PIL import Image

from tagrank import files
from tagrank.data import cache
from tagrank.data.features import feature_cache_path
from tagrank.data.images import HEADER_BYTES, ImageTransform, cached_images, image_cache_path, load_image

from .test_integrity import TinyBackbone, features, synthetic_dm

RED, BLUE = (220, 20, 20), (20, 20, 220)


def sideways_photo(path: Path, orientation: int = 6) -> Path:
    """48 x 24 stored, red left half and blue right half; tag 6 says: turn 90 degrees clockwise to view,
    which puts the stored left half on top (24 wide, 48 high)."""
    im = Image.new("RGB", (48, 24), BLUE)
    im.paste(RED, (0, 0, 24, 24))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, "JPEG", quality=95, exif=exif)
    return path


def near(pixel, colour) -> bool:
    return all(abs(a - b) < 40 for a, b in zip(pixel, colour))


def test_a_photo_with_an_orientation_tag_decodes_upright(tmp_path):
    path = sideways_photo(tmp_path / "portrait.jpg")
    with Image.open(path) as raw:
        assert raw.size == (48, 24) and near(raw.convert("RGB").getpixel((2, 12)), RED)
    im = load_image(path)
    assert im.size == (24, 48) and im.mode == "RGB"
    assert near(im.getpixel((12, 2)), RED) and near(im.getpixel((12, 45)), BLUE)
    plain = tmp_path / "plain.jpg"  # no tag: as stored
    Image.new("RGB", (48, 24), BLUE).save(plain, "JPEG")
    assert load_image(plain).size == (48, 24)


def test_a_decoded_image_cache_made_before_orientation_was_applied_is_rebuilt(tmp_path, caplog):
    paths = [sideways_photo(tmp_path / f"p{i}.jpg") for i in range(3)]
    transform = ImageTransform(16, (0.5,) * 3, (0.25,) * 3)
    images = cached_images(paths, tmp_path / "cache", "photos", transform, load_image)
    top, bottom = images[0][:, 1, 8], images[0][:, 14, 8]  # the square resize keeps red on top
    assert near(top.tolist(), RED) and near(bottom.tolist(), BLUE)
    # The cache as an older tagrank wrote it: no decoding in its header, the photos sideways (red left).
    path = image_cache_path(tmp_path / "cache", "photos", 16)
    header = json.loads(path.read_bytes()[:HEADER_BYTES].decode().rstrip())
    del header["decoding"]
    old = [transform.resize(Image.open(p).convert("RGB")).numpy().tobytes() for p in paths]

    def fill(tmp: str) -> None:
        Path(tmp).write_bytes(json.dumps(header).encode().ljust(HEADER_BYTES) + b"".join(old))

    cache.write(path, fill, count=3, unit="images")
    caplog.set_level(logging.INFO)
    again = cached_images(paths, tmp_path / "cache", "photos", transform, load_image)
    assert torch.equal(again[0], images[0])
    assert any("was made for other images" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_feature_cache_made_before_orientation_was_applied_is_recomputed(tmp_path, caplog):
    dm, backbone = synthetic_dm(tmp_path), TinyBackbone()
    good = features(dm, backbone)
    path = feature_cache_path(tmp_path, dm.name, "tiny", "d0", 32)
    saved = torch.load(io.BytesIO(cache.read(path)[0]), weights_only=True)
    del saved["decoding"]  # as an older tagrank wrote it
    cache.write(path, files.torch_saver({**saved, "features": torch.zeros_like(good)}), count=len(good), unit="rows")
    caplog.set_level(logging.INFO)
    assert torch.equal(features(dm, backbone), good)
    assert any("was made for other images" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

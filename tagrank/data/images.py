"""Decoded images, cached once per (dataset, image size): uint8 pixels [N, 3, S, S] in one memory-mapped file.

Fine-tuning reads every training image again at every step it is drawn, and decoding and resizing a
JPEG with PIL costs more CPU than copying its pixels (``make bench``: fine-tuning input). So images are
decoded and resized once, by the same transform as before (:class:`ImageTransform`'s first half), into
``<cache>/images/<dataset>__<size>px.u8``; training reads rows of it (normalised on the fly) through a
read-only memory map, which loader workers share through the page cache instead of holding copies.

The file is written like every cache (``tagrank.data.cache``: a temporary name, renamed, a checksum
file beside it) and starts with a header naming what it holds: the number of images, their size, and
the sha256 of the image files' bytes (:func:`content_digest`), so a file cut short, damaged, or made
before an image was replaced is rebuilt, never used, while images rewritten with the same bytes keep
it. Concurrent runs (a multirun on one machine) wait for one another's build instead of each decoding
everything.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2 as T
from tqdm import tqdm

from tagrank import files
from tagrank.data import cache
from tagrank.data.sources.raw import IMAGE_ERRORS
from tagrank.errors import TagrankError

log = logging.getLogger(__name__)

HEADER_BYTES = 4096  # a JSON header, padded: the pixels start page-aligned

# How :func:`load_image` decodes, recorded in the decoded-image and feature caches: a cache made by
# another decoding (before the EXIF orientation was applied) is rebuilt, not reused.
DECODING = "RGB, EXIF orientation applied"


def load_image(path: Path) -> Image.Image:
    """The photo at ``path`` as RGB, turned upright by its EXIF orientation (``ImageOps.exif_transpose``):
    a phone stores a portrait photo sideways with a tag saying so, and every viewer (and so every
    annotator) sees it upright. The one place images are decoded (training, caches, predict, reports)."""
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except IMAGE_ERRORS as err:
        raise TagrankError(f"{path}: cannot read image ({err})") from err


def progress(items: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "img") -> tqdm:
    """A progress bar with the rate and the time left (tqdm); redrawn every 30 s when not on a terminal
    (a log file), every second on one."""
    tty = sys.stderr.isatty()
    return tqdm(items, total=total, desc=desc, unit=unit, mininterval=1 if tty else 30, dynamic_ncols=tty)


class ImageTransform:
    """PIL image -> normalised float tensor: square resize (no crop: a tag may name an object at the
    border) to uint8, then scale to [0, 1] and normalise. In two halves, so that the decoded-image
    cache stores the first one's output and gives the same tensors as decoding."""

    # No random augmentation: an image gives the same tensor at every step. The decoded-image cache and
    # the trunk cache of backbone.finetune_blocks (tagrank.pipeline.attach_inputs) rely on it.
    deterministic = True

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size = image_size
        self.resize = T.Compose([T.ToImage(), T.Resize((image_size, image_size), antialias=True)])
        self.normalize = T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))])

    def __call__(self, image) -> torch.Tensor:
        return self.normalize(self.resize(image))


def image_cache_path(cache_dir: Path, dataset: str, image_size: int) -> Path:
    return Path(cache_dir).expanduser() / "images" / f"{dataset}__{image_size}px.u8"


def fingerprint(paths: Sequence[Path]) -> str:
    """What identifies the image files without reading them: an image replaced (a new file renamed over
    it, or rewritten in place, even with its size and modification time put back) gives another one."""
    h = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as err:  # as load_image says it: one line naming the file
            raise TagrankError(f"{path}: cannot read image ({err.strerror})") from err
        # ctime too: a file rewritten in place with its size and modification time put back (touch -r)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()[:16]


def content_digest(paths: Sequence[Path], cache_dir: Path) -> str:
    """The sha256 of the image files' bytes, in order: what the decoded-image and feature caches record.

    Why the bytes and not the files' sizes and times: a photo replaced under its name must not keep its
    old pixels or features (a dataset's own key covers only its annotation files), but images rewritten
    with the same bytes (a repaired synthetic set, a backup restored) should keep their caches. Reading
    every image costs about a second a GB, so the digest is remembered under the files' ``fingerprint``
    in ``<cache>/files/<fingerprint>.sha256`` and read from there while no file changes."""
    memo = Path(cache_dir).expanduser() / "files" / f"{fingerprint(paths)}.sha256"
    try:
        data, _ = cache.read(memo)
        return data.decode("ascii")
    except (cache.Unverified, UnicodeDecodeError):  # none yet, or a damaged one: read the images
        pass
    h = hashlib.sha256()
    for path in progress(paths, total=len(paths), desc="reading images", unit="file") if len(paths) > 5000 else paths:
        try:
            with open(path, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        except OSError as err:
            raise TagrankError(f"{path}: cannot read image ({err.strerror})") from err
    try:
        cache.write_text(memo, h.hexdigest(), count=len(paths), unit="images")
    except (files.CannotWrite, OSError) as err:  # a read-only cache (shared, precomputed) still serves what it holds
        log.info("could not keep the images' digest (%s); they are read again next time", err)
    return h.hexdigest()


class DecodedImages:
    """Row ``i``: the uint8 pixels [3, S, S] of image ``i``, read from the memory-mapped cache file.

    Pickled (for loader workers started by spawn) as its path only; each process maps the file itself.
    """

    def __init__(self, path: Path, count: int, image_size: int) -> None:
        self.path, self.count, self.image_size = Path(path), count, image_size
        self._pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, row: int) -> torch.Tensor:
        if self._pixels is None:
            shape = (self.count, 3, self.image_size, self.image_size)
            self._pixels = np.memmap(self.path, dtype=np.uint8, mode="r", offset=HEADER_BYTES, shape=shape)
        return torch.from_numpy(np.array(self._pixels[row]))  # a copy: the map is read-only

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + self.count * 3 * self.image_size ** 2


def _header(paths: Sequence[Path], image_size: int, cache_dir: Path) -> dict:
    return {"format": "tagrank decoded images, uint8 [N, 3, S, S]", "images": len(paths), "size": image_size,
            "decoding": DECODING, "sha256": content_digest(paths, cache_dir)}


def _read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    try:
        return json.loads(raw.decode("utf-8").rstrip())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise cache.Unverified(f"{path}: its header is not readable ({err})") from None


@contextmanager
def _exclusive(path: Path):
    """Hold ``<path>.lock``: a second process building the same cache waits, then finds it built."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "w")
    except OSError as err:
        if err.errno not in files.FOLDER_FAULTS:
            raise
        # A read-only cache (shared, precomputed) still serves what it holds; nobody else can be building
        # it, and a build that is needed fails on its first write with one line naming the folder.
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached_images(paths: Sequence[Path], cache_dir: Path, dataset: str, transform: ImageTransform,
                  load, threads: int | None = None) -> DecodedImages:
    """The decoded images of ``paths`` (in order) at ``transform.image_size``: from the cache, or decoded
    now with ``load`` (path -> PIL image) and ``transform.resize``, on several threads (PIL and the
    resize release the GIL)."""
    size = transform.image_size
    path = image_cache_path(cache_dir, dataset, size)
    wanted = _header(paths, size, cache_dir)
    with _exclusive(path):
        if path.exists() or cache.check_path(path).exists():
            try:
                count = cache.verify(path)
                if _read_header(path) == wanted:
                    cache.check_count(path, count, len(paths))
                    log.info("decoded images: reusing %s", path)
                    return DecodedImages(path, len(paths), size)
                log.warning("decoded images: %s was made for other images (or other files); rebuilding", path)
            except cache.Unverified as err:
                log.warning("decoded images: %s; rebuilding", err)

        def decode(p: Path) -> bytes:
            pixels = transform.resize(load(p))
            if pixels.shape != (3, size, size) or pixels.dtype != torch.uint8:
                raise ValueError(f"{p}: decoded to {tuple(pixels.shape)} {pixels.dtype}, expected (3, {size}, {size}) uint8")
            return pixels.numpy().tobytes()

        def fill(tmp: str) -> None:
            with open(tmp, "wb") as f, ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
                f.write(json.dumps(wanted).encode("utf-8").ljust(HEADER_BYTES))
                for pixels in progress(pool.map(decode, paths), total=len(paths), desc="decoding images"):
                    f.write(pixels)

        cache.write(path, fill, count=len(paths), unit="images")
    images = DecodedImages(path, len(paths), size)
    log.info("decoded images: cached %d images at %d px (%.0f MB) in %s", len(paths), size, images.nbytes / 1e6, path)
    return images

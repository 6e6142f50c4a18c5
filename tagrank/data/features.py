"""Backbone features computed once per (dataset, backbone, weights, image size) and cached on disk.

A frozen backbone gives the same feature for an image every epoch, so on a CPU the sensible unit of
work is one pass over the images (the "prepare" step), after which training touches only a small
tensor. The cache file is written to a temporary name and renamed, with a checksum file beside it
(``tagrank.data.cache``), so neither a killed run nor damage in place leaves a file that a later run
would load as valid; a file that does not match its checksum or the dataset is recomputed.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from tagrank.data import cache
from tagrank.data.datamodule import RankedTagDataModule, RankedTagDataset
from tagrank.data.images import DECODING, content_digest, progress
from tagrank.errors import TagrankError
from tagrank.models.backbones import backbone_output, trunk_output

log = logging.getLogger(__name__)


def feature_cache_path(cache_dir: Path, dataset: str, backbone: str, weights_digest: str, image_size: int,
                       grid: int | None = None, top_blocks: int | None = None) -> Path:
    """``grid``: the spatial map pooled to grid x grid cells (float16), a file of its own; ``top_blocks``:
    the frozen trunk's output under the last ``top_blocks`` blocks (float32), another."""
    spatial = "" if grid is None else f"-map{grid}x{grid}"
    spatial += "" if top_blocks is None else f"-trunk-top{top_blocks}"
    return Path(cache_dir).expanduser() / "features" / f"{dataset}__{backbone}-{weights_digest}-{image_size}px{spatial}.pt"


@torch.no_grad()
def extract(backbone: nn.Module, dataset: RankedTagDataset, batch_size: int = 64, num_workers: int = 0,
            grid: int | None = None, top_blocks: int | None = None) -> torch.Tensor:
    """Features of every item, in order, with a progress bar. Channels-last like training (ChannelsLast).
    With ``grid``: the feature maps pooled to grid x grid, stored as float16 (half the bytes; the
    methods that read them compute in float32). With ``top_blocks``: the trunk's output under the last
    ``top_blocks`` blocks (``EfficientNetLite.trunk``), kept float32 and contiguous: the top is
    fine-tuned on it and must see what it would see on the images (float16 would round its input)."""
    backbone.eval().to(memory_format=torch.channels_last)
    device = next(backbone.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda")
    out = []
    with progress(total=len(dataset), desc="features") as bar:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            if top_blocks is not None:
                out.append(trunk_output(backbone, images, top_blocks).float().cpu().contiguous())
            else:
                out.append(backbone_output(backbone, images, grid).to(torch.float32 if grid is None else torch.float16).cpu())
            bar.update(len(images))
    return torch.cat(out)


def cached_features(dm: RankedTagDataModule, backbone: nn.Module, backbone_name: str, weights_digest: str,
                    image_size: int, transform, batch_size: int = 64, num_workers: int = 0,
                    grid: int | None = None, top_blocks: int | None = None) -> torch.Tensor:
    """Features of every image of the data module, in manifest order, from the cache or computed now
    (``grid``: the spatial maps; ``top_blocks``: the frozen trunk's outputs; see :func:`extract`)."""
    dm.setup()
    path = feature_cache_path(dm.cache_dir, dm.name, backbone_name, weights_digest, image_size, grid, top_blocks)
    images = [r.image for r in dm.records]
    # The images' bytes, as the decoded-image cache records them: a photo replaced under its name (the
    # dataset's key covers only its annotation files) must not keep its old features.
    contents = content_digest(dm.paths, dm.cache_dir)
    reused = None
    if path.exists() or cache.check_path(path).exists():
        try:
            data, rows = cache.read(path)
            cached = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            if cached["images"] == images and cached.get("sha256") == contents and cached.get("decoding") == DECODING:
                cache.check_count(path, rows, len(cached["features"]))
                log.info("features: reusing %s", path)
                reused = cached["features"]
            else:
                log.warning("features: %s was made for other images (or other image files); recomputing", path)
        except cache.Unverified as err:
            log.warning("features: %s; recomputing", err)
        except Exception as err:  # an unreadable cache is rebuilt, never trusted
            log.warning("features: %s is unreadable (%s); recomputing", path, err)
    if reused is not None:  # checked outside the try: a refusal is not an unreadable file
        return informative(reused, backbone_name, image_size)
    # From the decoded-image cache when this run has it (it fine-tunes): the images are not decoded twice.
    pixels = dm.pixels if dm.pixels is not None and dm.pixels.image_size == image_size else None
    all_rows = RankedTagDataset(list(range(len(dm.records))), dm.targets, dm.paths, None, transform, pixels=pixels)
    features = informative(extract(backbone, all_rows, batch_size, num_workers, grid, top_blocks), backbone_name,
                           image_size)
    cache.write(path, lambda tmp: torch.save({"images": images, "sha256": contents, "decoding": DECODING,
                                              "features": features}, tmp),
                count=len(features), unit="rows")
    log.info("features: cached %s %s", tuple(features.shape), path)
    return features


def informative(features: torch.Tensor, backbone_name: str, image_size: int) -> torch.Tensor:
    """``features``, unless every image got the same vector: then no method can learn anything from
    them, and training would end quietly at the tag-frequency prior. EfficientNet-Lite0 does this below
    ~48 px (its last 1x1 feature map is all zeros after ReLU6)."""
    if len(features) > 1 and bool((features == features[0]).all()):
        what = "all zeros" if not features.any() else "one constant vector"
        raise TagrankError(f"backbone={backbone_name} at backbone.image_size={image_size} gives every image the same "
                           f"features ({what}): the images are too small for it; use a larger backbone.image_size "
                           f"(64 or more)")
    return features

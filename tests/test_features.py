"""The feature cache: computed once, reused, keyed by what changes features, never trusted half-written."""

from __future__ import annotations

import os

import pytest
import torch

import tagrank.data.features as features_mod
from tagrank.data import cache
from tagrank.data.datamodule import RankedTagDataModule, image_transform
from tagrank.data.features import cached_features, feature_cache_path
from tagrank.errors import TagrankError
from tagrank.models.backbones import EfficientNetLite0, load_pretrained, resolve_weights
from tagrank.pipeline import state_digest


@pytest.fixture(scope="module")
def backbone():
    model = EfficientNetLite0()
    load_pretrained(model, resolve_weights("efficientnet_lite0", None))
    return model.eval()


def _dm(tmp_path):
    dm = RankedTagDataModule("tagrank.data.synthetic.SyntheticSource", str(tmp_path), n_train=6, n_val=2,
                             n_test=2, render_size=32)
    dm.setup()
    return dm


class _Counter:
    """Counts images that really go through the backbone (a forward hook on the real module)."""

    def __init__(self, module):
        self.images = 0
        module.register_forward_hook(lambda m, inp, out: setattr(self, "images", self.images + len(inp[0])))


def test_features_are_computed_once_then_reused(tmp_path, backbone):
    dm, counter = _dm(tmp_path), _Counter(backbone)
    tf = image_transform(64, backbone.mean, backbone.std)
    digest = state_digest(backbone)
    first = cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf)
    assert counter.images == 10 and first.shape == (10, 1280)
    again = cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf)
    assert counter.images == 10 and torch.equal(first, again)
    # Another image size or other weights is another cache entry.
    cached_features(dm, backbone, "efficientnet_lite0", digest, 48, image_transform(48, backbone.mean, backbone.std))
    assert counter.images == 20
    assert feature_cache_path(tmp_path, dm.name, "efficientnet_lite0", digest, 64) != \
        feature_cache_path(tmp_path, dm.name, "efficientnet_lite0", "0" * 16, 64)


def test_a_corrupt_or_foreign_cache_is_rebuilt(tmp_path, backbone):
    dm, counter = _dm(tmp_path), _Counter(backbone)
    tf, digest = image_transform(64, backbone.mean, backbone.std), state_digest(backbone)
    path = feature_cache_path(tmp_path, dm.name, "efficientnet_lite0", digest, 64)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated")
    good = cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf)
    assert counter.images == 10
    torch.save({"images": ["other.jpg"], "features": torch.zeros(1, 1280)}, path)
    assert torch.equal(cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf), good)
    assert counter.images == 20


def test_a_replaced_image_gets_new_features_and_the_same_bytes_keep_them(tmp_path, backbone):
    # The dataset's key covers its annotation files, not the photos: the cache records the images' bytes.
    dm, counter = _dm(tmp_path), _Counter(backbone)
    tf, digest = image_transform(64, backbone.mean, backbone.std), state_digest(backbone)
    before = cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf)
    assert counter.images == 10 and not torch.equal(before[0], before[1])

    for path in dm.paths:  # every photo rewritten with its own bytes (another inode and time): reused
        new = tmp_path / "new.jpg"
        new.write_bytes(path.read_bytes())
        os.replace(new, path)
    assert torch.equal(cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf), before)
    assert counter.images == 10

    new = tmp_path / "new.jpg"  # image 0 replaced by a copy of image 1 (written beside it, renamed over it)
    new.write_bytes(dm.paths[1].read_bytes())
    os.replace(new, dm.paths[0])
    after = cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf)
    assert counter.images == 20
    assert torch.allclose(after[0], before[1], atol=1e-5) and torch.equal(after[1:], before[1:])
    assert torch.equal(cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf), after)
    assert counter.images == 20

    # Rewritten in place with another photo of the same size, its modification time put back (touch -r).
    st, data = dm.paths[2].stat(), dm.paths[2].read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # the same size, other pixels
    dm.paths[2].write_bytes(bytes(flipped))
    os.utime(dm.paths[2], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert dm.paths[2].stat().st_size == st.st_size and dm.paths[2].stat().st_mtime_ns == st.st_mtime_ns
    cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf)
    assert counter.images == 30


def test_a_killed_write_leaves_no_cache(tmp_path, backbone, monkeypatch):
    dm = _dm(tmp_path)
    tf, digest = image_transform(64, backbone.mean, backbone.std), state_digest(backbone)

    def dies_half_way(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half of a file")
        raise KeyboardInterrupt  # what a Ctrl-C or kill during the write looks like to Python

    monkeypatch.setattr(features_mod.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf)
    folder = feature_cache_path(tmp_path, dm.name, "efficientnet_lite0", digest, 64).parent
    assert list(folder.iterdir()) == []


def test_features_that_are_the_same_for_every_image_are_refused(tmp_path, backbone):
    """At 32 px EfficientNet-Lite0's last feature map is one pixel and all zero after ReLU6: training on
    that would end at the tag-frequency prior without a word. Refused, and not cached."""
    dm, digest = _dm(tmp_path), state_digest(backbone)
    with pytest.raises(TagrankError, match=r"^backbone=efficientnet_lite0 at backbone.image_size=32 gives every image "
                                           r"the same features \(all zeros\): the images are too small for it; use a "
                                           r"larger backbone.image_size \(64 or more\)$"):
        cached_features(dm, backbone, "efficientnet_lite0", digest, 32, image_transform(32, backbone.mean, backbone.std))
    assert not feature_cache_path(tmp_path, dm.name, "efficientnet_lite0", digest, 32).exists()
    # A cache of such features (from before this check) is refused as it is read, not recomputed as "unreadable".
    counter, tf = _Counter(backbone), image_transform(64, backbone.mean, backbone.std)
    cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf)
    path = feature_cache_path(tmp_path, dm.name, "efficientnet_lite0", digest, 64)
    saved = torch.load(path, weights_only=True)
    cache.write(path, lambda tmp: torch.save({**saved, "features": torch.zeros_like(saved["features"])}, tmp),
                count=len(saved["features"]), unit="rows")
    with pytest.raises(TagrankError, match=r"at backbone.image_size=64 gives every image the same features"):
        cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf)
    assert counter.images == 10  # the first build only


def test_spatial_maps_are_cached_beside_the_pooled_features(tmp_path, backbone):
    """A method that reads the map (model.grid) gets its own float16 cache file, under the same checks."""
    dm = _dm(tmp_path)
    tf = image_transform(64, backbone.mean, backbone.std)
    digest = state_digest(backbone)
    pooled = cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf)
    maps = cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf, grid=2)  # 64 px: the native 2x2
    path = feature_cache_path(tmp_path, dm.name, "efficientnet_lite0", digest, 64, grid=2)
    assert path != feature_cache_path(tmp_path, dm.name, "efficientnet_lite0", digest, 64) and path.is_file()
    assert maps.shape == (10, 1280, 2, 2) and maps.dtype == torch.float16
    torch.testing.assert_close(maps.float().mean((2, 3)), pooled, atol=2e-3, rtol=2e-3)  # the same map, pooled
    stamp = path.stat().st_mtime_ns
    assert torch.equal(cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf, grid=2), maps)
    assert path.stat().st_mtime_ns == stamp  # reused, not recomputed
    path.write_bytes(path.read_bytes()[:-10])  # damaged in place: rebuilt, the same maps
    assert torch.equal(cached_features(dm, backbone, "efficientnet_lite0", digest, 64, tf, grid=2), maps)

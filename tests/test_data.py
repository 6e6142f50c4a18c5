"""Records, manifests, vocabularies, splits, the synthetic generator and the one DataModule."""

from __future__ import annotations

import json
import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from tagrank.data import cache
from tagrank.data.datamodule import RankedTagDataModule, make_source
from tagrank.data.records import (MANIFEST, Record, Vocabulary, assign_splits, dataset_stats, read_manifest,
                                  write_manifest)
from tagrank.data.sources.base import Source, ensure_built
from tagrank.data.synthetic import CLASSES, SyntheticSource, class_pools, render_scene
from tagrank.errors import TagrankError


def test_duplicate_tags_keep_first_position():
    assert Record("a.jpg", ["dog", "cat", "dog", "tree", "cat"], "train").tags == ["dog", "cat", "tree"]


def test_vocabulary_from_training_split_only():
    records = [Record("1", ["a", "b"], "train"), Record("2", ["a", "c"], "train"), Record("3", ["a"], "train"),
               Record("4", ["c", "z", "z"], "val"), Record("5", ["z"], "test")]
    vocab = Vocabulary.build(records, min_tag_count=2)
    assert vocab.tags == ["a"]  # b and c seen once in train; z never in train
    vocab = Vocabulary.build(records, min_tag_count=1)
    assert vocab.tags == ["a", "b", "c"]  # by frequency, then name
    assert vocab.encode(["z", "c", "a"]) == [2, 0]
    stats = dataset_stats(records, Vocabulary.build(records, 2))
    assert stats["images"] == {"train": 3, "val": 1, "test": 1}
    assert stats["vocab_before_filter"] == 3 and stats["vocab_after_filter"] == 1
    assert stats["empty_after_filter"] == 2


def test_manifest_round_trip_and_errors(tmp_path):
    records = [Record("x/1.jpg", ["a", "b"], "train"), Record("2.jpg", [], "test")]
    write_manifest(records, tmp_path / MANIFEST)
    assert read_manifest(tmp_path / MANIFEST) == records
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "1.jpg", "tags": ["a"], "split": "train"}\n')
    with pytest.raises(cache.Unverified, match=r"bad.jsonl: no checksum file bad.jsonl.check"):
        read_manifest(bad)  # never written by write_manifest: not trusted

    def written(data: bytes, count: int = 1) -> None:  # content that matches its checksum, but is still bad
        cache.write(bad, lambda tmp: Path(tmp).write_bytes(data), count)

    written(b'{"image": "1.jpg", "tags": ["a"], "split": "train"}\n{"image": "2.jpg", "tags": }\n', 2)
    with pytest.raises(TagrankError, match=r"bad.jsonl:2"):
        read_manifest(bad)
    written(b'{"image": "1.jpg", "tags": ["a"], "split": "holdout"}\n')
    with pytest.raises(TagrankError, match=r"bad.jsonl:1: .*split 'holdout' is not one of"):
        read_manifest(bad)
    written(b'{"image": "\xff.jpg", "tags": [], "split": "train"}\n')
    with pytest.raises(TagrankError, match="cannot read the manifest as UTF-8"):
        read_manifest(bad)
    written(b'{"image": "1.jpg", "tags": ["a"], "split": "train"}\n', 2)
    with pytest.raises(cache.Unverified, match="holds 1, but its checksum file says 2"):
        read_manifest(bad)
    written(b"", 0)
    with pytest.raises(TagrankError, match="no records"):
        read_manifest(bad)


def test_splits_are_deterministic():
    a, b = assign_splits(100, (80, 10, 10), seed=3), assign_splits(100, (80, 10, 10), seed=3)
    assert a == b and a.count("train") == 80 and a.count("test") == 10
    assert assign_splits(100, (80, 10, 10), seed=4) != a
    with pytest.raises(TagrankError, match="add up"):
        assign_splits(10, (8, 1, 2), seed=0)


def test_synthetic_scene_follows_the_documented_importance_rule():
    first_is_largest = 0
    for i in range(150):
        image, tags, objects = render_scene(random.Random(i), 96, 2, 7, 0.15, 0.10)
        assert image.size == (96, 96) and image.mode == "RGB"
        assert 1 <= len(tags) <= 7 and set(tags) <= set(CLASSES)
        ranked = sorted(objects, key=lambda o: -o["importance"])
        expected = list(dict.fromkeys(o["class"] for i, o in enumerate(ranked) if i == 0 or o["importance"] >= 0.10))
        assert tags == expected
        first_is_largest += tags[0] == max(objects, key=lambda o: o["visible_area"])["class"]
    # Learnable (size matters a lot) but not just "largest first".
    assert 0.3 < first_is_largest / 150 < 0.9
    assert len(CLASSES) == 24


def test_synthetic_class_frequencies_and_scenes():
    counts = {c: 0 for c in CLASSES}
    for i in range(200):
        _, _, objects = render_scene(random.Random(i), 48, 2, 7, 0.15, 0.10, class_zipf=1.0)
        for o in objects:
            counts[o["class"]] += 1
    (everything, weights), = class_pools(1.0, 0)
    frequent, rare = max(CLASSES, key=counts.get), min(CLASSES, key=counts.get)
    assert weights[everything.index(frequent)] == 1.0  # the head of the long tail is drawn most
    assert counts[frequent] > 8 * counts[rare]

    pools = class_pools(0.0, 4)
    groups = [set(group) for group, _ in pools[1:]]
    assert len(groups) == 4 and set().union(*groups) == set(CLASSES) and sum(map(len, groups)) == len(CLASSES)
    scenes = set()
    for i in range(40):  # purity 1: every object comes from its image's scene group
        _, _, objects = render_scene(random.Random(i), 48, 2, 7, 0.15, 0.10, scenes=4, scene_purity=1.0)
        scene = objects[0]["scene"]
        scenes.add(scene)
        assert {o["class"] for o in objects} <= groups[scene]
    assert scenes == {0, 1, 2, 3}
    for bad in ({"class_zipf": -1.0}, {"scenes": 25}, {"scene_purity": 1.5}):
        with pytest.raises(TagrankError, match=f"data.{next(iter(bad))}="):
            SyntheticSource(**bad)


def test_synthetic_settings_added_later_keep_old_caches():
    # The cache folder of the default settings before class_zipf/scenes existed: still the same dataset.
    assert SyntheticSource().cache_key() == "synthetic-e55b7cdd6d9b"
    assert SyntheticSource(class_zipf=0.7).cache_key() != SyntheticSource().cache_key()
    assert SyntheticSource(scenes=4).cache_key() != SyntheticSource(scenes=4, scene_purity=0.5).cache_key()


def test_synthetic_dataset_is_deterministic_and_cached(tmp_path):
    src = SyntheticSource(n_train=6, n_val=2, n_test=2, render_size=48, seed=5)
    a = ensure_built(src, tmp_path / "c1")
    b = ensure_built(SyntheticSource(n_train=6, n_val=2, n_test=2, render_size=48, seed=5), tmp_path / "c2")
    assert (a / MANIFEST).read_text() == (b / MANIFEST).read_text()
    assert (a / "images/000003.jpg").read_bytes() == (b / "images/000003.jpg").read_bytes()
    stamp = (a / MANIFEST).stat().st_mtime_ns
    assert ensure_built(src, tmp_path / "c1") == a and (a / MANIFEST).stat().st_mtime_ns == stamp
    other = ensure_built(SyntheticSource(n_train=6, n_val=2, n_test=2, render_size=48, seed=6), tmp_path / "c1")
    assert other != a and (other / MANIFEST).read_text() != (a / MANIFEST).read_text()
    splits = [json.loads(line)["split"] for line in (a / MANIFEST).read_text().splitlines()]
    assert splits.count("train") == 6 and splits.count("val") == 2 and splits.count("test") == 2


def test_data_image_size_is_now_render_size_and_old_caches_are_still_found(tmp_path, caplog):
    """data.image_size (the size scenes are drawn at) became data.render_size (issue 25): backbone.image_size is
    the other size. The old name is read with one warning, and the cache key names the setting as it always
    did, so a dataset built under the old name is the same folder, found, not built again."""
    keys = {"synthetic-e55b7cdd6d9b": {}, "synthetic-38627b799cb4": dict(n_train=96, n_val=32, n_test=48, render_size=64),
            "synthetic-6873c37b951b": dict(render_size=64, class_zipf=0.7)}  # the keys of datasets built before
    for key, settings in keys.items():
        assert SyntheticSource(**settings).cache_key() == key
    old = ensure_built(SyntheticSource(n_train=6, n_val=2, n_test=2, image_size=48, seed=5), tmp_path)
    assert "data.image_size=48 is the old name of data.render_size" in caplog.text
    stamp = (old / MANIFEST).stat().st_mtime_ns
    new = SyntheticSource(n_train=6, n_val=2, n_test=2, render_size=48, seed=5)
    assert ensure_built(new, tmp_path) == old and (old / MANIFEST).stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [old.name]
    with pytest.raises(TagrankError, match=r"^data.image_size=48 \(the old name of data.render_size\) and "
                                           r"data.render_size=64 disagree: pass data.render_size alone$"):
        SyntheticSource(image_size=48, render_size=64)
    assert SyntheticSource(image_size=64, render_size=64).render_size == 64


def test_an_old_run_config_and_checkpoint_with_data_image_size_still_load(tmp_path, caplog):
    """A run saved before the rename: its .hydra/config.yaml's data node says image_size (tagrank-eval builds
    the data from it), and its checkpoint's settings say data.image_size (a resume compares them)."""
    import torch
    from omegaconf import OmegaConf

    from tagrank import checkpoint
    from tagrank.config import instantiate
    from tagrank.pipeline import check_trained_with, run_settings

    from .conftest import compose_cfg

    cfg = compose_cfg(["data.n_train=8", "data.n_val=3", "data.n_test=3", "data.render_size=32"], tmp_path, tmp_path)
    node = OmegaConf.to_container(cfg.data, resolve=True)  # resolved: here without the run config it refers to
    node["image_size"] = node.pop("render_size")  # as the old config wrote it
    old = OmegaConf.create({"data": node})
    dm = instantiate(old.data, "data")
    assert dm.source.render_size == 32 and dm.source.image_size is None and "read as data.render_size=32" in caplog.text
    assert dm.name == instantiate(cfg.data, "data").name  # the same dataset, the same cache folder
    # the command line's old name: the real config takes it and reads it as render_size
    given = compose_cfg(["data.n_train=8", "data.n_val=3", "data.n_test=3", "data.image_size=32"], tmp_path, tmp_path)
    assert instantiate(given.data, "data").name == dm.name
    ckpt = tmp_path / "old.ckpt"
    torch.save({checkpoint.SETTINGS_KEY: {"seed": 0, "data.image_size": 32, "data.n_train": 8}}, ckpt)
    assert checkpoint.trained_with(checkpoint.load(ckpt)) == {"seed": 0, "data.render_size": 32, "data.n_train": 8}
    check_trained_with(ckpt, run_settings(cfg), "old.ckpt", "resume it")  # the same settings: no refusal
    check_trained_with(ckpt, run_settings(given), "old.ckpt", "resume it")  # and the old command line too
    assert run_settings(given)["data.render_size"] == 32 and "data.image_size" not in run_settings(given)
    other = compose_cfg(["data.n_train=8", "data.n_val=3", "data.n_test=3", "data.render_size=64"], tmp_path, tmp_path)
    with pytest.raises(TagrankError, match=r"data.render_size=32 there, 64 here.*data.render_size=32$"):
        check_trained_with(ckpt, run_settings(other), "old.ckpt", "resume it")


@dataclass
class _BrokenSource(Source):
    """Writes a file, then fails: the half-built dataset must not survive."""

    fail: bool = True
    name = "broken"

    def build(self, out_dir: Path) -> list[Record]:
        (out_dir / "half.txt").write_text("partial")
        if self.fail:
            raise TagrankError("source failed half way")
        return []


def test_a_failed_build_leaves_nothing(tmp_path):
    with pytest.raises(TagrankError, match="half way"):
        ensure_built(_BrokenSource(), tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TagrankError, match="no records"):
        ensure_built(_BrokenSource(fail=False), tmp_path)
    assert list(tmp_path.iterdir()) == []


def _module(tmp_path, **kw) -> RankedTagDataModule:
    args = dict(n_train=8, n_val=3, n_test=3, render_size=32, seed=0) | kw
    return RankedTagDataModule("tagrank.data.synthetic.SyntheticSource", str(tmp_path), **args)


def test_datamodule_bad_settings_are_clear(tmp_path):
    with pytest.raises(TagrankError, match=r"data.n_trian is not a setting"):
        _module(tmp_path, n_trian=3)
    with pytest.raises(TagrankError, match=r"data.n_train='x' has the wrong type: expected int"):
        _module(tmp_path, n_train="x")
    with pytest.raises(TagrankError, match="not an importable class"):
        RankedTagDataModule("tagrank.data.nothing.Here", str(tmp_path))
    with pytest.raises(TagrankError, match="data.n_val=0: expected >= 1"):  # before anything is built
        _module(tmp_path, n_val=0)
    with pytest.raises(TagrankError, match="min_tag_count=1000"):
        RankedTagDataModule("tagrank.data.synthetic.SyntheticSource", str(tmp_path), min_tag_count=1000,
                            n_train=8, n_val=3, n_test=3, render_size=32).setup()


def test_datamodule_batches_and_unreadable_image(tmp_path):
    from tagrank.data.datamodule import image_transform

    dm = _module(tmp_path)
    dm.setup()
    transform = image_transform(32, (0.5,) * 3, (0.5,) * 3)
    dm.use_images(transform)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32)
    assert batch["target"].shape[1] == dm.max_len and (batch["target"][:, 0] >= 0).all()
    # A target row lists the record's tags in ground-truth order.
    row = int(batch["index"][0])
    ids = [i for i in batch["target"][0].tolist() if i >= 0]
    assert dm.vocab.decode(ids) == dm.records[row].tags
    dm.paths[dm.rows("val")[0]].write_bytes(b"not a jpeg")
    with pytest.raises(TagrankError, match=r"000008.jpg: cannot read image"):
        dm.use_images(transform)  # the decoded-image cache sees the file changed and decodes it again
    dm.image_cache = False
    dm.use_images(transform)
    with pytest.raises(TagrankError, match=r"000008.jpg: cannot read image"):
        next(iter(dm.val_dataloader()))


def _lists(dm: RankedTagDataModule, split: str) -> list[list[str]]:
    return [dm.vocab.decode(i for i in dm.targets[row].tolist() if i >= 0) for row in dm.rows(split)]


@pytest.mark.parametrize("order", ["frequency", "rare_first", "random"])
def test_train_order_reorders_the_training_lists_only(tmp_path, monkeypatch, order):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    human = _module(tmp_path, n_train=40, n_val=10, n_test=10)
    human.setup()
    dm = _module(tmp_path, n_train=40, n_val=10, n_test=10, train_order=order)
    dm.setup()
    for split in ("val", "test"):  # what is scored stays the human order
        assert _lists(dm, split) == _lists(human, split)
    count = human.vocab.counts
    changed = 0
    for before, after in zip(_lists(human, "train"), _lists(dm, "train")):
        assert sorted(after) == sorted(before)  # the same set
        changed += after != before
        if order == "frequency":
            assert after == sorted(before, key=lambda t: (-count[t], t))
        elif order == "rare_first":
            assert after == sorted(before, key=lambda t: (-count[t], t))[::-1]  # frequency order reversed
    assert changed > 10  # the synthetic annotator's order is not frequency order, nor is a random one
    if order == "random":  # the same permutation in another module with the run's seed; another seed differs
        again = _module(tmp_path, n_train=40, n_val=10, n_test=10, train_order=order)
        again.setup()
        assert _lists(again, "train") == _lists(dm, "train")
        monkeypatch.setenv("PL_GLOBAL_SEED", "4")
        other = _module(tmp_path, n_train=40, n_val=10, n_test=10, train_order=order)
        other.setup()
        assert _lists(other, "train") != _lists(dm, "train")


def test_a_run_saved_before_the_converters_moved_still_names_its_source(tmp_path):
    from tagrank.data.sources.boxes import BoxesSource

    source = make_source("tagrank.data.boxes.BoxesSource", {"root": str(tmp_path)})  # as an old run's config says
    assert type(source) is BoxesSource
    assert source.cache_key() == make_source("tagrank.data.sources.boxes.BoxesSource", {"root": str(tmp_path)}).cache_key()


def test_a_wrong_train_order_is_one_clear_line(tmp_path):
    with pytest.raises(TagrankError, match=r"data.train_order='alphabetical' is not one of \['human', 'frequency', "
                                           r"'rare_first', 'random'\]"):
        _module(tmp_path, train_order="alphabetical")


def test_a_built_dataset_folder_has_the_mode_mkdir_gives(tmp_path):
    # Built in a temporary folder and renamed: not mkdtemp's owner-only 0700 (caches are often shared).
    old = os.umask(0o022)
    try:
        built = ensure_built(SyntheticSource(n_train=6, n_val=2, n_test=2, render_size=32), tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(built.stat().st_mode) == 0o755

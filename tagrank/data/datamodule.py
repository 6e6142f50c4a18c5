"""One Dataset and one LightningDataModule for every manifest.

A batch is a dict: ``index`` (row in the manifest), ``target`` (tag ids in ground-truth order, padded
with -1; the training split's in ``data.train_order``, the human order by default), ``lists`` (each
annotator's own list [A, L] likewise, a row of -1 where an image has fewer; the merged list alone where
the data has one list per image), and ``features`` (cached backbone features) and/or ``image`` (uint8 pixels [3, S, S], resized;
the model normalises whole batches on its device: ``backbone_input``), depending on whether the
backbone is frozen for the whole run or fine-tuned; with ``backbone.finetune_blocks``, ``trunk`` (the
frozen trunk's cached output) stands in for the image.
"""

from __future__ import annotations

import logging
import os
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Literal

import hydra
import numpy as np

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from tagrank.data import cache
from tagrank.data.images import DecodedImages, ImageTransform, cached_images, load_image  # noqa: F401 (its home before)
from tagrank.data.records import MANIFEST, SPLITS, VOCAB, Record, Vocabulary, read_manifest
from tagrank.data.samplers import EvalSampler, ShuffleSampler, trained_batches
from tagrank.data.sources.base import Source, ensure_built
from tagrank.config import NonNegativeInt, PositiveInt, check_value
from tagrank.errors import TagrankError

log = logging.getLogger("tagrank")

# The order the training split's lists are learnt in (data.train_order); val and test keep the human order.
TrainOrder = Literal["human", "frequency", "rare_first", "random"]


def image_transform(image_size: int, mean: tuple, std: tuple) -> ImageTransform:
    """Square resize (no crop: a tag may name an object at the border), then normalise."""
    return ImageTransform(image_size, mean, std)


class RankedTagDataset(Dataset):
    """Items with cached ``features`` and/or an ``image``: decoded from its file and resized by
    ``transform.resize``, or with ``pixels`` (the decoded-image cache) read from there.

    With both attached, images are read only while ``images_on`` (a shared-memory flag, so loader
    worker processes see it flip) is set: a run that fine-tunes later trains on features alone until
    shortly before the switch, instead of reading every image it does not use. ``trunk`` (the frozen
    trunk's outputs, ``backbone.finetune_blocks``) is served as images are, in their place.
    """

    def __init__(self, rows: list[int], targets: torch.Tensor, paths: list[Path],
                 features: torch.Tensor | None = None, transform: ImageTransform | None = None,
                 images_on: torch.Tensor | None = None, pixels: DecodedImages | None = None,
                 trunk: torch.Tensor | None = None, lists: torch.Tensor | None = None) -> None:
        self.rows, self.targets, self.paths = rows, targets, paths
        self.features, self.transform, self.pixels = features, transform, pixels
        self.images_on, self.trunk, self.lists = images_on, trunk, lists

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.rows[i]
        item = {"index": torch.tensor(row), "target": self.targets[row]}
        if self.lists is not None:
            item["lists"] = self.lists[row]
        if self.features is not None:
            item["features"] = self.features[row]
        images_on = self.features is None or self.images_on is None or bool(self.images_on)
        if self.trunk is not None and images_on:
            item["trunk"] = self.trunk[row]
        if self.transform is not None and images_on:
            if self.pixels is not None:
                item["image"] = self.pixels[row]
            else:
                item["image"] = self.transform.resize(load_image(self.paths[row])).as_subclass(torch.Tensor)
        return item


def reorder(ids: list[int], order: str, seed: int, row: int) -> list[int]:
    """One training list in the order ``data.train_order`` asks for: the ablation of which order a
    recurrent tagger learns from (the set is the same; only the order of its tags changes).

    Vocabulary ids are in order of training-split frequency (most frequent first, ties by name:
    :class:`~tagrank.data.records.Vocabulary`), so ``frequency`` is ascending ids and ``rare_first``
    descending. ``random`` draws one permutation per image from (run seed, manifest row): the same in
    every epoch and every rerun, and independent of the other images.
    """
    if order == "frequency":
        return sorted(ids)
    if order == "rare_first":
        return sorted(ids, reverse=True)
    if order == "random":
        return [ids[i] for i in np.random.default_rng([seed, row]).permutation(len(ids))]
    return ids


def annotator_lists(records: list[Record], vocab: Vocabulary, order: str, seed: int) -> torch.Tensor:
    """Each annotator's own list of every record as vocabulary ids [N, A, L] (-1 padded; A the most lists
    any record has), the training split's in ``order`` as its merged lists are: what a model learns from
    with ``annotators=each``. A record without ``lists`` (one list per image) has its merged list there."""
    encoded = [[vocab.encode(lst) for lst in (r.lists or [r.tags])] for r in records]
    encoded = [[reorder(ids, order, seed, row) for ids in lists] if r.split == "train" else lists
               for row, (r, lists) in enumerate(zip(records, encoded))]
    length = max(1, max(len(ids) for lists in encoded for ids in lists))
    out = torch.full((len(records), max(len(lists) for lists in encoded), length), -1, dtype=torch.long)
    for row, lists in enumerate(encoded):
        for a, ids in enumerate(lists):
            out[row, a, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


# Where the converters lived before tagrank/data/sources/: a run's saved config names its source class by
# that path, and tagrank-eval and tagrank-predict read the run's config.
MOVED_SOURCES = {f"tagrank.data.{m}.": f"tagrank.data.sources.{m}."
                 for m in ("boxes", "captions", "coco", "labelme", "pascal07")}


def make_source(class_path: str, args: dict[str, Any]) -> Source:
    """The ``Source`` named by ``data.source``, built from the other ``data.*`` keys it declares.

    Data configs are flat (``data.root``, ``data.order``, ``data.n_train``...): every key that is not a
    DataModule setting belongs to the source, and is checked against its fields here.
    """
    for old, new in MOVED_SOURCES.items():
        if class_path.startswith(old):
            class_path = new + class_path.removeprefix(old)
    try:
        cls = hydra.utils.get_class(class_path)
    except Exception as err:
        raise TagrankError(f"data.source={class_path!r} is not an importable class ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise TagrankError(f"data.source={class_path!r} is not a tagrank.data.sources.base.Source")
    names = {f.name for f in fields(cls)}
    hints = typing.get_type_hints(cls, include_extras=True)
    for key, value in args.items():
        if key not in names:
            raise TagrankError(f"data.{key} is not a setting of data.source={class_path}; expected one of "
                               f"{sorted(names)} or a DataModule setting")
        check_value(f"data.{key}", value, hints.get(key, Any))
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in args]
    if missing:
        raise TagrankError(f"data={cls.name}: set {', '.join('data.' + m for m in missing)} (e.g. data.{missing[0]}=/path)")
    return cls(**args)


class RankedTagDataModule(LightningDataModule):  # noqa: D101
    """Builds the source's dataset once (cached), the vocabulary from its training split, and loaders.

    Before loaders are asked for, the training script attaches either cached features
    (:meth:`use_features`) or an image transform (:meth:`use_images`), or both; with both, images
    can wait until :meth:`start_images` (the fine-tuning callback calls it just before the switch).
    """

    def __init__(self, source: str, cache_dir: str, min_tag_count: PositiveInt = 1, batch_size: PositiveInt = 16,
                 eval_batch_size: PositiveInt = 64, num_workers: NonNegativeInt = 0, pin_memory: bool = False,
                 image_cache: bool = True, train_order: TrainOrder = "human", **source_args: Any) -> None:
        super().__init__()
        check_value("data.train_order", train_order, TrainOrder)  # also when built without instantiate
        self.source = make_source(source, source_args)
        self.cache_dir, self.min_tag_count = Path(cache_dir).expanduser(), min_tag_count
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.image_cache, self.train_order = image_cache, train_order
        self.pixels: DecodedImages | None = None
        self.dataset_dir: Path | None = None
        self.records: list[Record] = []
        self.vocab: Vocabulary | None = None
        self.features: torch.Tensor | None = None
        self.trunk: torch.Tensor | None = None
        self.lists: torch.Tensor | None = None
        self.transform: ImageTransform | None = None
        self.images_on = torch.ones((), dtype=torch.bool).share_memory_()
        self._resume_at: dict | None = None

    @property
    def name(self) -> str:
        """Identifies the built dataset (source type + parameters): the feature-cache key uses it."""
        return self.source.cache_key()

    def prepare_data(self) -> None:
        self.dataset_dir = ensure_built(self.source, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        if self.dataset_dir is None:
            self.prepare_data()
        self.records = read_manifest(self.dataset_dir / MANIFEST)
        vocab = self._saved_vocabulary(self.dataset_dir / VOCAB)
        if vocab is None or vocab.min_tag_count != self.min_tag_count:
            vocab = Vocabulary.build(self.records, self.min_tag_count)
            vocab.save(self.dataset_dir / VOCAB)
        if len(vocab) == 0:
            raise TagrankError(f"{self.dataset_dir / MANIFEST}: no tag is seen data.min_tag_count={self.min_tag_count} "
                               "times in the training split; lower data.min_tag_count or add data")
        for split in SPLITS:
            if not any(r.split == split for r in self.records):
                raise TagrankError(f"{self.dataset_dir / MANIFEST}: the {split} split is empty")
        self.vocab = vocab
        encoded = [vocab.encode(r.tags) for r in self.records]
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # the run's seed (seed_everything sets it before setup)
        encoded = [reorder(ids, self.train_order, seed, row) if r.split == "train" else ids
                   for row, (r, ids) in enumerate(zip(self.records, encoded))]
        self.max_len = max(1, max(len(e) for e in encoded))
        self.targets = torch.full((len(encoded), self.max_len), -1, dtype=torch.long)
        for row, ids in enumerate(encoded):
            self.targets[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        self.lists = annotator_lists(self.records, vocab, self.train_order, seed)
        root = self.source.image_root(self.dataset_dir)
        self.paths = [root / r.image for r in self.records]

    @staticmethod
    def _saved_vocabulary(path: Path) -> Vocabulary | None:
        """The vocabulary saved beside the manifest, or None when there is none or it is damaged."""
        if not (path.exists() or cache.check_path(path).exists()):
            return None
        try:
            return Vocabulary.load(path)
        except cache.Unverified as err:
            log.warning("dataset cache %s; rebuilding the vocabulary from the manifest", err)
            return None

    @property
    def num_tags(self) -> int:
        self.setup()
        return len(self.vocab)

    def rows(self, split: str) -> list[int]:
        return [i for i, r in enumerate(self.records) if r.split == split]

    def use_features(self, features: torch.Tensor | None) -> None:
        if features is not None and len(features) != len(self.records):
            raise TagrankError(f"feature cache has {len(features)} rows for {len(self.records)} images")
        self.features = features

    def use_trunk(self, trunk: torch.Tensor | None) -> None:
        """Serve the frozen trunk's cached outputs (``backbone.finetune_blocks``) where images would be
        served, under the same :meth:`start_images`: they are what the images give below the top."""
        if trunk is not None and len(trunk) != len(self.records):
            raise TagrankError(f"trunk cache has {len(trunk)} rows for {len(self.records)} images")
        self.trunk = trunk

    def use_images(self, transform: ImageTransform | None, deferred: bool = False) -> None:
        """Give items images made by ``transform``; ``deferred``: only after :meth:`start_images` (features
        before). With ``data.image_cache`` (the default) they are read from the decoded-image cache,
        built now if it is not there yet."""
        self.transform = transform
        self.pixels = self.decoded_images(transform) if transform is not None and self.image_cache else None
        self.images_on.fill_(not deferred)

    def decoded_images(self, transform: ImageTransform) -> DecodedImages:
        """Every image of the dataset, decoded and resized by ``transform``: the cache (tagrank.data.images)."""
        self.setup()
        return cached_images(self.paths, self.cache_dir, self.name, transform, load_image)

    def start_images(self) -> None:
        """From now on every item also carries its image (takes effect in running loader workers too)."""
        self.images_on.fill_(True)

    @property
    def images_started(self) -> bool:
        return (self.transform is not None or self.trunk is not None) and bool(self.images_on)

    def dataset(self, split: str) -> RankedTagDataset:
        self.setup()
        if self.features is None and self.transform is None and self.trunk is None:
            raise TagrankError("the data module has neither cached features nor an image transform attached")
        return RankedTagDataset(self.rows(split), self.targets, self.paths, self.features, self.transform,
                                self.images_on, self.pixels, self.trunk, self.lists)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # Seeded, resumable order for training; unpadded shards for evaluation under DDP (samplers.py).
        # The loader's own generator keeps data loading off the global RNG that dropout draws from.
        dataset = self.dataset(split)
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        if shuffle:
            sampler = ShuffleSampler(len(dataset), self.batch_size, seed, start=self._resume_at)
            self._resume_at = None
        else:
            sampler = EvalSampler(len(dataset))
        return DataLoader(dataset, batch_size=self.batch_size if shuffle else self.eval_batch_size,
                          sampler=sampler, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0, generator=torch.Generator().manual_seed(seed))

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: where training stands in this epoch's order."""
        if self.trainer is None or self.trainer.state.fn != "fit":
            return {}
        return {"train_order": trained_batches(self.trainer)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A run resumed from a checkpoint continues the epoch's order where the checkpoint left it."""
        if self.trainer is not None and self.trainer.state.fn == "fit":
            self._resume_at = state_dict.get("train_order")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

"""Convert a dataset to a manifest + vocabulary and print its statistics, or download one.

    tagrank-data data=coco data.root=/data/coco                  # into the cache, as tagrank-train does
    tagrank-data data=pascal07 data.root=/data/VOCdevkit data.tags=tags.txt out=/data/voc-tagrank
    tagrank-data data=boxes data.root=../shared/data/office-boxes data.on_error=skip
    tagrank-data download=coco download.dest=/data/coco          # official archives, checksums verified

Writes ``manifest.jsonl``, ``vocab.json``, ``stats.json`` (and ``skipped.json``, ``source.json``) into
``out`` or the cache folder, and prints: images per split, vocabulary before/after ``min_tag_count``,
mean/median list length, the 10 most frequent tags, images left with an empty list, and what was left
out (images without any tag; bad records skipped under ``data.on_error=skip``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tagrank import CONF_DIR
from tagrank.cli import command
from tagrank.config import NonNegativeInt, PositiveFloat, check_value, instantiate
from tagrank.data.sources.raw import SKIPPED
from tagrank.data.sources.download import download_dataset
from tagrank.data.records import MANIFEST, VOCAB, Vocabulary, dataset_stats, read_manifest
from tagrank.data.sources.base import Source, ensure_built
from tagrank.errors import TagrankError
from tagrank.files import atomic_write_text, file_in_the_way, make_temp_folder


def build_into(source: Source, out: Path) -> Path:
    """Build ``source`` into ``out`` (replacing an older tagrank dataset there, never other files)."""
    out = out.expanduser().resolve()
    blocker = file_in_the_way(out)
    if blocker is not None:
        raise TagrankError(f"out={out}: {blocker} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise TagrankError(f"out={out} exists and is not a tagrank dataset folder; choose an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = make_temp_folder(out.parent, out.name)
    try:
        built = ensure_built(source, scratch)
        if out.exists():
            shutil.rmtree(out)
        built.rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def statistics(dataset_dir: Path, min_tag_count: int) -> dict:
    records = read_manifest(dataset_dir / MANIFEST)
    vocab = Vocabulary.build(records, min_tag_count)
    vocab.save(dataset_dir / VOCAB)
    stats = dataset_stats(records, vocab)
    skipped = dataset_dir / SKIPPED
    stats["left_out"] = json.loads(skipped.read_text()) if skipped.is_file() else {}
    atomic_write_text(dataset_dir / "stats.json", json.dumps(stats, indent=1))
    return stats


def format_stats(name: str, dataset_dir: Path, image_root: Path, stats: dict) -> str:
    images, left = stats["images"], stats["left_out"]
    lines = [f"{name}: {dataset_dir}  (image paths relative to {image_root})",
             f"  images       {' | '.join(f'{s} {n}' for s, n in images.items())} | total {sum(images.values())}"]
    if left:
        kinds = ", ".join(f"{k} {n}" for k, n in left["skipped"].items())
        lines.append(f"  left out     {left['no_tags']} without any tag; {left['skipped_total']} bad records skipped"
                     + (f" ({kinds})" if kinds else ""))
    top = ", ".join(f"{t} {n}" for t, n in stats["top_tags"])
    lines += [f"  vocabulary   {stats['vocab_before_filter']} tags in the training split, {stats['vocab_after_filter']} "
              f"kept (seen >= {stats['min_tag_count']} times)",
              f"  list length  mean {stats['mean_list_length']:.2f}, median {stats['median_list_length']} (kept tags)",
              f"  top tags     {top}",
              f"  empty lists  {stats['empty_after_filter']} images have no kept tag"]
    return "\n".join(lines)


def download_archives(d: DictConfig) -> list[dict]:
    """The download settings checked before anything is fetched; the archives as plain dicts."""
    check_value("download.timeout", d.timeout, PositiveFloat)
    check_value("download.retries", d.retries, NonNegativeInt)
    for key in ("keep_archives", "allow_unverified"):
        check_value(f"download.{key}", d[key], bool)
    wanted = "{url: <address>, md5: <hex>} (or sha256: <hex>)"
    if not OmegaConf.is_list(d.archives):
        raise TagrankError(f"download.archives={d.archives!r}: expected a list of {wanted}")
    archives = OmegaConf.to_container(d.archives, resolve=True)
    for i, archive in enumerate(archives):
        if not isinstance(archive, dict) or not isinstance(archive.get("url"), str):
            raise TagrankError(f"download.archives[{i}]={archive!r}: expected {wanted}")
    return archives


def prepare(cfg: DictConfig) -> dict | None:
    if cfg.get("download"):
        d = cfg.download
        dest = download_dataset(d.name, download_archives(d), d.dest,
                                keep_archives=d.keep_archives, timeout=d.timeout, retries=d.retries,
                                allow_unverified=d.allow_unverified)
        print(f"{d.name}: downloaded into {dest}\nconvert it with: tagrank-data data={d.name} data.root={dest}")
    if not cfg.get("data"):
        if cfg.get("download"):
            return None
        names = sorted(p.stem for p in (Path(CONF_DIR) / "data").glob("*.yaml"))
        raise TagrankError(f"set data=<{'|'.join(names)}> (and data.root=<folder>), or download=<coco|pascal07>")
    dm = instantiate(cfg.data, "data")
    dataset_dir = build_into(dm.source, Path(cfg.out)) if cfg.get("out") else ensure_built(dm.source, dm.cache_dir)
    stats = statistics(dataset_dir, dm.min_tag_count)
    print(format_stats(dm.source.name, dataset_dir, dm.source.image_root(dataset_dir), stats))
    if stats["vocab_after_filter"] == 0:
        raise TagrankError(f"{dataset_dir / MANIFEST}: no tag is seen data.min_tag_count={dm.min_tag_count} times in "
                           "the training split; lower data.min_tag_count or add data")
    return stats


main = command("data", prepare)


if __name__ == "__main__":
    main()

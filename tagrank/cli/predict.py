"""Tag your own photos with a trained model: each photo's ranked tags, with the model's score for each.

    tagrank-predict ckpt_path=<run>/checkpoints/best.ckpt images=photos/          # a folder, a file or a glob
    tagrank-predict ckpt_path=... images='photos/**/*.jpg' top_k=5 out=preds.jsonl  # or out=preds.csv
    tagrank-predict ckpt_path=<scorer run>/checkpoints/best.ckpt images=photos/ stop=true   # as many as it keeps

The tag names and the image size come from the checkpoint (``tagrank_inputs``, see
:mod:`tagrank.checkpoint`); no dataset is read. Photos go through the same resize as in
training and the model's own backbone (a fine-tuned one too), and are ranked by the model's ``rank``: the
lists are those ``tagrank-eval`` writes to ``predictions.jsonl`` for the same photos. A file that is not
a readable image is reported, skipped and counted.

``stop=true``: each photo's list ends where the model's own stop rule ends it (the scorer: the tags whose
probability reaches the threshold chosen on the validation split, at least one, at most ``top_k``; the
captioning Naive-RNN: its END tag, where it always stops) — the sets the test table's set precision /
recall / F1 score. A model without a rule is refused rather than silently giving ``top_k`` tags.
"""

from __future__ import annotations

import csv
import glob
import inspect
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from tagrank import checkpoint
from tagrank.cli import command
from tagrank.config import PositiveInt, check_value, instantiate
from tagrank.data.datamodule import image_transform, load_image
from tagrank.data.images import progress
from tagrank.errors import TagrankError
from tagrank.files import atomic_write_text, check_writable
from tagrank.models.base import RankedTagger

log = logging.getLogger("tagrank")

OUT_FORMATS = (".jsonl", ".csv")


@dataclass
class Tagger:
    """A trained model with what using it needs: its tag names and the image size it was trained at."""

    model: RankedTagger
    tags: list[str]
    image_size: int
    checkpoint: Path

    @property
    def score_meaning(self) -> str:
        """What a score is for this method: the first sentence of its ``tag_scores`` docstring."""
        sentence = " ".join(inspect.getdoc(self.model.tag_scores).split()).split(". ")[0].rstrip(".")
        return sentence[0].lower() + sentence[1:]


def load_tagger(cfg: DictConfig) -> Tagger:
    """The model of ``cfg.ckpt_path`` in eval mode with its list length set to ``cfg.top_k`` (checked
    against its vocabulary), its tag names and image size."""
    ckpt = Path(cfg.ckpt_path).expanduser()
    if not ckpt.is_file():
        raise TagrankError(f"ckpt_path={str(ckpt)!r} does not exist; pass <run>/checkpoints/best.ckpt")
    model_class = hydra.utils.get_class(checkpoint.model_class(ckpt))
    model = model_class.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    top_k = model.top_k if cfg.top_k is None else cfg.top_k
    check_value("top_k", top_k, PositiveInt)
    if top_k > model.num_tags:
        raise TagrankError(f"top_k={top_k} is out of range: expected 1 to {model.num_tags} (the model's vocabulary)")
    model.top_k = top_k
    if cfg.get("stop") and model.stop_rule() is None:
        raise TagrankError(f"stop=true: {ckpt} ({type(model).__name__}) has no stop rule, it names top_k tags; the "
                           "scorer has one once validated in training (its threshold), the captioning Naive-RNN always "
                           "(its END tag)")
    tags, image_size = saved_inputs(ckpt, cfg)
    checkpoint.check_vocabulary(ckpt, model.num_tags, tags, "its vocabulary", "retrain it or evaluate it on its own data")
    return Tagger(model, tags, image_size, ckpt)


def saved_inputs(ckpt: Path, cfg: DictConfig) -> tuple[list[str], int]:
    """Tag names and image size: from the checkpoint, or for one written before tagrank kept them there,
    from its run's config (``<run>/.hydra/config.yaml``) and that run's dataset, which is then read."""
    inputs = checkpoint.inputs(checkpoint.load(ckpt))
    if inputs:
        return inputs
    run_cfg_path = ckpt.parent.parent / ".hydra" / "config.yaml"
    if not run_cfg_path.is_file():
        raise TagrankError(f"{ckpt} holds no tag names (written before tagrank kept them in checkpoints) and its "
                           f"run config {run_cfg_path} is absent: evaluate or retrain it with this version")
    run_cfg = OmegaConf.load(run_cfg_path)
    log.warning("%s holds no tag names (written before tagrank kept them in checkpoints): reading the vocabulary "
                "of its run's data (%s, from %s)", ckpt, run_cfg.data.source, run_cfg_path)
    with open_dict(cfg):
        cfg.data = run_cfg.data  # resolved against this command's paths (paths.cache_dir), as tagrank-eval does
    dm = instantiate(cfg.data, "data")
    dm.setup()
    return list(dm.vocab.tags), int(run_cfg.backbone.image_size)


def unknown_targets(images: torch.Tensor) -> torch.Tensor:
    """A batch's ``target`` when the ground truth is unknown: no tag (-1), one place per image."""
    return torch.full((images.shape[0], 1), -1, dtype=torch.long, device=images.device)


def image_files(spec: str) -> list[Path]:
    """The files ``images=`` names: a file, a folder's files (not its subfolders'), or a glob's files."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise TagrankError(f"images={spec!r}: the folder holds no files")
        return files
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise TagrankError(f"images={spec!r}: the pattern matches no file")
        return files
    raise TagrankError(f"images={spec!r}: no such file or folder (expected an image, a folder or a glob pattern)")


@torch.inference_mode()
def tag_photos(tagger: Tagger, files: list[Path], batch_size: int, stop: bool = False) -> tuple[list[dict], list[Path]]:
    """Each readable photo's ranked tags ``{"image", "tags": [{"tag", "score"}...]}``, and the files skipped.

    Decoded on a few threads (PIL releases the GIL), resized to uint8 exactly as the training images
    were, and run through the backbone in channels-last memory format as feature extraction does.
    """
    model = tagger.model
    model.backbone.to(memory_format=torch.channels_last)
    transform = image_transform(tagger.image_size, model.backbone.mean, model.backbone.std)

    def decode(path: Path) -> torch.Tensor | None:
        try:
            return transform.resize(load_image(path)).as_subclass(torch.Tensor)
        except TagrankError as err:
            log.warning("skipped %s", err)
            return None

    results, skipped = [], []
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, progress(total=len(files), desc="tagging") as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            decoded = list(pool.map(decode, chunk))
            skipped += [p for p, x in zip(chunk, decoded) if x is None]
            good = [(p, x) for p, x in zip(chunk, decoded) if x is not None]
            if good:
                images = torch.stack([x for _, x in good]).contiguous(memory_format=torch.channels_last)
                batch = {"image": images, "target": unknown_targets(images)}
                batch["computed_features"] = model.image_features(batch)  # one backbone pass for both below
                ids, scores = model.scored_rank(batch)
                if stop:  # -1 where the rule ends the list; such places are left out below
                    ids = model.predicted_set(batch, ids)
                for (path, _), row_ids, row_scores in zip(good, ids.tolist(), scores.tolist()):
                    results.append({"image": str(path), "tags": [{"tag": tagger.tags[i], "score": s}
                                                                 for i, s in zip(row_ids, row_scores) if i >= 0]})
            bar.update(len(chunk))
    return results, skipped


def format_predictions(results: list[dict], suffix: str) -> str:
    """JSON lines (one photo a line) or CSV (one tag a row: image, rank, tag, score)."""
    if suffix == ".jsonl":
        return "".join(json.dumps(r) + "\n" for r in results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "rank", "tag", "score"])
    for r in results:
        writer.writerows([r["image"], rank, t["tag"], t["score"]] for rank, t in enumerate(r["tags"], start=1))
    return buffer.getvalue()


def print_table(results: list[dict]) -> None:
    width = min(max(len(r["image"]) for r in results), 60)
    for r in results:
        tags = ", ".join(f"{t['tag']} ({t['score']:.3g})" for t in r["tags"])
        print(f"{r['image']:<{width}}  {tags}")


def predict(cfg: DictConfig) -> list[dict]:
    out = Path(cfg.out).expanduser() if cfg.out else None
    if out is not None and out.suffix not in OUT_FORMATS:
        raise TagrankError(f"out={cfg.out!r}: expected a file ending in {' or '.join(OUT_FORMATS)}")
    if out is not None:  # before any photo is tagged, not after
        check_writable(out, "out")
    check_value("batch_size", cfg.batch_size, PositiveInt)
    stop = cfg.get("stop", False)
    check_value("stop", stop, bool)
    files = image_files(str(cfg.images))
    tagger = load_tagger(cfg)
    results, skipped = tag_photos(tagger, files, cfg.batch_size, stop)
    if not results:
        raise TagrankError(f"images={cfg.images!r}: none of the {len(files)} files is a readable image")
    length = f"up to {tagger.model.top_k} tags, {tagger.model.stop_rule()}" if stop else f"top {tagger.model.top_k} tags"
    print(f"{tagger.checkpoint}: {length}; score = {tagger.score_meaning}")
    print_table(results)
    summary = f"{len(results)} photo{'s' * (len(results) != 1)} tagged"
    print(summary + (f", {len(skipped)} file{'s' * (len(skipped) != 1)} skipped (not readable images: see the warnings)" if skipped else ""))
    if out is not None:
        atomic_write_text(out, format_predictions(results, out.suffix))
        print(f"wrote {out}")
    return results


main = command("predict", predict)


if __name__ == "__main__":
    main()

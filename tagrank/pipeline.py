"""The pieces ``train`` and ``eval`` share: data, model, inputs, trainer, and the report they write."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from omegaconf import DictConfig, OmegaConf

from tagrank import checkpoint
from tagrank.callbacks import NonFiniteGuard, RandomState, SlurmRequeue
from tagrank.checkpoint import ModelInputs, RunSettings
from tagrank.config import PositiveInt, check_value, instantiate
from tagrank.dashboard import WANDB_TARGET, wandb_run_args
from tagrank.data.datamodule import RankedTagDataModule, image_transform
from tagrank.data.features import cached_features
from tagrank.data.synthetic import RENDER_SIZE
from tagrank.errors import TagrankError
from tagrank.files import atomic_write, atomic_write_text, torch_saver
from tagrank.loo import format_loo, loo_summary
from tagrank.metrics import format_table
from tagrank.models.backbones import BACKBONES, load_pretrained, resolve_weights
from tagrank.models.frequency import frequency_prior

log = logging.getLogger("tagrank")

# What to do when a run's folder (checkpoints, metrics.json, predictions.jsonl) is full or read-only.
RUN_OUTPUT_HINT = "free space there, or set TAGRANK_LOGS (or hydra.run.dir) to a writable folder with space"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file and rename it: a killed run never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_write(Path(path), torch_saver(checkpoint), RUN_OUTPUT_HINT)


def build_data(cfg: DictConfig) -> RankedTagDataModule:
    dm = instantiate(cfg.data, "data")  # settings checked; nothing read or built yet
    dm.setup()
    return dm


def check_backbone(cfg: DictConfig) -> None:
    """The backbone group's settings, checked before any data work (its weights file: ``resolve_weights``)."""
    node = cfg.backbone
    if node.name not in BACKBONES:
        raise TagrankError(f"backbone.name={node.name!r} is unknown; expected one of {sorted(BACKBONES)}")
    for key in ("image_size", "feature_batch_size"):
        check_value(f"backbone.{key}", node[key], PositiveInt)
    blocks = node.get("finetune_blocks")
    if blocks is not None:
        check_value("backbone.finetune_blocks", blocks, PositiveInt)
        if not hasattr(BACKBONES[node.name], "top_modules"):
            raise TagrankError(f"backbone.finetune_blocks={blocks}: backbone={node.name} has no blocks to split; "
                               "it is for the EfficientNet-Lite backbones (null fine-tunes the whole backbone)")
        BACKBONES[node.name].check_top_blocks(blocks)


def build_model(cfg: DictConfig, num_tags: int) -> LightningModule:
    """The configured method with the backbone's pretrained weights loaded (from disk, never the web)."""
    model = instantiate(cfg.model, "model", num_tags=num_tags)
    load_pretrained(model.backbone, resolve_weights(cfg.backbone.name, cfg.backbone.weights))
    model.finetune_blocks = cfg.backbone.get("finetune_blocks")
    return model


def state_digest(module: torch.nn.Module) -> str:
    """Hash of a module's weights: the feature cache follows the weights actually used (also fine-tuned ones)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def attach_inputs(cfg: DictConfig, dm: RankedTagDataModule, model: LightningModule, need_images: bool) -> None:
    """Give the data module cached features (frozen backbone) and, if it will be fine-tuned, images
    (decoded only from just before the switch: see StagedFinetuning).

    A model whose backbone was already fine-tuned gets images only: caching features of every
    fine-tuned checkpoint would fill the cache with entries no other run can use.

    With ``backbone.finetune_blocks`` the frozen trunk's outputs (cached once, like the features) stand in
    for the images. They are exactly what the images would give below the top: the image transform is
    deterministic (a square resize, no random augmentation) and the trunk is frozen, BatchNorm included.
    A transform that drew random crops or flips (``deterministic`` false) gets images at every step
    instead, through the whole network with only the top trainable: the same training, not cached.
    """
    bb = model.backbone
    transform = image_transform(cfg.backbone.image_size, bb.mean, bb.std)
    if bool(getattr(model, "backbone_finetuned", False)):
        dm.use_features(None)
        dm.use_images(transform)
        return
    blocks = getattr(model, "finetune_blocks", None)
    trunk = need_images and blocks is not None and transform.deterministic
    digest = state_digest(bb)
    dm.use_images(transform if need_images and not trunk else None, deferred=True)  # StagedFinetuning starts them
    cached = dict(backbone=bb, backbone_name=cfg.backbone.name, weights_digest=digest, image_size=cfg.backbone.image_size,
                  transform=transform, batch_size=cfg.backbone.feature_batch_size, num_workers=dm.num_workers)
    dm.use_features(cached_features(dm, **cached, grid=getattr(model, "feature_grid", None)))
    dm.use_trunk(cached_features(dm, **cached, top_blocks=blocks) if trunk else None)


def planned_steps(cfg: DictConfig, dm: RankedTagDataModule) -> int:
    max_steps = cfg.trainer.get("max_steps", -1) or -1
    if max_steps > 0:
        return max_steps
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is None:
        max_epochs = 1000  # Lightning's default when neither limit is set
    if max_epochs < 0:
        return sys.maxsize  # no limit: the run will reach any switch
    return math.ceil(len(dm.rows("train")) / dm.batch_size) * max_epochs


# Settings that say where files are or how fast to work, not what a run trains: a resume may change them.
WHERE_AND_HOW = {"data.cache_dir", "data.num_workers", "data.eval_batch_size", "data.image_cache", "data.root",
                 "data.tags", "data.vocabulary", "data.image_list", "backbone.weights", "backbone.feature_batch_size"}


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """What a run trains on and with besides the model's hyperparameters: ``data.*`` and ``backbone.*``
    (flat, resolved, without WHERE_AND_HOW) and the seed."""
    flat: dict[str, Any] = {"seed": cfg.get("seed")}
    for section in ("data", "backbone"):
        for key, value in OmegaConf.to_container(cfg.get(section) or {}, resolve=True).items():
            if f"{section}.{key}" not in WHERE_AND_HOW:
                flat[f"{section}.{key}"] = value
    # data.image_size is the old name of data.render_size (issue 25): saved and compared under the new name,
    # so the old command line resumes its own checkpoint and a checkpoint says the size the scenes were drawn at
    old = flat.pop("data.image_size", None)
    if old is not None and flat.get("data.render_size") in (old, RENDER_SIZE):
        flat["data.render_size"] = old
    elif old is not None:  # both names, disagreeing: the data's own check says so in one line
        flat["data.image_size"] = old
    return flat


def check_trained_with(ckpt: Path, here: dict[str, Any], named: str, advice: str) -> None:
    """Refuse a checkpoint trained with other values of the settings in ``here`` (``model.<hparam>``,
    ``data.*``, ``backbone.*``, ``seed``), in one line that names them and gives the overrides: "<named>
    was trained with other settings (...): <advice>, k=v ...". Settings a checkpoint does not hold
    (written by an older tagrank) are not compared."""
    there = checkpoint.trained_with(checkpoint.load(ckpt))
    differ = [k for k in here if k in there and _plain(there[k]) != _plain(here[k])]
    if differ:
        raise TagrankError(f"ckpt_path={named} was trained with other settings ("
                           + "; ".join(f"{k}={there[k]!r} there, {here[k]!r} here" for k in differ)
                           + f"): {advice}, " + " ".join(f"{k}={_override(there[k])}" for k in differ))


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _override(value) -> str:
    """``value`` as a Hydra command-line override writes it."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def build_trainer(cfg: DictConfig, **overrides: Any) -> Trainer:
    """The configured Trainer, plus what every run gets: atomic checkpoint writes, exact resumption
    (random state), a stop before diverged weights reach a checkpoint, the tag names and image size in
    every checkpoint (ModelInputs) with the settings it was trained with (RunSettings), and under SLURM a checkpoint
    and requeue on the pre-timeout signal. A WandbLogger gets the run directory's run id (resumed)."""
    callbacks = [instantiate(node, f"callbacks.{name}") for name, node in (cfg.get("callbacks") or {}).items() if node]
    callbacks += [RandomState(), NonFiniteGuard(), ModelInputs(cfg.backbone.image_size), RunSettings(run_settings(cfg))]
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node:
            extra = wandb_run_args(node, cfg) if node.get("_target_") == WANDB_TARGET else {}
            loggers.append(instantiate(node, f"logger.{name}", **extra))
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # SIGUSR1 before the time limit (launcher=slurm asks sbatch for it): save <run>/hpc_ckpt_N.ckpt
        # and requeue; the requeued job runs in the same directory and resumes from it.
        plugins.append(SLURMEnvironment(auto_requeue=False))
        callbacks.append(SlurmRequeue(signal.SIGUSR1))
    trainer_cfg = OmegaConf.merge(cfg.trainer, overrides)
    if trainer_cfg.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        # Lightning's own default, but on stderr with the log lines: stdout keeps the metrics tables.
        callbacks.append(RichProgressBar(console_kwargs={"stderr": True}) if _RICH_AVAILABLE else TQDMProgressBar())
    return instantiate(trainer_cfg, "trainer", callbacks=callbacks, logger=loggers or False, plugins=plugins)


def keep_previous_csv(trainer: Trainer) -> None:
    """A resumed run writes into the same csv/ folder, where CSVLogger would delete the metrics.csv of
    the sessions before when fitting starts; keep it as metrics-1.csv, metrics-2.csv, ... instead (rank 0).

    Called just before ``fit``, once every check has passed: a run that fails to start leaves the
    folder of the run it resumed as it was.
    """
    for logger in trainer.loggers if rank_zero_only.rank == 0 else []:
        folder = Path(logger.log_dir) if isinstance(logger, CSVLogger) else None
        if folder is not None and (folder / "metrics.csv").is_file():
            n = 1 + len(list(folder.glob("metrics-*.csv")))
            os.replace(folder / "metrics.csv", folder / f"metrics-{n}.csv")


def report(dm: RankedTagDataModule, model: LightningModule, metrics: dict[str, float], out_dir: Path,
           title: str, split: str = "test") -> dict[str, float]:
    """Print the Table-1 row of this run and write ``metrics.json`` and ``predictions.jsonl``.

    The frequency prior beside it is scored on exactly the images the model was (all of the split, or
    the first ones under ``trainer.limit_test_batches``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = {k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith("test/")}
    scored = sorted(row for row, _ in model.test_predictions)
    prior = frequency_prior(dm, scored, model.top_k, model.test_metrics.relevance)
    print(format_table(test, model.top_k, title=title))
    print(format_table(prior, model.top_k, title="frequency prior (training tags by frequency, same for every image)"))
    summary = {"split": split, "metrics": test, "frequency_prior": prior}
    vocab = dm.vocab
    lines = []
    for row, pred in sorted(model.test_predictions):
        rec = dm.records[row]
        line = {"image": rec.image, "truth": vocab.decode(vocab.encode(rec.tags)), "predicted": vocab.decode(pred)}
        if len(rec.lists) > 1:  # each annotator's own list, in the vocabulary: the LOO protocol reads them
            line["lists"] = [vocab.decode(vocab.encode(lst)) for lst in rec.lists]
        lines.append(line)
    loo = loo_summary([line["predicted"] for line in lines], [line.get("lists", []) for line in lines],
                      model.top_k, model.test_metrics.relevance)
    if loo is not None:  # only where the data has several lists per image (not the synthetic set)
        summary["loo"] = loo
        print(format_loo(loo, model.top_k, title))
    atomic_write_text(out_dir / "metrics.json", json.dumps(summary, indent=1), RUN_OUTPUT_HINT)
    atomic_write_text(out_dir / "predictions.jsonl", "".join(json.dumps(line) + "\n" for line in lines), RUN_OUTPUT_HINT)
    return test

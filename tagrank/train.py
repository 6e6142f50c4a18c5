"""Train a ranked-tag method, test its best checkpoint, and report the paper's metrics.

    tagrank-train                                   # the paper's LSTM on the embedded synthetic data
    tagrank-train model.hidden_size=512 trainer.max_steps=200
    tagrank-train ckpt_path=<run>/checkpoints/last.ckpt     # resume that run, in its directory
    tagrank-train trainer=gpu | trainer=ddp | logger=wandb
    tagrank-train -m seed=1,2,3 | hparams_search=lstm_optuna [launcher=slurm]   # sweeps

Reads top to bottom: compose config -> data (built once, cached) -> model with pretrained backbone ->
features (cached) -> fit -> test best checkpoint -> table + metrics.json. Returns the metric a sweeper
optimises (``optimized_metric``, default ``val/ndcg_mean``).
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import DictConfig, open_dict

from tagrank import CONF_DIR
from tagrank.config import in_multirun, run_cli
from tagrank.dashboard import check_wandb, log_config
from tagrank.errors import TagrankError
from tagrank.pipeline import attach_inputs, build_data, build_model, build_trainer, planned_steps, report

log = logging.getLogger("tagrank")


def train(cfg: DictConfig) -> float | None:
    L.seed_everything(cfg.seed, workers=True)
    check_wandb(cfg)
    ckpt_path = resume_point(cfg)
    out_dir = Path(cfg.paths.output_dir)

    dm = build_data(cfg)
    model = build_model(cfg, dm.num_tags)
    finetune_at = model.hparams.get("finetune_after_steps", 0)
    need_images = 0 < finetune_at < planned_steps(cfg, dm)
    if finetune_at > 0 and not need_images:
        log.warning("model.finetune_after_steps=%d is beyond this run's %d steps: the backbone stays frozen",
                    finetune_at, planned_steps(cfg, dm))
    # Computing the features (when they are not cached yet) must not move the random stream training
    # draws from: a run gives the same result with or without a feature cache.
    with extraction_device(cfg, model), torch.random.fork_rng(devices=[]):
        attach_inputs(cfg, dm, model, need_images)

    trainer = build_trainer(cfg)
    try:
        refuse_ddp_relaunch_in_multirun(trainer)
        log_config(trainer, cfg)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        fitted = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test") and not trainer.fast_dev_run:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            metrics = trainer.test(model, datamodule=dm, ckpt_path=best or None, verbose=False, weights_only=True)[0]
            if trainer.is_global_zero:  # under DDP every rank has the same (synchronised) numbers
                report(dm, model, metrics, out_dir, title=f"test split, {best or 'last weights'}")
    finally:
        _finish_wandb()  # Lightning has finalized the loggers ("success" or "failed")
    value = best_score(trainer, cfg.get("optimized_metric") or "", fitted)
    if value is not None and not math.isfinite(value):
        raise TagrankError(f"{cfg.optimized_metric} is {value}: this run diverged")  # a sweeper records a failed trial
    return value


def resume_point(cfg: DictConfig) -> str | None:
    """The checkpoint this run resumes from, and the run directory it continues.

    ``ckpt_path=<run>/checkpoints/last.ckpt`` continues ``<run>`` itself: its checkpoints (so the best
    checkpoint is still tracked), logs and W&B run (``<run>/wandb_id``). Under SLURM a requeued job
    resumes by itself from the newer of the preemption checkpoint ``<run>/hpc_ckpt_N.ckpt``
    (which Lightning picks up when ckpt_path is None) and ``<run>/checkpoints/last.ckpt``.
    """
    if cfg.get("ckpt_path"):
        ckpt = Path(cfg.ckpt_path).expanduser().resolve()
        if not ckpt.is_file():
            raise TagrankError(f"ckpt_path={cfg.ckpt_path!r} does not exist; pass <run>/checkpoints/last.ckpt to resume")
        run_dir = ckpt.parent.parent
        if ckpt.parent.name == "checkpoints" and run_dir != Path(cfg.paths.output_dir).resolve():
            log.info("resuming run %s (its checkpoints, logs and W&B run continue there)", run_dir)
            with open_dict(cfg):
                cfg.paths.output_dir = str(run_dir)
        return str(ckpt)
    run_dir = Path(cfg.paths.output_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if SLURMEnvironment.detect() and last.is_file():
        hpc = max(run_dir.glob("hpc_ckpt_*.ckpt"), key=lambda p: p.stat().st_mtime, default=None)
        if hpc is None or last.stat().st_mtime > hpc.stat().st_mtime:
            log.info("SLURM job restarted: resuming from %s", last)
            return str(last)
    return None  # under SLURM with a newer hpc_ckpt_N.ckpt, Lightning resumes from it by itself


@contextmanager
def extraction_device(cfg: DictConfig, model: L.LightningModule):
    """Compute the backbone features on the GPU when the run trains on one (they are cached either way)."""
    gpu = str(cfg.trainer.get("accelerator", "cpu")) in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    if gpu:  # each DDP process on its own GPU (Lightning has not set the device yet)
        model.backbone.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}")
    try:
        yield
    finally:
        if gpu:
            model.backbone.cpu()


def best_score(trainer: L.Trainer, metric: str, fitted: dict[str, float]) -> float | None:
    """What a sweeper optimises: the score of the checkpoint the run keeps (best.ckpt) when it is
    selected on that metric, not the last validation, which early stopping leaves past the best."""
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and ckpt.monitor == metric and ckpt.best_model_score is not None:
        return float(ckpt.best_model_score)
    return fitted.get(metric)


def refuse_ddp_relaunch_in_multirun(trainer: L.Trainer) -> None:
    """DDP on one machine re-runs the command line once per extra process; in a multirun that would
    re-run the whole sweep. Under SLURM (``launcher=slurm``) the processes are SLURM tasks instead."""
    launcher = getattr(trainer.strategy, "launcher", None)
    if in_multirun() and isinstance(launcher, _SubprocessScriptLauncher) and launcher.num_processes > 1:
        raise TagrankError("trainer=ddp starts its extra processes by re-running the command, which a multirun "
                           "(-m, hparams_search) cannot do: run one DDP training per command, or sweep with "
                           "launcher=slurm and hydra.launcher.tasks_per_node=<GPUs per node>")


def _finish_wandb() -> None:
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_cli(train, cfg)


if __name__ == "__main__":
    main()

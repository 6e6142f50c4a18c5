"""Train a ranked-tag method, test its best checkpoint, and report the paper's metrics.

    tagrank-train                                   # the paper's LSTM on the embedded synthetic data
    tagrank-train model.hidden_size=512 trainer.max_steps=200
    tagrank-train ckpt_path=<run>/checkpoints/last.ckpt     # resume

Reads top to bottom: compose config -> data (built once, cached) -> model with pretrained backbone ->
features (cached) -> fit -> test best checkpoint -> table + metrics.json. Returns the metric a sweeper
optimises (``optimized_metric``, default ``val/ndcg_mean``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

from tagrank import CONF_DIR
from tagrank.config import run_cli
from tagrank.errors import TagrankError
from tagrank.pipeline import attach_inputs, build_data, build_model, build_trainer, planned_steps, report

log = logging.getLogger("tagrank")


def train(cfg: DictConfig) -> float | None:
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise TagrankError(f"ckpt_path={cfg.ckpt_path!r} does not exist; pass <run>/checkpoints/last.ckpt to resume")

    dm = build_data(cfg)
    model = build_model(cfg, dm.num_tags)
    finetune_at = model.hparams.get("finetune_after_steps", 0)
    need_images = 0 < finetune_at < planned_steps(cfg, dm)
    if finetune_at > 0 and not need_images:
        log.warning("model.finetune_after_steps=%d is beyond this run's %d steps: the backbone stays frozen",
                    finetune_at, planned_steps(cfg, dm))
    attach_inputs(cfg, dm, model, need_images)

    trainer = build_trainer(cfg)
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        fitted = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test") and not trainer.fast_dev_run:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            metrics = trainer.test(model, datamodule=dm, ckpt_path=best or None, verbose=False)[0]
            report(dm, model, metrics, out_dir, title=f"test split, {best or 'last weights'}")
    finally:
        for lg in trainer.loggers:
            lg.finalize("success")
        _finish_wandb()
    value = fitted.get(cfg.get("optimized_metric") or "")
    return value


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

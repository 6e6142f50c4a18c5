"""Re-evaluate a checkpoint on a split and print the same table training printed.

    tagrank-eval ckpt_path=<run>/checkpoints/best.ckpt
    tagrank-eval ckpt_path=... split=val
    tagrank-eval ckpt_path=... data=synthetic data.source.seed=1     # another dataset

The data and backbone settings default to those of the run that wrote the checkpoint
(``<run>/.hydra/config.yaml``), so the numbers match what that run reported. The data may be another
dataset; the backbone settings must be the checkpoint's own (refused otherwise, in one line).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from tagrank.cli import command
from tagrank.config import Seed, check_value, instantiate
from tagrank.errors import TagrankError

log = logging.getLogger("tagrank")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    check_value("seed", cfg.seed, Seed)
    check_value("report", cfg.report, bool)  # before the evaluation, not after it
    if cfg.split not in ("val", "test"):
        raise TagrankError(f"split={cfg.split!r}: expected val or test")
    ckpt = Path(cfg.ckpt_path).expanduser()
    if not ckpt.is_file():
        there = "is a folder" if ckpt.is_dir() else "does not exist"
        raise TagrankError(f"ckpt_path={str(ckpt)!r} {there}; pass <run>/checkpoints/best.ckpt")
    # torch and Lightning (seconds to import) once the command line has passed its checks
    import lightning as L

    from tagrank import checkpoint
    from tagrank.pipeline import attach_inputs, build_trainer, check_backbone, check_trained_with, report, run_settings

    model_class = hydra.utils.get_class(checkpoint.model_class(ckpt))  # a file that is no checkpoint: said first
    run_cfg_path = ckpt.parent.parent / ".hydra" / "config.yaml"
    with open_dict(cfg):
        if run_cfg_path.is_file():
            run_cfg = OmegaConf.load(run_cfg_path)
            log.info("data and backbone settings from %s", run_cfg_path)
            for key in ("data", "backbone"):
                if cfg.get(key) is None:
                    cfg[key] = run_cfg[key]
        if cfg.get("data") is None or cfg.get("backbone") is None:
            raise TagrankError(f"{run_cfg_path} not found: pass data=<name> and backbone=<name> for this checkpoint")

    # The model's backbone comes from the checkpoint: features made by another (or at another size) would
    # be cached and scored under the wrong name.
    # (finetune_blocks only says how it was trained: the checkpoint holds the whole backbone)
    backbone = {k: v for k, v in run_settings(cfg).items() if k.startswith("backbone.") and k != "backbone.finetune_blocks"}
    check_trained_with(ckpt, backbone, str(cfg.ckpt_path), "evaluate it with the backbone it was trained with "
                       "(leave backbone out: it comes from its run)")

    L.seed_everything(cfg.seed, workers=True)
    # Settings first, data after (as in tagrank-train); the model is rebuilt from the checkpoint alone.
    dm = instantiate(cfg.data, "data")
    check_backbone(cfg)
    trainer = build_trainer(cfg, enable_checkpointing=False)  # it writes none (nor offers Lightning's litmodels)
    model = model_class.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    dm.setup()
    saved = checkpoint.inputs(checkpoint.load(ckpt))  # None: written before checkpoints kept the tag names
    checkpoint.check_vocabulary(ckpt, model.num_tags, dm.vocab.tags, f"data={cfg.data.source}",
                                "evaluate on the data it was trained on", saved[0] if saved else None)
    attach_inputs(cfg, dm, model, need_images=False)
    loader = dm.val_dataloader() if cfg.split == "val" else dm.test_dataloader()
    # The test loop collects predictions; pointed at the val loader it scores the val split.
    metrics = trainer.test(model, dataloaders=loader, verbose=False)[0]
    test = report(dm, model, metrics, Path(cfg.paths.output_dir), title=f"{cfg.split} split, {ckpt}", split=cfg.split)
    if cfg.report:  # report.html beside metrics.json (thumbnails and matplotlib only when asked)
        from tagrank.report.html import write_eval_report

        write_eval_report(cfg, ckpt, model, dm)
    return test


main = command("eval", evaluate)


if __name__ == "__main__":
    main()

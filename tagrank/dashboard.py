"""Weights & Biases around a run: offline unless asked, one run id per run directory, sweeps grouped.

- ``logger=wandb`` runs offline by default (``mode: ${oc.env:WANDB_MODE,offline}``); with
  ``WANDB_MODE=online`` and no credentials the run stops at once with a clear message instead of
  prompting for a key (:func:`check_wandb`).
- The run id is kept in ``<run>/wandb_id``: a run resumed in the same directory (``ckpt_path=`` or a
  SLURM requeue) continues the same W&B run instead of starting a new one (:func:`wandb_run_args`).
- In a multirun every trial is its own W&B run, grouped by the sweep directory's name.
- Tables and images wait for ``wandb sync`` in ``<run>/wandb/data`` (not in the home directory),
  unless ``WANDB_DATA_DIR`` is set.
- The composed config is logged with dotted keys (``model.lr``), beside Lightning's own
  hyperparameter logging of the model's arguments (:func:`log_config`).
- Two callbacks of the default set act only when a WandbLogger is present: NDCG@k and P@k against k
  (:class:`MetricCurves`) and a table of validation images with their tags (:class:`PredictionTable`).
- Table 1 of a sweep goes to a small "aggregate" run beside the trial runs (:func:`log_aggregate_run`).
- W&B is imported only where a W&B run is used: without ``logger=wandb``, a run never loads it.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from tagrank.config import in_multirun
from tagrank.errors import TagrankError
from tagrank.files import atomic_write_text

log = logging.getLogger("tagrank")

WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"
ID_FILE = "wandb_id"
USER_DATA_DIR = os.environ.get("WANDB_DATA_DIR")


def wandb_nodes(cfg: DictConfig) -> list[DictConfig]:
    return [node for node in (cfg.get("logger") or {}).values() if node and node.get("_target_") == WANDB_TARGET]


def has_credentials() -> bool:
    """Whether wandb would find an API key without asking: the environment or ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0].split(":")[0]
    try:
        path = os.environ.get("NETRC") or str(Path("~/.netrc").expanduser())
        if Path(path).is_file() and netrc.netrc(path).authenticators(host):
            return True
    except (OSError, netrc.NetrcParseError):
        pass
    return False


def check_wandb(cfg: DictConfig) -> None:
    """Fail fast, before any work, when an online W&B run could not log in (it would prompt or hang)."""
    for node in wandb_nodes(cfg):
        mode = str(node.get("mode") or "online")
        if mode == "online" and not has_credentials():
            raise TagrankError("logger=wandb with WANDB_MODE=online needs W&B credentials: run `wandb login` or set "
                               "WANDB_API_KEY; or leave WANDB_MODE unset (offline) and upload later with "
                               "`wandb sync <run>/wandb/offline-run-*`")


def run_id(run_dir: Path) -> str | None:
    """This run directory's W&B run id: read from ``<run>/wandb_id``, or made and written there (rank 0).

    Other ranks return None: they never create a W&B run (Lightning logs from rank 0 only).
    """
    path = Path(run_dir) / ID_FILE
    if rank_zero_only.rank != 0:
        return None
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    from wandb.sdk.lib.runid import generate_id

    atomic_write_text(path, generate_id() + "\n")
    return path.read_text().strip()


def wandb_run_args(node: DictConfig, cfg: DictConfig) -> dict[str, Any]:
    """Arguments added to a WandbLogger: the run directory's id (resumed if it exists), and in a
    multirun the sweep as group and the trial number in the name."""
    args: dict[str, Any] = {}
    if USER_DATA_DIR is None:
        # wandb stages logged tables and their images outside the run (~/.local/share/wandb) until
        # `wandb sync`; keep them in the run directory with everything else.
        os.environ["WANDB_DATA_DIR"] = str(Path(cfg.paths.output_dir).resolve() / "wandb" / "data")
    rid = run_id(Path(cfg.paths.output_dir))
    if rid:
        args.update(id=rid, resume="allow")
    if in_multirun():
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if node.get("group") is None:
            args["group"] = f"{cfg.task_name}-{Path(str(hc.sweep.dir)).name}"
        args["name"] = f"{node.get('name') or cfg.task_name}-{hc.job.num}"
    return args


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def log_config(trainer, cfg: DictConfig) -> None:
    """The composed config on the W&B run, as ``model.lr``-style keys (rank 0; the others have a dummy run)."""
    from lightning.pytorch.loggers import WandbLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers or rank_zero_only.rank != 0:
        return
    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that only resolves inside a Hydra job
        tree = OmegaConf.to_container(cfg, resolve=False)
    for lg in loggers:
        lg.experiment.config.update(flat(tree), allow_val_change=True)


def wandb_logger(trainer):
    """The run's WandbLogger on the process that writes (global rank 0), else None."""
    from lightning.pytorch.loggers import WandbLogger

    if not trainer.is_global_zero:
        return None
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


class MetricCurves(Callback):
    """With a WandbLogger: NDCG@k and P@k against k as a line plot, after each validation and the test."""

    def _log(self, trainer, stage: str) -> None:
        logger = wandb_logger(trainer)
        metrics = trainer.callback_metrics
        if logger is None or trainer.sanity_checking or f"{stage}/ndcg@1" not in metrics:
            return
        import wandb

        ks = sorted(int(k.split("@")[1]) for k in metrics if k.startswith(f"{stage}/ndcg@"))
        ys = [[float(metrics[f"{stage}/{name}@{k}"]) for k in ks] for name in ("ndcg", "p")]
        plot = wandb.plot.line_series(xs=ks, ys=ys, keys=["NDCG@k", "P@k"], title=f"{stage}: NDCG@k and P@k", xname="k")
        logger.experiment.log({f"{stage}/curves": plot, "trainer/global_step": trainer.global_step})

    def on_validation_end(self, trainer, pl_module) -> None:
        self._log(trainer, "val")

    def on_test_end(self, trainer, pl_module) -> None:
        self._log(trainer, "test")


class PredictionTable(Callback):
    """With a WandbLogger: after each validation, a table of the same ``num_images`` validation images
    (the first ones of the split) with their ground-truth and predicted ranked tags (``val/predictions``).
    """

    def __init__(self, num_images: int = 16, thumbnail: int = 128) -> None:
        self.num_images, self.thumbnail = num_images, thumbnail

    @torch.no_grad()
    def on_validation_end(self, trainer, pl_module) -> None:
        logger = wandb_logger(trainer)
        dm = trainer.datamodule
        if logger is None or trainer.sanity_checking or dm is None or self.num_images <= 0:
            return
        import wandb
        from tagrank.data.images import load_image
        from torch.utils.data import default_collate

        dataset = dm.dataset("val")
        items = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
        batch = {k: v.to(pl_module.device) for k, v in default_collate(items).items()}
        was_training = pl_module.training
        pl_module.eval()
        preds = pl_module.rank(batch).tolist()
        pl_module.train(was_training)
        rows = []
        for item, pred in zip(items, preds):
            row = int(item["index"])
            im = load_image(dm.paths[row])  # upright, as trained on
            im.thumbnail((self.thumbnail, self.thumbnail))
            image = wandb.Image(im, caption=dm.records[row].image)
            truth = dm.vocab.decode(dm.vocab.encode(dm.records[row].tags))
            rows.append([image, ", ".join(truth), ", ".join(dm.vocab.decode(pred))])
        logger.log_table("val/predictions", columns=["image", "truth", "predicted"], data=rows,
                         step=trainer.global_step)


def log_aggregate_run(out_dir: Path, name: str, group: str, config: dict[str, Any],
                      tables: dict[str, tuple[list[str], list[list[Any]]]], images: dict[str, Path],
                      summary: dict[str, float]) -> None:
    """One small W&B run (offline unless ``WANDB_MODE=online``) in ``out_dir/wandb`` of job type
    "aggregate", in W&B group ``group``: ``tables`` as wandb Tables (name -> columns, rows), ``images``
    as images, ``summary`` in its summary."""
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tagrank"), name=name, job_type="aggregate", group=group,
                     dir=str(out_dir), mode=os.environ.get("WANDB_MODE", "offline"), config=config)
    try:
        run.log({**{key: wandb.Table(columns=columns, data=rows) for key, (columns, rows) in tables.items()},
                 **{key: wandb.Image(str(path)) for key, path in images.items()}})
        for key, value in summary.items():
            run.summary[key] = value
    finally:
        wandb.finish()

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
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

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

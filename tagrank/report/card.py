"""What a training run is, said twice from the same facts: a few INFO lines as it starts (the run
summary) and ``<run>/README.md`` when it ends (its model card: data, vocabulary, backbone, method,
schedule, the test table, the command that made it and the commit), so a run directory explains itself
to someone who did not start it.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning import LightningModule, Trainer
from omegaconf import DictConfig, OmegaConf

import tagrank
from tagrank.data.datamodule import RankedTagDataModule
from tagrank.files import atomic_write_text
from tagrank.metrics import format_table
from tagrank.models.staged import finetune_step

log = logging.getLogger("tagrank")

CARD = "README.md"
NOT_HPARAMS = ("num_tags", "backbone")  # named on their own lines


def choice(group: str) -> str | None:
    """The option chosen for a config group (``data=flickr8k`` -> ``flickr8k``), inside a Hydra job."""
    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def schedule(planned: int, finetune_at: int, blocks: int | None = None) -> str:
    steps = "no step limit" if planned == sys.maxsize else f"at most {planned} steps"
    if finetune_at <= 0:
        return f"{steps}; the backbone stays frozen (no fine-tuning stage)"
    if finetune_at >= planned:
        return f"{steps}; the backbone stays frozen: model.finetune_after_steps={finetune_at} is beyond them"
    which = "the backbone is" if blocks is None else f"the backbone's last {blocks} blocks and head conv are"
    cached = "" if blocks is None else ", on the frozen trunk's cached output (backbone.finetune_blocks)"
    return f"{steps}; {which} fine-tuned from step {finetune_at} (model.finetune_after_steps){cached}"


def describe(cfg: DictConfig, dm: RankedTagDataModule, model: LightningModule, planned: int) -> dict[str, str]:
    """The run's settings that decide its numbers, one line each: the run summary and the card share them."""
    sizes = " / ".join(str(len(dm.rows(split))) for split in ("train", "val", "test"))
    where = cfg.data.get("root") or dm.dataset_dir
    hparams = ", ".join(f"{k}={v}" for k, v in model.hparams.items() if k not in NOT_HPARAMS)
    return {
        "data": f"{choice('data') or dm.source.name}: {sizes} train / val / test images ({where})",
        "vocabulary": f"{dm.num_tags} tags (data.min_tag_count={dm.min_tag_count})",
        "backbone": f"{cfg.backbone.name} at {cfg.backbone.image_size} px",
        "method": f"{choice('model') or type(model).__name__} ({type(model).__name__}): {hparams}",
        "schedule": schedule(planned, finetune_step(model), getattr(model, "finetune_blocks", None)),
        "seed": str(cfg.seed),
    }


def log_summary(out_dir: Path, facts: dict[str, str]) -> None:
    log.info("run %s", out_dir)
    for key, text in facts.items():
        log.info("  %-10s %s", key, text)


def command() -> str:
    """This job's command: the entry point and its overrides (in a sweep, this job's values)."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    return shlex.join(["tagrank-train", *overrides])


def git_commit(package: Path = Path(tagrank.__file__).resolve().parent) -> str:
    """The commit of the tagrank code that ran (``package``), "(dirty)" when its tracked files had changes."""
    package = Path(package).resolve()

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if top / "tagrank" == package:  # not an installed copy inside some other repository
            dirty = " (dirty)" if git("status", "--porcelain", "--untracked-files=no") else ""
            return git("rev-parse", "HEAD") + dirty
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown (not a git checkout)"


def first_command(out_dir: Path) -> str | None:
    """The command of the session that started this run directory, when this one resumed it (it runs
    in the directory of the checkpoint it continues, not in the one Hydra made for it)."""
    first = Path(out_dir) / ".hydra" / "overrides.yaml"
    if not HydraConfig.initialized() or not first.is_file():
        return None
    if Path(HydraConfig.get().runtime.output_dir).resolve() == Path(out_dir).resolve():
        return None
    return shlex.join(["tagrank-train", *OmegaConf.load(first)])


def write_card(out_dir: Path, facts: dict[str, str], trainer: Trainer, model: LightningModule,
               tested: str | None) -> Path:
    """``<run>/README.md``, written atomically at the end of a run (again by a resumed one, which
    names both commands). ``tested``: what the test split was scored with (None: not tested)."""
    out_dir = Path(out_dir)
    lines = [f"# tagrank run {out_dir.name}", "", f"Written by tagrank-train at the end of the run in `{out_dir}`.", ""]
    lines += [f"- **{key}**: {text}" for key, text in facts.items()]
    ckpt = trainer.checkpoint_callback
    best = ""
    if ckpt is not None and ckpt.best_model_path and ckpt.best_model_score is not None:
        best = f"; kept {Path(ckpt.best_model_path).name} ({ckpt.monitor} {float(ckpt.best_model_score):.4f})"
    finetuned = "yes" if getattr(model, "is_finetuned", False) else "no"
    lines.append(f"- **trained**: {trainer.global_step} step{'s' * (trainer.global_step != 1)}{best}; its backbone fine-tuned: {finetuned}")
    first = first_command(out_dir)
    if first:
        lines.append(f"- **command**: `{first}`")
        lines.append(f"- **resumed by**: `{command()}`")
    else:
        lines.append(f"- **command**: `{command()}`")
    lines.append(f"- **commit**: {git_commit()}")
    metrics = out_dir / "metrics.json"
    if tested and metrics.is_file():
        summary = json.loads(metrics.read_text())
        k = getattr(model, "top_k", 10)
        lines += ["", f"## Test ({tested})", "", "```text", format_table(summary["metrics"], k), "",
                  format_table(summary["frequency_prior"], k, title="frequency prior (training tags by frequency)"),
                  "```"]
    else:
        lines += ["", "Not tested (test=false, or a fast_dev_run)."]
    path = out_dir / CARD
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path

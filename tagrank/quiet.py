"""The one place where framework messages a user cannot act on are filtered out of a run's output.

Each filter names one message precisely (and where Python warnings come from, the module that emits
them), with the reason beside it; nothing else is silenced, so a new or actionable warning still
shows. :func:`quiet` is called by every entry point as its task starts (``tagrank.config.run_cli``,
also in each job of a sweep and each DDP process), not at import: code that imports tagrank as a
library keeps Lightning's messages as they are.
"""

from __future__ import annotations

import logging
import re
import warnings

# Python warnings: (message regex, category, module regex of the code that emits it), and why.
WARNINGS: list[tuple[str, type[Warning], str]] = [
    # torch >= 2.10 deprecates LeafSpec, which lightning 2.6's own pytree helper still builds: three
    # times a run, and only a newer Lightning can fix it.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    # RankedTagger.on_before_batch_transfer (the list lengths, read on the host) is meant to run with a
    # DataModule; Lightning says it will use the model's hook, which is what we want.
    (r"You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`",
     UserWarning, r"lightning\.pytorch\."),
    # The ranking metrics are logged with sync_dist=False on purpose: torchmetrics has already reduced
    # their sum states across processes, so every rank holds the exact value. Lightning warns per key.
    (r".*sync_dist=True.*when logging on epoch level in distributed setting", UserWarning,
     r"lightning\.pytorch\."),
    # The backbone is in eval mode on purpose (BatchNorm frozen: see RankedTagger.train); Lightning
    # warns about it at every fit.
    (r".*module\(s\) in eval mode at the start of training", UserWarning, r"lightning\.pytorch\."),
    # A SolvedTagger (frequency prior, SVMs) has nothing to optimise by gradient: one solve is its fit.
    (r".*configure_optimizers. returned .None., this fit will run with no optimizer", UserWarning,
     r"lightning\.pytorch\."),
    # A run resumed mid-epoch continues the epoch's order where its checkpoint left it: the DataModule
    # saves and restores it (RankedTagDataModule.state_dict), which Lightning's check of the loader misses.
    (r"You're resuming from a checkpoint that ended before the epoch ended and your dataloader is not resumable",
     UserWarning, r"lightning\.pytorch\.loops\.training_epoch_loop"),
    # Lightning sees `srun` on PATH (a machine with SLURM installed, such as `make slurm`'s) and suggests
    # launching with it; a run started by hand there is meant to be local, and a cluster run of tagrank
    # is launched by launcher=slurm (submitit's srun), where Lightning's SLURM environment is used.
    (r"The `srun` command is available on your system but is not used", UserWarning,
     r"lightning\.fabric\.plugins\.environments\.slurm"),
    # A resumed run's csv/ folder: "Previous log files ... will be deleted" is untrue here, as
    # pipeline.keep_previous_csv has kept the earlier sessions' metrics.csv as metrics-N.csv.
    (r"Experiment logs directory .* exists and is not empty", UserWarning, r"lightning\.fabric\.loggers\.csv_logs"),
    # A short run (the README's quick ones, tests) has fewer training batches an epoch than
    # log_every_n_steps (50): the training loss is still checked every step for divergence
    # (callbacks.NonFiniteGuard), and validation, the checkpoints and the test table are logged whatever
    # the interval; a user who wants the loss curve of such a run sets trainer.log_every_n_steps anyway.
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning,
     r"lightning\.pytorch\.loops\.fit_loop"),
]

# Only in a run that continues another (train.py installs it then): the folder is that run's own. In a
# new run the warning still shows (hydra.run.dir pointed at a folder with checkpoints in it).
RESUMING = (r"Checkpoint directory .* exists and is not empty", UserWarning,
            r"lightning\.pytorch\.callbacks\.model_checkpoint")

# Lightning's info lines (logger ``lightning.pytorch.utilities.rank_zero``), and why.
LIGHTNING_INFO = re.compile("|".join([
    # Advertisements for Lightning's cloud services (litlogger, litmodels); Lightning has no switch for
    # them (Lightning-AI/pytorch-lightning#21294) and tagrank never uploads anything.
    r"💡 Tip: For seamless cloud .*\[lit(logger|models)\]",
    # "GPU available: False, used: False" / "TPU available: False, using: 0 TPU cores": the run summary
    # names the device; "GPU available but not used" (a setting to change) is a warning and still shows.
    r"GPU available: ", r"TPU available: ",
    # "Restoring states from the checkpoint path at ..." and "Loaded model weights from the checkpoint at
    # ...", at every test and resume: the run's own lines name that checkpoint already (the test table's
    # header "test split, <best.ckpt>", tagrank-eval's ckpt_path, "resuming run ...").
    r"Restoring states from the checkpoint path at ", r"Loaded model weights from the checkpoint at ",
]))
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


def _not_noise(record: logging.LogRecord) -> bool:
    return not LIGHTNING_INFO.match(record.getMessage())


def quiet() -> None:
    """Install the filters above (once per process; calling it again changes nothing)."""
    for message, category, module in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    if _not_noise not in logger.filters:
        logger.addFilter(_not_noise)


def quiet_resumed() -> None:
    """The filter for a run that resumes into its own run directory (:data:`RESUMING`)."""
    message, category, module = RESUMING
    warnings.filterwarnings("ignore", message=message, category=category, module=module)

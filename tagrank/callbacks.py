"""Lightning callbacks that are part of tagrank's training recipe.

RandomState and NonFiniteGuard (added to every run by ``build_trainer``: exact resumption, no diverged
checkpoint), ChannelsLast (a default callback) and SlurmRequeue (under SLURM). Elsewhere, beside what
they serve: the staged fine-tuning schedule (tagrank.models.staged), what a checkpoint holds
(tagrank.checkpoint), the W&B dashboard callbacks (tagrank.dashboard).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from tagrank.errors import TagrankError

log = logging.getLogger(__name__)


class RandomState(Callback):
    """Keep the random generators' state in every checkpoint; a resumed run restores it before its first batch.

    Dropout draws from the global generators, so without this a run resumed from a checkpoint would
    train on different dropout masks than the run that was interrupted. Plain lists and tensors only,
    so checkpoints still load with ``weights_only=True``.
    """

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                "python": random.getstate()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict or None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, *rest = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


class NonFiniteGuard(Callback):
    """Stop a diverged run before a checkpoint can hold its weights: the training loss and every
    parameter that trains must be finite.

    Checking every step would stop the host for the device at every step (``bool(tensor)``); instead
    the losses are kept on the device and checked, with the parameters, every ``every_n_steps`` steps,
    before every checkpoint is written (``on_save_checkpoint`` runs before the file is: raising there
    writes nothing) and at the end of training. So ``last.ckpt`` and ``best.ckpt`` stay the last good
    state, and the message names the first step whose loss was not finite.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps
        self._losses: list[torch.Tensor] = []
        self._steps: list[tuple[int, int]] = []  # (global step, epoch) of each kept loss

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append(loss.detach())
            self._steps.append((trainer.global_step - 1, trainer.current_epoch))  # the step just taken
        if trainer.global_step % self.every_n_steps == 0:
            self.check(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if trainer.state.fn == "fit":
            self.check(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.check(trainer, pl_module)

    def check(self, trainer, pl_module) -> None:
        what = None
        if self._losses:
            bad = ~torch.isfinite(torch.stack(self._losses))
            if bool(bad.any()):
                first = int(bad.nonzero()[0, 0])
                step, epoch = self._steps[first]
                what = (f"training diverged at step {step} (epoch {epoch}): the training loss is "
                        f"{self._losses[first].item()}")
            self._losses, self._steps = [], []
        if what is None:
            params = [p for p in pl_module.parameters() if p.requires_grad]
            if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
                what = (f"training diverged at step {trainer.global_step} (epoch {trainer.current_epoch}): "
                        "the weights are not finite after the update")
        # Decided together: a loss can go non-finite on one rank only.
        if trainer.strategy.reduce_boolean_decision(what is not None, all=False):
            raise TagrankError(diverged_message(what or "another process diverged", trainer))


def diverged_message(what: str, trainer) -> str:
    ckpt = trainer.checkpoint_callback
    last = Path(ckpt.dirpath) / "last.ckpt" if ckpt is not None and ckpt.dirpath else None
    kept = f"the last good checkpoint is kept: {last}" if last and last.is_file() else "no checkpoint had been written"
    return f"{what}. Stopped; {kept}. Train again with a lower learning rate (e.g. model.lr)"


class ChannelsLast(Callback):
    """Backbone weights and image batches in channels-last memory format: faster convolutions on GPUs
    and on CPUs (oneDNN prefers it; see ``make bench``). Part of the default callbacks."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module.backbone.to(memory_format=torch.channels_last)

    def _convert(self, batch) -> None:
        for key in ("image", "trunk"):  # the trunk's cached output enters the top as the image would
            if isinstance(batch, dict) and isinstance(batch.get(key), torch.Tensor) and batch[key].dim() == 4:
                batch[key] = batch[key].contiguous(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._convert(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._convert(batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._convert(batch)


class SlurmRequeue(Callback):
    """Before a SLURM time limit (SIGUSR1, asked for by launcher=slurm): save ``<run>/hpc_ckpt_N.ckpt``
    at the next step boundary and requeue the job; the requeued job resumes from that checkpoint.

    Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``) saves inside the signal handler,
    at whatever point of a training step the signal lands, so a resumed run may repeat or skip part of
    a step. Here the handler only takes note, and the checkpoint is written where ``last.ckpt`` is.
    Training goes on until SLURM stops the job, as with Lightning's handler.
    """

    def __init__(self, signum: int = signal.SIGUSR1) -> None:
        self.signum, self._asked = signum, False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            signal.signal(self.signum, self._take_note)

    def _take_note(self, signum, frame) -> None:
        self._asked = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not trainer.strategy.reduce_boolean_decision(self._asked, all=False):
            return
        self._asked = False
        for lg in trainer.loggers:
            lg.save()
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        log.info("SLURM time limit near: saved %s at step %d", path, trainer.global_step)
        if trainer.is_global_zero:
            requeue()


def requeue() -> None:
    """``scontrol requeue`` this job (or this task of an array job)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    result = subprocess.run(["scontrol", "requeue", job], check=False)
    if result.returncode == 0:
        log.info("requeued SLURM job %s", job)
    else:
        log.warning("scontrol requeue %s failed with exit status %d", job, result.returncode)

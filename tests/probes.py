"""Callbacks the tests add to real runs (``+callbacks.<name>._target_=tests.probes.<Class>``)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback

from tagrank.pipeline import state_digest


class BackboneDigest(Callback):
    """Each process writes a hash of its backbone weights when training ends: under DDP the processes
    must hold the same fine-tuned backbone."""

    def on_train_end(self, trainer, pl_module) -> None:
        out = Path(trainer.default_root_dir) / f"backbone_rank{trainer.global_rank}.txt"
        out.write_text(state_digest(pl_module.backbone))


class BatchInputs(Callback):
    """Records, per training step, whether the batch carried images (``<run>/batch_inputs.txt``: one
    ``step:image|trunk|features`` per line): a run that fine-tunes later must not decode images before;
    ``trunk``: the frozen trunk's cached outputs (``backbone.finetune_blocks``)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        kind = "image" if "image" in batch else "trunk" if "trunk" in batch else "features"
        with open(Path(trainer.default_root_dir) / "batch_inputs.txt", "a") as f:
            f.write(f"{trainer.global_step}:{kind}\n")


class StepDelay(Callback):
    """Sleeps after every training step: a tiny run lasts long enough for a test to signal or requeue its
    SLURM job mid-training. Changes no result (it touches neither the weights nor a random state).
    ``until_requeued``: only until SLURM first starts the job again (``SLURM_RESTART_COUNT`` > 0)."""

    def __init__(self, seconds: float = 0.5, until_requeued: bool = False) -> None:
        self.seconds, self.until_requeued = seconds, until_requeued

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        import os
        import time

        if not (self.until_requeued and int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0):
            time.sleep(self.seconds)

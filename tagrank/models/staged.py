"""The paper's staged fine-tuning schedule, in one place: the backbone stays frozen for
``model.finetune_after_steps`` optimiser steps (trained on cached features), then joins training at its
own learning rate and weight decay (on images, decoded from just before the switch).

Its settings are the ``finetune_*`` hyperparameters of the methods trained by gradient steps
(:class:`~tagrank.models.base.StagedTagger`), set once for all of them in ``conf/model/_staged.yaml``.
:func:`finetune_step` and :func:`finetunes` answer "does this run fine-tune, and from when" for the
trainer (which inputs to prepare), the run summary and model card, and the model (which adds the
:class:`StagedFinetuning` callback).
"""

from __future__ import annotations

import logging

from lightning import LightningModule
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.strategies import DDPStrategy

from tagrank.errors import TagrankError

log = logging.getLogger(__name__)


def finetune_step(model: LightningModule) -> int:
    """The step from which ``model``'s backbone is fine-tuned (``model.finetune_after_steps``); 0: never
    (also for a method without the staged schedule)."""
    return int(model.hparams.get("finetune_after_steps", 0))


def finetunes(model: LightningModule, planned: int) -> bool:
    """Does a run of at most ``planned`` steps reach the switch (and so need images, not only features)?"""
    return 0 < finetune_step(model) < planned


class StagedFinetuning(BaseFinetuning):
    """Keep the backbone frozen for ``unfreeze_at_step`` optimiser steps, then train it too.

    The paper's schedule: 7500 iterations on a frozen VGG16, then the CNN joins at lr 1e-5 with weight
    decay 1e-3 as a second parameter group (visible as its own learning rate in the logger). Lightning's
    ``BackboneFinetuning`` counts epochs; this one counts steps. ``BaseFinetuning`` stores the added
    group, so a run resumed after the switch restores it (and the backbone is made trainable again).
    With ``backbone.finetune_blocks`` only the model's ``finetuned_modules`` (the backbone's top) join,
    on the trunk's cached outputs instead of images.
    """

    def __init__(self, unfreeze_at_step: int, lr: float = 1e-5, weight_decay: float = 1e-3) -> None:
        super().__init__()
        self.unfreeze_at_step, self.lr, self.weight_decay = unfreeze_at_step, lr, weight_decay

    def freeze_before_training(self, pl_module) -> None:
        self.freeze(pl_module.backbone, train_bn=False)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # freezes the backbone
        # DDP synchronises the gradients of the parameters that require grad when it wraps the model
        # (after this hook): a backbone frozen then would train apart on every process after the
        # switch. So DDP sees it trainable; on_fit_start freezes it again until the switch (the
        # unused parameters meanwhile are why trainer=ddp finds unused parameters).
        self._ddp_register = stage == "fit" and isinstance(trainer.strategy, DDPStrategy) and trainer.world_size > 1
        if self._ddp_register:
            for module in pl_module.finetuned_modules():
                module.requires_grad_(True)

    def finetune_function(self, pl_module, epoch: int, optimizer) -> None:
        pass  # step-based: see on_train_batch_start

    def on_fit_start(self, trainer, pl_module) -> None:
        resumed_after_switch = self._restarting and len(self._internal_optimizer_metadata.get(0, [])) > 1
        super().on_fit_start(trainer, pl_module)
        if resumed_after_switch:
            self.make_trainable(pl_module.finetuned_modules())
            _start_images(trainer)  # before the sanity check: validation needs images from now on
        elif getattr(self, "_ddp_register", False):
            self.freeze(pl_module.backbone, train_bn=False)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pass  # the base class would call finetune_function each epoch

    def _start_images_if_due(self, trainer) -> None:
        # Images are decoded only from a few batches before the switch: enough that the batches already
        # prepared when it comes (2 per loader worker, and the one Lightning fetches ahead) carry them.
        workers = getattr(trainer.datamodule, "num_workers", 0)
        if trainer.global_step >= self.unfreeze_at_step - 2 * workers - 2:
            _start_images(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        self._start_images_if_due(trainer)  # a run resumed just before the switch: before the first fetch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if pl_module.backbone_trainable:
            return
        self._start_images_if_due(trainer)
        if trainer.global_step < self.unfreeze_at_step:
            return
        if "image" not in batch and "trunk" not in batch:
            if getattr(trainer.datamodule, "images_started", False):
                return  # a batch prepared before the images started: switch at the next one
            raise TagrankError("fine-tuning needs images in the batch, but this run was started with cached "
                               "features only (it did not expect to reach model.finetune_after_steps)")
        optimizer = trainer.optimizers[0]
        n_groups = len(optimizer.param_groups)
        self.unfreeze_and_add_param_group(pl_module.finetuned_modules(), optimizer, lr=self.lr, train_bn=True)
        optimizer.param_groups[-1]["weight_decay"] = self.weight_decay
        self._store(pl_module, 0, n_groups, optimizer.param_groups)
        pl_module.mark_finetuned()
        blocks = pl_module.finetune_blocks
        log.info("step %d: %s unfrozen (lr %g, weight decay %g)", trainer.global_step,
                 "backbone" if blocks is None else f"backbone's last {blocks} blocks and head", self.lr, self.weight_decay)


def _start_images(trainer) -> None:
    start = getattr(trainer.datamodule, "start_images", None)
    if start is not None:
        start()

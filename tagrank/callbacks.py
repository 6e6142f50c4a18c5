"""Lightning callbacks that are part of tagrank's training recipe."""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import BaseFinetuning

log = logging.getLogger(__name__)


class StagedFinetuning(BaseFinetuning):
    """Keep the backbone frozen for ``unfreeze_at_step`` optimiser steps, then train it too.

    The paper's schedule: 7500 iterations on a frozen VGG16, then the CNN joins at lr 1e-5 with weight
    decay 1e-3 as a second parameter group (visible as its own learning rate in the logger). Lightning's
    ``BackboneFinetuning`` counts epochs; this one counts steps. ``BaseFinetuning`` stores the added
    group, so a run resumed after the switch restores it (and the backbone is made trainable again).
    """

    def __init__(self, unfreeze_at_step: int, lr: float = 1e-5, weight_decay: float = 1e-3) -> None:
        super().__init__()
        self.unfreeze_at_step, self.lr, self.weight_decay = unfreeze_at_step, lr, weight_decay

    def freeze_before_training(self, pl_module) -> None:
        self.freeze(pl_module.backbone, train_bn=False)

    def finetune_function(self, pl_module, epoch: int, optimizer) -> None:
        pass  # step-based: see on_train_batch_start

    def on_fit_start(self, trainer, pl_module) -> None:
        resumed_after_switch = self._restarting and len(self._internal_optimizer_metadata.get(0, [])) > 1
        super().on_fit_start(trainer, pl_module)
        if resumed_after_switch:
            self.make_trainable(pl_module.backbone)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pass  # the base class would call finetune_function each epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step < self.unfreeze_at_step or pl_module.backbone_trainable:
            return
        if "image" not in batch:
            raise RuntimeError("fine-tuning needs images in the batch; the run was started with cached features only")
        optimizer = trainer.optimizers[0]
        n_groups = len(optimizer.param_groups)
        self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, lr=self.lr, train_bn=True)
        optimizer.param_groups[-1]["weight_decay"] = self.weight_decay
        self._store(pl_module, 0, n_groups, optimizer.param_groups)
        log.info("step %d: backbone unfrozen (lr %g, weight decay %g)", trainer.global_step, self.lr, self.weight_decay)

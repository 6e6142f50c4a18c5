"""Sample orders that make a run resumable mid-epoch and its metrics exact under DDP.

:class:`ShuffleSampler` (training) draws each epoch's order from a generator seeded by (seed, epoch),
so a restarted process sees the same order, and can start an epoch part-way (``start``). Under DDP
every rank takes every world-size-th index of the same permutation, padded by wrapping around so the
ranks take the same number of steps (as torch's ``DistributedSampler``): with ``batch_size / world``
per rank a step sees the same images as one process with ``batch_size``.

:class:`EvalSampler` (validation, test) keeps the manifest order and, under DDP, gives rank r the
indices r, r + world, ... *without* padding: no image is scored twice, so the sum-state metrics
reduced across ranks equal those of one process.

Both subclass ``DistributedSampler`` only so that Lightning keeps them instead of injecting its own
(which pads evaluation and reseeds training from the global seed).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


def world() -> tuple[int, int]:
    """(number of processes, this process's rank); (1, 0) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ShuffleSampler(DistributedSampler):
    def __init__(self, size: int, batch_size: int, seed: int = 0, start: dict | None = None) -> None:
        # DistributedSampler.__init__ is not called: it needs a dataset and an initialised process group.
        self.num_replicas, self.rank = world()
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.shuffle, self.drop_last = True, False
        self.num_samples = math.ceil(size / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.epoch, self._skip = 0, 0
        if start:  # {"epoch": e, "batches": b}: b batches of epoch e were trained before the checkpoint
            self.epoch, self._skip = int(start["epoch"]), int(start["batches"]) * batch_size
            if self._skip >= self.num_samples:
                self.epoch, self._skip = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch``, in order."""
        g = torch.Generator()
        g.manual_seed(hash((self.seed, epoch)) & 0xFFFF_FFFF)  # hashes of int tuples are the same in every process
        order = torch.randperm(self.size, generator=g).tolist()
        pad = self.total_size - self.size  # < num_replicas: wrap around so every rank gets num_samples
        order += (order * math.ceil(pad / max(1, self.size)))[:pad]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        return iter(self.order(self.epoch)[skip:])

    def __len__(self) -> int:
        return self.num_samples


class EvalSampler(DistributedSampler):
    def __init__(self, size: int) -> None:
        self.num_replicas, self.rank = world()
        self.size, self.shuffle, self.drop_last, self.epoch, self.seed = size, False, False, 0, 0
        self.num_samples = len(range(self.rank, size, self.num_replicas))
        self.total_size = size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def trained_batches(trainer) -> dict[str, int]:
    """The training position a restart from a checkpoint written now resumes at: {"epoch", "batches"}.

    Mirrors Lightning's restart rule (``_TrainingEpochLoop.update_restart_stage`` / ``reset``): a
    checkpoint written in ``on_train_batch_end`` counts that batch as done (``processed`` is one ahead of
    ``completed``); one written at any other point (validation, a signal handler) resumes after the
    ``completed`` batches. The epoch is the one those batches belong to (``started`` is counted before
    the epoch's batches run and ``completed`` after its end hooks).
    """
    fit = trainer.fit_loop
    progress = fit.epoch_loop.batch_progress
    total = progress.total
    done = progress.current.completed
    if total.started == total.ready and total.processed == total.started and total.completed == total.processed - 1:
        done += 1
    epoch = max(0, fit.epoch_progress.current.started - 1)
    return {"epoch": epoch, "batches": done}

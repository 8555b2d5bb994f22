"""A training sampler whose order is a pure function of (seed, epoch, rank), so that a killed run
resumed from a mid-epoch checkpoint sees exactly the batches the uninterrupted run would have seen.

Lightning restores the step counters of a resumed run but, for a plain ``DataLoader``, restarts the
epoch's data from its first batch: the resumed run then trains on the epoch's first batches twice and
never on its last ones. :class:`ResumableSampler` fixes the order (``torch.randperm`` seeded with
``seed + epoch``, as ``DistributedSampler``) and, after :meth:`ResumableSampler.resume`, drops the
examples of the batches already trained on. The DataModule records ``(seed, epoch, batches done)`` in
every checkpoint (``state_dict``) and hands them back on resume.

Under DDP it is the ``DistributedSampler`` Lightning would have inserted (each rank a disjoint,
equally long shard), so Lightning keeps it instead of wrapping it.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Optional, Sized

import torch.distributed as dist
from torch.utils.data import DistributedSampler

logger = logging.getLogger("textdiff.data")


def process_position() -> tuple[int, int]:
    """(rank, world size) of this process in ``torch.distributed``; (0, 1) when it is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableSampler(DistributedSampler):
    """Shuffled indices of ``dataset`` for one rank, reproducible from ``(seed, epoch)`` and able to
    start in the middle of an epoch.

    Args:
        dataset: any sized dataset (N examples).
        seed: the shuffle seed (same on every rank).
        shuffle: False keeps the dataset order (then only sharding and resuming apply).
        num_replicas, rank: the DDP world; default: from ``torch.distributed`` when it is
            initialised, else one process.

    Each epoch yields ``ceil(N / num_replicas)`` indices (the last ones repeated to even the shards,
    as ``DistributedSampler``), minus those skipped by :meth:`resume`.
    """

    def __init__(self, dataset: Sized, seed: int, shuffle: bool = True,
                 num_replicas: Optional[int] = None, rank: Optional[int] = None) -> None:
        here, world = process_position()
        num_replicas = world if num_replicas is None else num_replicas
        rank = here if rank is None else rank
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=False)
        self._resume_at: Optional[tuple[int, int]] = None  # (epoch, examples of this rank to skip)

    def resume(self, epoch: int, examples_done: int) -> None:
        """Start epoch ``epoch`` after its first ``examples_done`` indices (of this rank's shard); the
        skip applies once, to that epoch only (a later epoch starts from its beginning)."""
        if epoch < 0 or examples_done < 0:
            raise ValueError(f"resume(epoch={epoch}, examples_done={examples_done}): both must be >= 0")
        self._resume_at = (int(epoch), int(examples_done))
        # Lightning creates a resumed run's first iterator before it calls ``set_epoch``: set it here.
        self.set_epoch(int(epoch))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume_at is not None and self._resume_at[0] == self.epoch:
            indices = indices[self._resume_at[1]:]
        if self._resume_at is not None and self._resume_at[0] <= self.epoch:
            self._resume_at = None
        return iter(indices)


class TrainingOrderMixin:
    """The DataModule side of a resumable training order: the training sampler, and its position in
    every checkpoint (Lightning calls ``state_dict`` / ``load_state_dict`` of a DataModule). Needs the
    DataModule's ``seed``, ``batch_size`` and ``trainer``."""

    _resume: Optional[dict[str, int]] = None  # training-order state read from a checkpoint

    def shuffle_seed(self) -> int:
        """The training order's seed: ``seed``, else the run's (``PL_GLOBAL_SEED``, set by
        ``seed_everything``, the same on every DDP rank), else 0."""
        if self.seed is not None:
            return int(self.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def train_sampler(self, dataset: Sized) -> ResumableSampler:
        """The sampler of the training split (N examples); after ``load_state_dict``, positioned after the
        batches the checkpoint had already trained on (once)."""
        state, self._resume = self._resume or {}, None
        sampler = ResumableSampler(dataset, seed=state.get("seed", self.shuffle_seed()))
        if state:
            sampler.resume(state["epoch"], state["batches_done"] * self.batch_size)
            logger.info("training data resumes at epoch %d after %d batches (seed %d)",
                        state["epoch"], state["batches_done"], sampler.seed)
        return sampler

    def state_dict(self) -> dict[str, int]:
        """Where the training order stands, saved in every checkpoint by Lightning: ``seed``,
        ``epoch`` and ``batches_done`` (training batches of that epoch already trained on)."""
        trainer: Any = self.trainer
        if trainer is None:
            return {}
        epoch = int(trainer.current_epoch)
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        if done >= trainer.num_training_batches:  # saved at the epoch's end: the next one starts afresh
            epoch, done = epoch + 1, 0
        return {"seed": self.shuffle_seed(), "epoch": epoch, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Take the training order's state from a checkpoint; the next ``train_sampler`` resumes it."""
        if state_dict:
            missing = {"seed", "epoch", "batches_done"} - set(state_dict)
            if missing:
                raise ValueError(f"datamodule state in the checkpoint lacks {sorted(missing)}")
            self._resume = {k: int(state_dict[k]) for k in ("seed", "epoch", "batches_done")}

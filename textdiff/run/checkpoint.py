"""Checkpoints that survive faults (atomic writes, a ``last.ckpt`` every N optimizer steps), and finding a
run's checkpoint and the family that saved it.

* :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin, ``trainer.plugins``): every
  checkpoint is written to a temporary file beside its target, flushed to disk, then renamed over it,
  so a process killed during a save leaves the previous checkpoint whole.
* :class:`LastCheckpoint` (a callback): ``<dirpath>/last.ckpt`` every ``every_n_steps`` optimizer
  steps and when fit ends, which is what ``resume=true`` continues from. Together with the
  DataModule's training-order state (:mod:`textdiff.data.samplers`) a run killed with SIGKILL resumes
  with the same data order and ends at the same step as an uninterrupted run.
* :func:`find_checkpoint` ("best", "last" or a path), :func:`checkpoint_family` (the family tag a textdiff
  checkpoint carries), :func:`run_dir_of`; they raise :class:`CheckpointError` naming the path.

``textdiff.families.base.NonFiniteLossError`` is what ``TextModule.training_step`` raises on a NaN/inf
loss (``on_nonfinite_loss="stop"``); with ``"skip"`` the batch is skipped, counted and logged.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger(__name__)

LAST = "last.ckpt"


class CheckpointError(ValueError):
    """A run directory or checkpoint that cannot be used (the message names the path)."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partial ``path``: write ``.<name>.tmp-<pid>`` in the
    same directory, fsync it, ``os.replace`` it over ``path`` (atomic on POSIX and Windows), fsync the
    directory. On any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (not possible on every platform / filesystem)
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's local ``torch.save`` checkpoint IO, but write-then-rename in the target's directory
    (Lightning's own transaction stages the file in the system temp directory, and moving it from
    there can be a copy: a kill mid-copy would leave a truncated checkpoint). Local paths only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        """Write ``checkpoint`` (Lightning's dict) to ``path`` atomically."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        if "://" in str(path):
            raise ValueError(f"{type(self).__name__} writes local files only, got {path}")
        atomic_torch_save(checkpoint, path)


class LastCheckpoint(Checkpoint):
    """Write ``<dirpath>/last.ckpt`` every ``every_n_steps`` optimizer steps, at the end of fit (also of a fit
    that stopped before its first step, when there is no ``last.ckpt`` yet) and when training is interrupted
    by Ctrl-C (a SIGKILL cannot be caught: the run then resumes from the last periodic save). Pair it with
    :class:`AtomicCheckpointIO` so that a kill during the save leaves the previous ``last.ckpt`` whole.

    A Lightning ``Checkpoint``, so its hooks run after every other callback's (Lightning's order): a save at a
    step's end holds that step's EMA update (the ``EMA`` callback's own ``on_train_batch_end``); as a plain
    callback it ran first, and ``last.ckpt`` lagged the end of fit by one EMA update. Like ``ModelCheckpoint``
    it cannot be combined with ``Trainer(enable_checkpointing=False)``.

    Args:
        dirpath: the run's ``checkpoints/`` directory.
        every_n_steps: optimizer steps between saves (>= 1).
    """

    def __init__(self, dirpath: str, every_n_steps: int = 500) -> None:
        if int(every_n_steps) < 1:
            raise ValueError(f"LastCheckpoint.every_n_steps must be >= 1, got {every_n_steps}")
        self.dirpath, self.every_n_steps = Path(dirpath), int(every_n_steps)
        self._saved_step: Optional[int] = None

    @property
    def path(self) -> Path:
        """``<dirpath>/last.ckpt``."""
        return self.dirpath / LAST

    def _save(self, trainer: pl.Trainer, force: bool = False) -> None:
        if trainer.sanity_checking or (self._saved_step == trainer.global_step and not force):
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state resume needs (and no log line)
        self._saved_step = trainer.global_step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._saved_step = trainer.global_step  # a resumed run's start is already on disk

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 or (trainer.max_steps > 0 and step >= trainer.max_steps):
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # also a fit that stopped before its first step leaves a checkpoint (a model with nothing to train:
        # textdiff.families.reference), unless one is there already
        self._save(trainer, force=not self.path.exists())

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            log.warning("interrupted at step %d: saving %s", trainer.global_step, self.path)
            self._save(trainer)


def run_dir_of(checkpoint: str) -> str:
    """The run directory of a checkpoint path: ``<run>/checkpoints/last.ckpt`` -> ``<run>``."""
    path = Path(str(checkpoint))
    if path.parent.name != "checkpoints":
        raise CheckpointError(f"{checkpoint} is not inside a run's checkpoints/ directory (expected "
                              "<run_dir>/checkpoints/<name>.ckpt)")
    return str(path.parent.parent)


def find_checkpoint(run_dir: Path, which: str) -> Path:
    """"best" (ModelCheckpoint's best-*.ckpt, newest if several), "last", or a path."""
    ckpt_dir = run_dir / "checkpoints"
    if which == "last":
        path = ckpt_dir / "last.ckpt"
    elif which == "best":
        best = sorted(ckpt_dir.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
        path = best[-1] if best else ckpt_dir / "last.ckpt"
    else:
        path = Path(which)
    if not path.exists():
        raise CheckpointError(f"no checkpoint {path} (ckpt={which!r}; the run directory must hold checkpoints/)")
    return path


def checkpoint_family(path: Path) -> Optional[str]:
    """The model family (class name, e.g. ``"Difformer"``) that saved the textdiff checkpoint at ``path``;
    None for a checkpoint without the tag. Raises CheckpointError when ``path`` is not a readable checkpoint."""
    from textdiff.families.base import CHECKPOINT_KEY

    try:  # memory-mapped: reads the small tag, not the weights
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - a legacy (non-zip) file cannot be mapped, or not a checkpoint at all
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{path} is not a readable checkpoint: {type(err).__name__}: {err}") from None
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    return meta.get("family") if isinstance(meta, dict) else None

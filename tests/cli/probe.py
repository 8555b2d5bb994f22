"""A test-only callback that records the step and optimizer state a (resumed) run starts from."""
import json

import pytorch_lightning as pl


class OptimizerProbe(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path, self.record = path, {}

    def on_train_start(self, trainer, pl_module):
        state = trainer.optimizers[0].state
        self.record["start_step"] = trainer.global_step
        self.record["exp_avg_abs_sum_at_start"] = sum(float(s["exp_avg"].abs().sum()) for s in state.values())

    def on_train_end(self, trainer, pl_module):
        self.record["end_step"] = trainer.global_step
        with open(self.path, "w") as f:
            json.dump(self.record, f)


class DataOrderProbe(pl.Callback):
    """Appends ``<global step> <dataset indices of the batch>`` to ``path`` (``{rank}`` in it is replaced
    by the process's global rank) after every optimizer step
    and kills its own process with SIGKILL once ``kill_at_step`` is reached (a crash nothing can catch)."""

    def __init__(self, path: str, kill_at_step: int = -1) -> None:
        self.path, self.kill_at_step = path, kill_at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(self.path.format(rank=trainer.global_rank), "a") as f:
            f.write(f"{trainer.global_step} {','.join(map(str, batch['index'].tolist()))}\n")
            f.flush()
        if trainer.global_step == self.kill_at_step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


class NaNLoss(pl.Callback):
    """Makes the training loss NaN on the given batches (counted from 0 over the whole run, skipped ones
    included) by setting the model's first weight to NaN before the batch; ``restore`` puts it back
    after the batch (as a skipped batch leaves no trace)."""

    def __init__(self, batches, restore: bool = True) -> None:
        self.batches, self.restore, self.seen, self.saved = set(batches), restore, 0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen in self.batches:
            param = next(pl_module.parameters())
            self.saved = param.detach().clone()
            param.data.fill_(float("nan"))
        self.seen += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.saved is not None and self.restore:
            next(pl_module.parameters()).data.copy_(self.saved)
        self.saved = None

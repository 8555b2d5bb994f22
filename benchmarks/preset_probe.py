"""What ``make test-presets`` measures inside a ``textdiff-train`` fit: ``StepProbe``, a Lightning callback that
times every optimizer step and measures, on one of them, the memory a GPU would hold for the step.

Memory terms (bytes, each measured on the live objects, none assumed):

- ``weights``: the module's parameters and buffers (frozen ones included, e.g. LD4LG's BART), counted once per
  storage;
- ``ema``: the EMA copy of the weights held by a ``WeightAveraging`` callback (``ema_decay``), if any;
- ``gradients``: the ``.grad`` tensors just before the optimizer step;
- ``optimizer``: every tensor in the optimizer's state after the step (AdamW: ``exp_avg``, ``exp_avg_sq`` and a
  scalar ``step`` per parameter);
- ``activations``: the tensors autograd saves for backward during the training step's forward (summed once per
  storage through ``torch.autograd.graph.saved_tensors_hooks``; storages of parameters and buffers left out,
  autocast's low-precision weight copies counted). Measured on the measured step's batch (b rows) and on its first
  b // 2 rows (one extra forward of ``compute_loss`` under the same precision context, before the timed step; its
  graph is freed unused), which splits them into a batch-independent part and a per-row part:
  ``act(n) = fixed + per_row * n`` (``activation_fit``), evaluated at the preset's batch.

Step times: wall clock (``time.perf_counter``) and this process's CPU time (``time.process_time``) from
``on_train_batch_start`` to ``on_train_batch_end``, after every other callback's per-step work (the probe moves
itself to the end of the callback list, so an EMA update is inside the timed step). Data loading is not.
"""
from __future__ import annotations

import time
from typing import Any, ClassVar, Optional

import pytorch_lightning as pl
import torch


def storage_key(t: torch.Tensor) -> Optional[tuple[int, int]]:
    """``(data_ptr, nbytes)`` of the storage under ``t``; None when it has none (sparse, meta, empty)."""
    try:
        st = t.untyped_storage()
        ptr, n = st.data_ptr(), st.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return (ptr, n) if ptr and n else None


def tensor_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages under ``tensors`` (an iterable of tensors; non-tensors skipped)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            key = storage_key(t)
            if key is not None:
                seen[key[0]] = key[1]
    return sum(seen.values())


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers (distinct storages)."""
    return tensor_bytes([*module.parameters(), *module.buffers()])


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state`` (distinct storages)."""
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values())


class SavedTensorMeter(torch.autograd.graph.saved_tensors_hooks):
    """Inside the ``with`` block, sums the bytes of the distinct storages that autograd saves for backward,
    leaving out the storages in ``exclude`` (data pointers of parameters and buffers). Leaves the saved
    tensors as they are."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.storages: dict[int, int] = {}
        self.count = 0
        super().__init__(self._pack, self._unpack)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.count += 1
        key = storage_key(t)
        if key is not None and key[0] not in self.exclude:
            self.storages[key[0]] = max(self.storages.get(key[0], 0), key[1])
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def _rows(batch: Any) -> int:
    return int(batch["ids"].shape[0])


def _head(batch: Any, n: int) -> dict[str, Any]:
    """Copies of the first ``n`` rows of a batch (every tensor whose first dimension is the batch's); copies, so
    that a saved input counts its own rows, not the whole batch's storage that a slice would point into."""
    rows = _rows(batch)
    return {k: v[:n].clone() if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == rows else v
            for k, v in batch.items()}


class StepProbe(pl.Callback):
    """Times each optimizer step of a fit and measures the memory terms of step ``measure_step`` (0-based;
    the default 1 is the second step, after the first has created the optimizer state and, for LD4LG, the
    latent statistics). See the module docstring. Results: ``self.result()``; the last probe built in the
    process is ``StepProbe.instances[-1]``.

    Args:
        measure_step: the step whose memory is measured (and whose batch is split for ``activation_fit``).
    """

    instances: ClassVar[list["StepProbe"]] = []

    def __init__(self, measure_step: int = 1) -> None:
        self.measure_step = int(measure_step)
        self.steps: list[dict[str, float]] = []
        self.memory: dict[str, Any] = {}
        self.params: dict[str, int] = {}
        self.fit_end: Optional[float] = None
        self._meter: Optional[SavedTensorMeter] = None
        self._start: tuple[float, float] = (0.0, 0.0)
        self._exclude: set[int] = set()
        StepProbe.instances.append(self)

    # ----- setup -----
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # last: the timed step then includes the other callbacks' per-step work (EMA). A new list, because
        # Lightning is iterating over the current one while it calls this hook.
        trainer.callbacks = [c for c in trainer.callbacks if c is not self] + [self]
        params = list(pl_module.parameters())
        unique = {id(p): p for p in params}.values()
        self.params = {"total": sum(p.numel() for p in unique),
                       "trainable": sum(p.numel() for p in unique if p.requires_grad)}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._exclude = {k[0] for t in [*pl_module.parameters(), *pl_module.buffers()]
                         if (k := storage_key(t)) is not None}

    # ----- each step -----
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = len(self.steps)
        if step == self.measure_step:
            self._measure_half_batch(trainer, pl_module, batch)
            self.memory["batch_rows"] = _rows(batch)
            self.memory["batch_shape"] = {k: list(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            self._meter = SavedTensorMeter(self._exclude)
            self._meter.__enter__()
        self._start = (time.perf_counter(), time.process_time())

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self._meter is not None:
            self._meter.__exit__(None, None, None)
            self.memory["activations"] = self._meter.bytes
            self.memory["saved_tensors"] = self._meter.count
            self._meter = None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if len(self.steps) == self.measure_step:
            self.memory["gradients"] = tensor_bytes(p.grad for p in pl_module.parameters() if p.grad is not None)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        wall, cpu = time.perf_counter() - self._start[0], time.process_time() - self._start[1]
        self.steps.append({"wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3), "rows": _rows(batch)})
        if len(self.steps) - 1 == self.measure_step:
            self.memory["weights"] = module_bytes(pl_module)
            self.memory["optimizer"] = sum(optimizer_state_bytes(o) for o in trainer.optimizers)
            self.memory["optimizer_class"] = ", ".join(type(o).__name__ for o in trainer.optimizers)
            self.memory["ema"] = self._ema_bytes(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_end = time.perf_counter()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._meter is not None:
            self._meter.__exit__(None, None, None)
            self._meter = None

    # ----- pieces -----
    def _measure_half_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        """Saved-tensor bytes of ``compute_loss`` on the first b // 2 rows, under the step's precision context
        (autocast for bf16-mixed); the graph is dropped without a backward."""
        half = _rows(batch) // 2
        if half < 1:
            return
        meter = SavedTensorMeter(self._exclude)
        with trainer.strategy.precision_plugin.train_step_context(), meter:
            terms = pl_module.compute_loss(_head(batch, half))
        del terms
        self.memory["half_rows"] = half
        self.memory["half_activations"] = meter.bytes

    @staticmethod
    def _ema_bytes(trainer: pl.Trainer) -> int:
        from pytorch_lightning.callbacks import WeightAveraging

        total = 0
        for cb in trainer.callbacks:
            model = getattr(cb, "_average_model", None) if isinstance(cb, WeightAveraging) else None
            if model is not None:
                total += module_bytes(model)
        return total

    def activation_fit(self) -> Optional[dict[str, float]]:
        """``{"fixed": bytes, "per_row": bytes}`` of ``act(n) = fixed + per_row * n`` through the two
        measurements (b // 2 and b rows); None without both. A negative fixed part (noise) is clipped to 0
        and the line then goes through the full-batch point."""
        m = self.memory
        if "activations" not in m or "half_activations" not in m or m["batch_rows"] == m["half_rows"]:
            return None
        b, h = m["batch_rows"], m["half_rows"]
        per_row = (m["activations"] - m["half_activations"]) / (b - h)
        fixed = m["activations"] - per_row * b
        if fixed < 0:
            fixed, per_row = 0.0, m["activations"] / b
        return {"fixed": fixed, "per_row": per_row}

    def estimate(self, batch: int) -> Optional[dict[str, float]]:
        """Bytes a GPU would hold for one training step at ``batch`` rows: weights + EMA + gradients +
        optimizer state (as measured; they do not depend on the batch) + ``activation_fit`` at ``batch``."""
        fit = self.activation_fit()
        if fit is None or any(k not in self.memory for k in ("weights", "gradients", "optimizer")):
            return None
        m = self.memory
        act = fit["fixed"] + fit["per_row"] * batch
        parts = {"weights": m["weights"], "ema": m.get("ema", 0), "gradients": m["gradients"],
                 "optimizer": m["optimizer"], "activations": act}
        return {**parts, "total": sum(parts.values()), "batch": batch}

    def result(self) -> dict[str, Any]:
        """Everything measured, JSON-ready."""
        return {"parameters": self.params, "steps": self.steps, "memory": dict(self.memory),
                "activation_fit": self.activation_fit()}

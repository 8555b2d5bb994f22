"""``DiffusionModule``: what every family shares — optimiser/scheduler factories, time sampling,
loss logging, EMA, checkpoint metadata and sampler construction. Families add only their math-free
specifics (which network, which loss terms, how to read tokens out); the diffusion math is in core/.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from abc import abstractmethod
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal, Optional, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch import Tensor, nn

from textdiff.core.absorbing import AbsorbingProcess
from textdiff.core.gaussian import GaussianProcess
from textdiff.core.sampler import Sampler
from textdiff.core.schedules import grid_steps
from textdiff.core.types import Batch
from textdiff.families.interface import SamplingRun

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
SamplerFactory = Callable[..., Sampler]
CHECKPOINT_KEY = "textdiff"


def ema_avg_fn(decay: float, warmup: bool = True) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """EMA update for ``torch.optim.swa_utils.AveragedModel``: avg <- d avg + (1 - d) param with
    d = min(decay, (1 + n) / (10 + n)) when ``warmup`` (n = updates so far; TensorFlow's
    ``ExponentialMovingAverage(num_updates)``), so short runs are not dominated by the initial weights."""

    def avg_fn(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        return d * averaged + (1 - d) * current

    return avg_fn


class NonFiniteLossError(RuntimeError):
    """A training loss was NaN or infinite (the message names the step and the batch)."""


class EMA(WeightAveraging):
    """Exponential moving average of the weights (Lightning ``WeightAveraging``): validation and
    checkpoints' ``state_dict`` use the averaged weights, and after ``fit`` the module holds them; the
    raw weights are kept in the checkpoint too, so ``resume`` continues both."""

    def __init__(self, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        super().__init__(use_buffers=False, avg_fn=ema_avg_fn(decay, warmup))
        self.decay = decay

    def take_buffers(self, pl_module: pl.LightningModule) -> None:
        """The averaged copy is made in the callbacks' ``setup``, before the module's own ``setup`` has filled its
        corpus buffers (DiffusionBERT's length histogram and spindle weights): give it the module's buffers where
        their shapes differ, or swapping the weights for validation (and loading a checkpoint) fails on them.
        Buffers are not averaged (``use_buffers=False``)."""
        if self._average_model is not None:
            for avg, cur in zip(self._average_model.module.buffers(), pl_module.buffers()):
                if avg.shape != cur.shape:
                    avg.data = cur.data.detach().clone().to(avg.device)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.take_buffers(pl_module)
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.take_buffers(pl_module)


class TextModule(pl.LightningModule):
    """What every trainable model of the library shares, diffusion or not (the autoregressive
    baseline too): optimiser/scheduler factories, loss logging, EMA, the family tag in checkpoints
    and ``load_weights``.

    Args:
        optimizer: a factory ``params -> Optimizer`` (e.g. ``partial(torch.optim.AdamW, lr=1e-4)``).
        lr_scheduler: optional factory ``optimizer -> LRScheduler``; if it takes ``total_steps`` and it
            is not bound, the trainer's estimated number of optimiser steps is passed.
        ema_decay: keep an EMA of the weights with this decay (None = off).
        no_decay_below_ndim: give the optimizer two parameter groups, weight decay 0 for trainable
            parameters with fewer dimensions than this (2: biases, LayerNorm gains; ``textdiff.families.optim.
            param_groups``); None = one group, the optimizer's weight decay on every parameter.
    """

    #: True for models that generate from a source (``generate(src_ids, src_mask, ...)``).
    conditional: bool = False
    #: True when some trainable parameters may take no part in a step's loss: ``textdiff-train`` then runs DDP
    #: with ``find_unused_parameters=True`` (slower), as it must for such models.
    ddp_find_unused_parameters: bool = False
    #: parameter names decayed whatever their ndim when ``no_decay_below_ndim`` is set (see LD4LG).
    decay_despite_ndim: tuple[str, ...] = ()

    def __init__(self, optimizer: Optional[OptimizerFactory] = None,
                 lr_scheduler: Optional[SchedulerFactory] = None, ema_decay: Optional[float] = None,
                 no_decay_below_ndim: Optional[int] = None) -> None:
        super().__init__()
        self.optimizer_factory = optimizer or (lambda params: torch.optim.AdamW(params, lr=1e-4))
        self.lr_scheduler_factory = lr_scheduler
        self.ema_decay = ema_decay
        self.no_decay_below_ndim = None if no_decay_below_ndim is None else int(no_decay_below_ndim)
        self._param_ndims: dict[str, int] = {}

    @abstractmethod
    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        """Scalar loss terms for a batch; must contain "loss"."""

    #: what a NaN/inf training loss does: "stop" raises NonFiniteLossError naming the step and the
    #: batch; "skip" skips the batch (no optimizer step), counts it and logs train/nonfinite_skipped.
    #: Set by textdiff-train from the top-level ``on_nonfinite_loss`` config key.
    on_nonfinite_loss: Literal["stop", "skip"] = "stop"
    nonfinite_skipped: int = 0

    def training_step(self, batch: Batch, batch_idx: int) -> Optional[Tensor]:
        terms = self.compute_loss(batch)
        n = batch["ids"].shape[0]
        if self._loss_is_nonfinite(terms["loss"]):
            return self._handle_nonfinite_loss(terms, batch, batch_idx)
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=n)
        for k, v in terms.items():
            if k != "loss":
                self.log(f"train/{k}", v, batch_size=n)
        return terms["loss"]

    def _loss_is_nonfinite(self, loss: Tensor) -> bool:
        bad = not bool(torch.isfinite(loss.detach()).all())
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:  # every rank stops / skips together
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        return bad

    def _handle_nonfinite_loss(self, terms: dict[str, Tensor], batch: Batch, batch_idx: int) -> None:
        shown = {k: float(v.detach().float().mean()) for k, v in terms.items() if v.numel() > 0}
        index = batch.get("index")
        examples = index[:8].tolist() if isinstance(index, Tensor) else "?"
        where = (f"at optimizer step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx} of the "
                 f"epoch: {batch['ids'].shape[0]} sequences, dataset indices {examples}"
                 f"{'...' if isinstance(index, Tensor) and index.numel() > 8 else ''})")
        if self.on_nonfinite_loss == "skip":
            self.nonfinite_skipped += 1
            log.warning("non-finite training loss %s %s: batch skipped (%d so far)", shown, where,
                        self.nonfinite_skipped)
            self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), batch_size=batch["ids"].shape[0])
            return None
        raise NonFiniteLossError(
            f"non-finite training loss {shown} {where}. Lower the learning rate, clip gradients "
            "(trainer.gradient_clip_val) or set on_nonfinite_loss=skip to skip such batches"
        )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        terms = self.compute_loss(batch)
        n = batch["ids"].shape[0]
        for k, v in terms.items():
            self.log(f"val/{k}", v, prog_bar=(k == "loss"), batch_size=n, sync_dist=True)

    def optimizer_params(self) -> Union[list[nn.Parameter], list[dict[str, Any]]]:
        """What ``configure_optimizers`` hands the optimizer factory: the trainable parameters, or two
        parameter groups (decayed / not) when ``no_decay_below_ndim`` is set."""
        if self.no_decay_below_ndim is None:
            return [p for p in self.parameters() if p.requires_grad]
        from textdiff.families.optim import param_groups

        return param_groups(self, no_decay_below_ndim=self.no_decay_below_ndim, decay=self.decay_despite_ndim,
                            ndims=self._param_ndims)

    def setup(self, stage: str) -> None:
        """Notes every parameter's ndim before the strategy wraps the module (Lightning calls ``setup``
        first): FSDP with ``use_orig_params=True`` then shows ``configure_optimizers`` flattened 1-D views,
        which ``optimizer_params`` must not take for biases. A family overriding ``setup`` calls this."""
        super().setup(stage)
        from textdiff.families.optim import clean_param_name

        seen = {clean_param_name(n): p.ndim for n, p in self.named_parameters()}
        self._param_ndims = {**seen, **self._param_ndims}  # the first (unwrapped) record wins

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.optimizer_params())
        if self.lr_scheduler_factory is None:
            return optimizer
        kwargs = {}
        factory = self.lr_scheduler_factory
        bound = getattr(factory, "keywords", {}) or {}
        if "total_steps" in inspect.signature(factory).parameters and bound.get("total_steps") is None:
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = factory(optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_callbacks(self) -> list[pl.Callback]:
        return [EMA(self.ema_decay)] if self.ema_decay else []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"family": type(self).__name__, "module": type(self).__module__}

    #: weight-name prefixes of checkpoints saved by an older textdiff, old -> new (e.g. ``{"denoiser.": "network."}``
    #: since every family calls its trained network ``network``); ``upgrade_weights`` applies them on load.
    renamed_weights: ClassVar[dict[str, str]] = {}

    def upgrade_weights(self, state: dict[str, Any], prefix: str = "") -> int:
        """Rename, in place, the keys of a state dict saved under an older name of a submodule: this module's
        ``renamed_weights`` and those of every ``TextModule`` inside it (a NoisyClassifier's diffusion model), at
        ``prefix``. Returns how many keys were renamed."""
        renamed = 0
        for old, new in self.renamed_weights.items():
            for key in [k for k in state if k.startswith(prefix + old)]:
                state[prefix + new + key[len(prefix + old):]] = state.pop(key)
                renamed += 1
        for name, child in self.named_children():
            if isinstance(child, TextModule):
                renamed += child.upgrade_weights(state, f"{prefix}{name}.")
        return renamed

    def upgrade_checkpoint(self, checkpoint: dict[str, Any], source: str = "the checkpoint") -> None:
        """``upgrade_weights`` on a Lightning checkpoint's weights: ``state_dict`` and, with EMA, the raw weights
        (``current_model_state``)."""
        renamed = sum(self.upgrade_weights(checkpoint[key]) for key in ("state_dict", "current_model_state")
                      if isinstance(checkpoint.get(key), dict))
        if renamed:
            log.info("%s: %d weights saved under an older submodule name were renamed (%s)", source, renamed,
                     ", ".join(f"{o}* -> {n}*" for o, n in self.renamed_weights.items()) or "inside a submodule")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Lightning calls this before it loads the weights (resume, ``load_from_checkpoint``): old names are
        upgraded. A family overriding it calls this."""
        self.upgrade_checkpoint(checkpoint)

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """Eval mode for the body (dropout off), then back to the mode the module had, also when the body raises.
        Every family's generate / score / predict runs in it (gradients are the caller's ``torch.no_grad``)."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def seeded_generator(self, seed: Optional[int], device: Any = None) -> Optional[torch.Generator]:
        """A ``torch.Generator`` on ``device`` (default: this module's) seeded with ``seed``; None for ``seed=None``
        (the global RNG). Same seed, same device: same draws."""
        if seed is None:
            return None
        return torch.Generator(device=self.device if device is None else device).manual_seed(int(seed))

    @staticmethod
    def batches(total: int, batch_size: int) -> Iterator[tuple[int, int]]:
        """``(start, size)`` of the consecutive batches of ``batch_size`` (the last one shorter) that cover
        ``total`` items: how ``generate`` splits ``num_samples``."""
        for start in range(0, int(total), int(batch_size)):
            yield start, min(int(batch_size), int(total) - start)

    def load_weights(self, path: str, strict: bool = True) -> dict[str, Any]:
        """Load a Lightning checkpoint's weights into this module (the EMA weights, when EMA was on).
        Raises a clear error when the checkpoint belongs to another family. Returns the checkpoint."""
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        meta = ckpt.get(CHECKPOINT_KEY, {})
        if meta and meta.get("family") != type(self).__name__:
            raise ValueError(
                f"checkpoint {path} holds a {meta.get('family')} model, not a {type(self).__name__}"
            )
        self.upgrade_checkpoint(ckpt, str(path))
        self.load_state_dict(ckpt["state_dict"], strict=strict)
        return ckpt


class DiffusionModule(TextModule):
    """Base class of the diffusion families.

    Args:
        process: the forward process (Gaussian or absorbing), from ``textdiff.core``.
        sampler: a factory ``(process=..., **overrides) -> Sampler`` (``functools.partial(Sampler, ...)``;
            Hydra ``_partial_: true``).
        optimizer, lr_scheduler, ema_decay, no_decay_below_ndim: see ``TextModule``.
        time_sampling: "uniform" or "antithetic" (stratified: u_i = (u + i/B) mod 1; Kingma et al. 2021).
        time_eps: smallest training time for continuous schedules (t ~ U[time_eps, 1]).
    """

    def __init__(
        self,
        process: Union[GaussianProcess, AbsorbingProcess],
        sampler: Optional[SamplerFactory] = None,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
        time_sampling: Literal["uniform", "antithetic"] = "uniform",
        time_eps: float = 0.0,
        ema_decay: Optional[float] = None,
        no_decay_below_ndim: Optional[int] = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay, no_decay_below_ndim)
        if time_sampling not in ("uniform", "antithetic"):
            raise ValueError(f"time_sampling must be 'uniform' or 'antithetic', got {time_sampling!r}")
        if not isinstance(process, (GaussianProcess, AbsorbingProcess)):
            raise TypeError(f"process must be a GaussianProcess or AbsorbingProcess, got {type(process).__name__}")
        self.process = process
        self.sampler_factory = sampler or Sampler
        self.time_sampling, self.time_eps = time_sampling, float(time_eps)
        self.num_train_steps = grid_steps(process.schedule)

    # ----- what families implement -----
    @abstractmethod
    def generate_run(self, *args: Any, sampler: Optional[Sampler] = None, **kwargs: Any) -> SamplingRun:
        """New samples and how they were made: ``generate_run(num_samples, ...)`` for unconditional families,
        ``generate_run(src_ids, src_mask, ...)`` for conditional ones (``conditional = True``). ``sampler``: a
        built ``Sampler`` (``build_sampler(...)``) to run instead of the configured one; sampler overrides such as
        ``num_steps=20`` may be passed instead (``sampler_for``)."""

    def generate(self, *args: Any, **kwargs: Any) -> Tensor:
        """Token ids (B, L) of new samples: ``generate_run(...).ids``, with the same arguments."""
        return self.generate_run(*args, **kwargs).ids

    # ----- shared pieces -----
    def sample_t(self, n: int) -> Tensor:
        """Training times (n,): uniform or antithetic u, mapped by the schedule (snapped to the grid for
        a discrete-time schedule, else t = time_eps + (1 - time_eps) u)."""
        u = torch.rand(n, device=self.device)
        if self.time_sampling == "antithetic":
            u = (u[:1] + torch.arange(n, device=self.device) / n) % 1.0
        u = self.time_eps + (1 - self.time_eps) * u
        return self.process.schedule.training_times(u)

    def time_input(self, t: Tensor) -> Tensor:
        """What a network sees as time: improved-diffusion's rescaled chain index i * 1000 / T with
        i = t T - 1 for a T-step chain (Difformer's ``--rescale-timesteps``); 1000 t for a continuous
        schedule. (B,) -> (B,)."""
        T = self.num_train_steps
        return (t * T - 1) * (1000.0 / T) if T else 1000.0 * t

    def build_sampler(self, **overrides: Any) -> Sampler:
        """The configured sampler with ``overrides`` (e.g. ``num_steps=2000``) on this model's process."""
        return self.sampler_factory(process=self.process, **overrides)

    def sampler_for(self, sampler: Optional[Sampler], overrides: dict[str, Any]) -> Sampler:
        """The sampler a ``generate_run`` call runs: ``sampler`` when one is given, else ``build_sampler(**overrides)``.
        Raises ValueError for both (the settings travel in one place)."""
        if sampler is None:
            return self.build_sampler(**overrides)
        if overrides:
            raise ValueError(f"pass a built sampler or sampler overrides, not both (got sampler= and "
                             f"{', '.join(sorted(overrides))}); build it with build_sampler(...)")
        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler must be a textdiff.core.Sampler, got {type(sampler).__name__}")
        return sampler

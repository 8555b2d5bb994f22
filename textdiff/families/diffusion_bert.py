"""DiffusionBERT (He et al. 2023, "DiffusionBERT: Improving Generative Masked Language Models with
Diffusion Models"; ALGORITHMS.md §4).

Absorbing-state ([MASK]) diffusion with a BERT masked-LM as the denoiser. The process, its spindle
schedule, losses, reverse step and bound are ``textdiff.core.AbsorbingProcess``; this module adds
what is BERT-specific:

- the network (``TimeConditionedBert``: time-agnostic, a time token, or layer-wise time embeddings);
- corpus statistics from the training split: the spindle's token weights f = log(1 + count) / max
  (cached to disk) and the length histogram used to draw sample lengths;
- the frame: PAD (and, with ``keep_special``, BOS/[CLS] and EOS/[SEP]) is never masked, as the
  official code diffuses only the tokens between [CLS] and [SEP]; the same ids take no part in the
  spindle's sentence mean of the token weights (official ``collate_fn`` centres them before padding).

Defaults reproduce the official code (``DDP_main.py``, ``predict.py``, ``diffusion_word_freq.py``);
the alternatives are named options:

- ``t_sharing``: "batch" (official ``sample_t()``: one t for the whole batch) or "example" (one t per
  sequence: lower-variance gradients);
- ``length_mode``: "fixed" (official: every sample fills all L positions) or "sample" (lengths drawn
  from the training length histogram: right for corpora of short sentences padded to L);
- ``filter_on``: "posterior" (official ``discrete_diffusion_predict_fn``: temperature, top-k and top-p
  act on the joint reverse posterior over {tokens, stay [MASK]}, so they also change when tokens are
  revealed; ``predict.py``'s temperature 0.1 reveals almost everything in the last steps) or "x0" (they
  act on p(x0 | x_t) only and the reveal probability is the schedule's);
- the bound: K = T / ``nll_step_size`` steps (official ``discrete_diffusion_elbo`` with
  ``eval_step_size=4``, K = 512 at T = 2048), whatever the sampler's K.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch
from torch import Tensor

from textdiff.core.absorbing import AbsorbingProcess
from textdiff.core.hooks import LogitFilter
from textdiff.core.sampler import Sampler
from textdiff.core.types import Batch
from textdiff.data.word_freq import cached_token_counts, length_counts, spindle_weights
from textdiff.families.base import DiffusionModule, OptimizerFactory, SamplerFactory, SchedulerFactory
from textdiff.families.interface import SamplingRun
from textdiff.nn.bert import TimeConditionedBert

log = logging.getLogger(__name__)

FILTER_TARGETS = ("posterior", "x0")


class DiffusionBERT(DiffusionModule):
    """DiffusionBERT.

    Args:
        network: a ``TimeConditionedBert`` over ``BertForMaskedLM`` (pretrained by name/path or built
            from a config).
        process: an ``AbsorbingProcess`` whose ``mask_id`` is the tokenizer's [MASK], normally over
            ``SpindleSchedule(discretize(MutualSchedule(), 2048, max_beta=1))``.
        pad_id, bos_id, eos_id: the tokenizer's special ids (``${tokens.*}`` in configs).
        max_len: L, the longest sequence (the data's ``max_len``).
        keep_special: never mask BOS/EOS ([CLS]/[SEP]); sampling then fixes them at both ends.
        t_sharing: "batch" (one t for the batch, the official code) or "example" (one t per sequence).
        length_mode: "fixed" fills all L positions (the official sampler; right for "block" data);
            "sample" draws each sample's length from the training length histogram.
        temperature, top_k, top_p: defaults of the sampling filter (the official ``predict.py`` uses
            temperature 0.1 and top-k 30).
        filter_on: where they act: "posterior" (official: the joint reveal posterior) or "x0".
        reuse_cache: at sampling, reuse the network output when no token changed since the last call;
            applied only to the time-agnostic network, where it is exact.
        word_freq_cache: file for the token counts (default: ``word_freq.pt`` beside the datamodule's
            tokenizer directory, when it has one).
        nll_steps: K of the K-step chain whose bound ``nll_bound`` reports (default: T / nll_step_size).
        nll_step_size: the official ``eval_step_size`` (4): the bound's chain takes T / 4 steps of
            stride 4 unless ``nll_steps`` says otherwise.
        sampler, optimizer, lr_scheduler, time_sampling, time_eps, ema_decay: see ``DiffusionModule``.
    """

    renamed_weights = {"backbone.": "network."}  # checkpoints saved before the network was called `network`

    def __init__(
        self,
        network: TimeConditionedBert,
        process: AbsorbingProcess,
        pad_id: int,
        bos_id: Optional[int] = None,
        eos_id: Optional[int] = None,
        max_len: Optional[int] = None,
        keep_special: bool = True,
        t_sharing: Literal["batch", "example"] = "batch",
        length_mode: Literal["fixed", "sample"] = "fixed",
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        filter_on: Literal["posterior", "x0"] = "posterior",
        reuse_cache: bool = True,
        word_freq_cache: Optional[str] = None,
        nll_steps: Optional[int] = None,
        nll_step_size: int = 4,
        sampler: Optional[SamplerFactory] = None,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
        time_sampling: str = "uniform",
        time_eps: float = 0.0,
        ema_decay: Optional[float] = None,
    ) -> None:
        super().__init__(process, sampler, optimizer, lr_scheduler, time_sampling, time_eps, ema_decay)
        if not isinstance(process, AbsorbingProcess):
            raise TypeError(f"DiffusionBERT needs an AbsorbingProcess, got {type(process).__name__}")
        if process.mask_id is None or not 0 <= process.mask_id < network.vocab_size:
            raise ValueError(f"process.mask_id={process.mask_id} is not a token of the network's "
                             f"{network.vocab_size}-token vocabulary (does the tokenizer have a [MASK]?)")
        if t_sharing not in ("example", "batch"):
            raise ValueError(f"t_sharing must be 'example' or 'batch', got {t_sharing!r}")
        if length_mode not in ("sample", "fixed"):
            raise ValueError(f"length_mode must be 'sample' or 'fixed', got {length_mode!r}")
        if filter_on not in FILTER_TARGETS:
            raise ValueError(f"filter_on must be one of {FILTER_TARGETS}, got {filter_on!r}")
        if nll_step_size < 1:
            raise ValueError(f"nll_step_size must be >= 1, got {nll_step_size}")
        if keep_special and (bos_id is None or eos_id is None):
            raise ValueError("keep_special=True needs bos_id and eos_id")
        self.network = network
        self.pad_id, self.bos_id, self.eos_id = int(pad_id), bos_id, eos_id
        self.max_len = int(max_len or network.max_len)
        if self.max_len > network.max_len:
            raise ValueError(f"max_len={self.max_len} exceeds the network's {network.max_len} positions")
        self.keep_special, self.t_sharing, self.length_mode = bool(keep_special), t_sharing, length_mode
        self.temperature, self.top_k, self.top_p, self.filter_on = float(temperature), top_k, top_p, filter_on
        self.reuse_cache, self.word_freq_cache, self.nll_steps = bool(reuse_cache), word_freq_cache, nll_steps
        self.nll_step_size = int(nll_step_size)
        self.register_buffer("length_counts", torch.zeros(0, dtype=torch.long))
        if self.spindle:  # the spindle's sentence mean covers the diffused tokens only (official collate_fn)
            process.schedule.set_ignore_ids(self.frame_ids())

    # ----- corpus statistics -----
    @property
    def spindle(self) -> bool:
        """Whether the schedule is token-dependent (needs token weights)."""
        return bool(self.process.schedule.token_dependent)

    def set_corpus_statistics(self, seqs: Sequence[Sequence[int]], cache: Optional[str] = None) -> None:
        """Token weights (spindle) and the length histogram from training sequences (lists of ids,
        framed as the model sees them)."""
        if self.spindle:
            counts = cached_token_counts(seqs, self.network.vocab_size, cache or self.word_freq_cache)
            self.process.schedule.set_token_weight(spindle_weights(counts, zero_ids=[self.pad_id]).to(self.device))
        self.length_counts = length_counts(seqs, self.max_len, self.pad_id).to(self.device)

    def setup(self, stage: str) -> None:
        super().setup(stage)  # notes parameter shapes (weight-decay groups under FSDP)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        have = self.length_counts.numel() > 0 and (not self.spindle or self.process.schedule.token_weight.numel() > 0)
        if stage != "fit" or have or dm is None:
            return
        cache = self.word_freq_cache
        if cache is None and getattr(dm, "tokenizer_path", None):
            cache = str(Path(dm.tokenizer_path) / "word_freq.pt")
        if hasattr(dm, "statistics_sequences"):  # a streamed corpus gives a sample, not the whole stream
            seqs = dm.statistics_sequences()
        else:
            seqs = [item["ids"] for item in dm.dataset("train")]
        self.set_corpus_statistics(seqs, cache)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        key = prefix + "length_counts"
        if key in state_dict:
            self.length_counts = torch.empty_like(state_dict[key])  # sized by the corpus
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----- pieces -----
    def frame_ids(self) -> list[int]:
        """Ids never diffused: PAD, and BOS/EOS ([CLS]/[SEP]) with ``keep_special``."""
        return [self.pad_id] + ([int(self.bos_id), int(self.eos_id)] if self.keep_special else [])

    def keep_mask(self, ids: Tensor) -> Tensor:
        """Positions never masked: PAD, and BOS/EOS with ``keep_special``. (B, L) -> (B, L) bool."""
        keep = ids == self.pad_id
        if self.keep_special:
            keep = keep | (ids == self.bos_id) | (ids == self.eos_id)
        return keep

    def denoise(self, xt: Tensor, t: Tensor) -> Tensor:
        """Logits (B, L, V) of x0 for x_t (B, L) at t (B,); PAD positions are not attended."""
        return self.network(xt, t, attention_mask=xt != self.pad_id)

    def sample_t(self, n: int) -> Tensor:
        if self.t_sharing == "batch":
            return super().sample_t(1).expand(n).contiguous()
        return super().sample_t(n)

    # ----- training -----
    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        ids = batch["ids"]
        keep = self.keep_mask(ids)
        t = self.sample_t(ids.shape[0])
        xt = self.process.q_sample(ids, t, keep=keep)
        terms = self.process.loss(self.denoise(xt, t), ids, xt, t, mask=~keep)  # (B,) each, summed over tokens
        n_masked = ((xt == self.process.mask_id) & ~keep).sum().clamp_min(1)
        return {"loss": terms["loss"].mean(), "diffusion": terms["diffusion"].mean(),
                "hybrid": terms["hybrid"].mean(), "ce_per_masked": terms["ce"].sum() / n_masked}

    # ----- sampling -----
    def initial_state(self, lengths: Tensor, seq_len: int) -> Tensor:
        """All [MASK] up to each length, PAD after; BOS/EOS at both ends with ``keep_special``.
        lengths (N,) long -> (N, seq_len) long."""
        pos = torch.arange(seq_len, device=lengths.device).unsqueeze(0)
        x = torch.full((len(lengths), seq_len), self.process.mask_id, dtype=torch.long, device=lengths.device)
        x = x.masked_fill(pos >= lengths.unsqueeze(1), self.pad_id)
        if self.keep_special:
            x[:, 0] = self.bos_id
            x = x.masked_fill(pos == (lengths.unsqueeze(1) - 1), self.eos_id)
        return x

    def draw_lengths(self, n: int, seq_len: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """(n,) lengths: from the training histogram (``length_mode="sample"``, capped at seq_len),
        else seq_len."""
        hist = self.length_counts[: seq_len + 1].float()
        if self.length_mode == "fixed" or hist.sum() == 0:
            if self.length_mode == "sample":
                log.warning("no length histogram (set_corpus_statistics was not called): fixed length %d", seq_len)
            return torch.full((n,), seq_len, dtype=torch.long, device=self.device)
        drawn = torch.multinomial(hist.cpu(), n, replacement=True, generator=generator)
        return drawn.clamp_min(3 if self.keep_special else 1).to(self.device)

    def build_sampler(self, **overrides: Any) -> Sampler:
        """The configured sampler; a time-agnostic network reuses unchanged sequences' outputs when
        ``reuse_cache`` is on (``Sampler.reuse_unchanged``) unless ``overrides`` say otherwise."""
        overrides.setdefault("reuse_unchanged", self.reuse_cache and self.network.time_mode == "none")
        return super().build_sampler(**overrides)

    @torch.no_grad()
    def generate_run(
        self,
        num_samples: int,
        seq_len: Optional[int] = None,
        *,
        lengths: Optional[Tensor] = None,
        seed: Optional[int] = None,
        batch_size: int = 256,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        filter_on: Optional[str] = None,
        hooks: Sequence[Any] = (),
        step_hooks: Sequence[Any] = (),
        sampler: Optional[Sampler] = None,
        **sampler_overrides: Any,
    ) -> SamplingRun:
        """Sample token ids by unmasking from all [MASK].

        Args:
            num_samples: N. seq_len: L (default ``max_len``); lengths: (N,) per-sample lengths
                (default: drawn as ``length_mode`` says).
            seed: seeds the sampler's generator (same seed, same samples).
            temperature, top_k, top_p, filter_on: override the model's sampling-filter defaults.
            hooks, step_hooks: extra sampler hooks.
            sampler: a built ``Sampler`` to run; or **sampler_overrides, e.g. ``num_steps=64``, ``eta=0``,
                ``reuse_unchanged=False``.

        Returns: a ``SamplingRun``: ids (N, L) long (no [MASK] left); ``nfe``, network evaluations per sequence
        (K without the cache); ``output``, the last batch's ``SampleOutput``.
        """
        start_time = time.perf_counter()
        with self.sampling():
            L = int(seq_len or self.max_len)
            gen = self.seeded_generator(seed, "cpu")  # the lengths are drawn on the CPU
            if lengths is None:
                lengths = self.draw_lengths(num_samples, L, gen)
            sampler = self.sampler_for(sampler, sampler_overrides)
            where = filter_on or self.filter_on
            if where not in FILTER_TARGETS:
                raise ValueError(f"filter_on must be one of {FILTER_TARGETS}, got {where!r}")
            filt = LogitFilter(top_k=self.top_k if top_k is None else top_k,
                               top_p=self.top_p if top_p is None else top_p,
                               temperature=self.temperature if temperature is None else temperature)
            frame = LogitFilter(banned_ids=self.frame_ids())  # the frame tokens are never an x0 prediction
            x0_hooks = [frame, filt] if where == "x0" else [frame]
            posterior = filt if where == "posterior" and not filt.is_identity else None
            dev_gen = gen if self.device.type == "cpu" else self.seeded_generator(seed)
            chunks, out, row_evals = [], None, 0
            for start, n in self.batches(num_samples, batch_size):
                init = self.initial_state(lengths[start:start + n].to(self.device), L)
                out = sampler.sample(lambda x, t, sc: self.denoise(x, t), tuple(init.shape), x_init=init,
                                     generator=dev_gen, device=self.device, hooks=[*x0_hooks, *hooks],
                                     step_hooks=step_hooks, posterior_filter=posterior)
                chunks.append(out.x)
                row_evals += out.row_evals
        return SamplingRun(torch.cat(chunks), sampler, nfe=row_evals / max(num_samples, 1),
                           seconds=time.perf_counter() - start_time, details={"filter_on": where}, output=out)

    # ----- likelihood -----
    def bound_steps(self) -> int:
        """K of the chain whose bound ``nll_bound`` reports by default: ``nll_steps``, else
        T / ``nll_step_size`` (the official ``discrete_diffusion_elbo``, ``eval_step_size=4``)."""
        if self.nll_steps:
            return int(self.nll_steps)
        T = self.num_train_steps
        if not T:
            raise ValueError("the bound needs a discrete-time schedule (T steps) or model.nll_steps")
        if T % self.nll_step_size:  # the official code asserts num_steps % eval_step_size == 0
            raise ValueError(f"nll_step_size={self.nll_step_size} does not divide T={T}")
        return T // self.nll_step_size

    @torch.no_grad()
    def nll_bound(self, batch: Batch, num_t: int = 1, num_steps: Optional[int] = None,
                  spacing: str = "even") -> dict[str, Tensor]:
        """The bound on -log p(x) (nats per sequence) of the K-step reverse chain
        (``AbsorbingProcess.nll``; the official ``discrete_diffusion_elbo``), averaged over ``num_t``
        draws. K = ``num_steps`` or ``bound_steps()`` (official: T / 4), on the time grid ``spacing``
        ("even": K equal strides from t = 1, the official ``eval_step_size`` walk). Only diffused tokens
        count (not PAD, nor BOS/EOS with ``keep_special``). Returns "nll" (B,), "tokens" (B,) and "steps" (B,)
        (the K used).

        ⚠ Like the official ELBO it is a bound of a chain, not of the sampler at another K. Unlike it, the
        model's reveal probability under the spindle reads argmax x0_hat, as the sampler does (the official
        ELBO passes the true tokens' word frequencies to the model's posterior too), so this is a bound of
        the chain that is actually sampled; the two numbers are close but not identical.
        """
        with self.sampling():
            ids = batch["ids"]
            keep = self.keep_mask(ids)
            K = int(num_steps or self.bound_steps())
            draws = max(int(num_t), 1)
            nll = sum(self.process.nll(self.denoise, ids, K, keep=keep, spacing=spacing) for _ in range(draws)) / draws
        return {"nll": nll, "tokens": (~keep).sum(-1).float(), "steps": torch.full_like(nll, float(K))}

"""Difformer (Gao et al. 2022, "Difformer: Empowering Diffusion Models on the Embedding Space for Text
Generation"): seq2seq diffusion over a jointly learned embedding space, as the official code trains
and decodes it (ALGORITHMS.md §1; ⚠ marks where the code differs from the paper).

Training (``difformer.py::forward``), per batch: encode the source; z0 = sqrt(d) E[y]; t uniform on
the T-step chain; z_t = sqrt(abar) z0 + F sqrt(1 - abar) eps (the *noise factor* F, §3.3; in the
process); with probability 1/2 a no-grad first pass gives z0_prev for self-conditioning; the decoder
predicts z0_hat. Loss (all token-weighted means over real target tokens):

- diffusion: (z0_hat - z0)^2 (gradient reaches E through z0 as well);
- anchor (§3.1): label-smoothed CE of z0_hat . E^T against y (``token_loss="anchor"``); the
  Diffusion-LM rounding alternative scores z0 . E^T (``"rounding"``); ``"none"`` ablates it;
- length: CE of the length classifier, weight 0.1.

Decoding (``task.py``, ``generator.py``): K of T steps (20), early stopping (the output is the z0
estimate of the last call, 15 calls with 5 stopped), decoding F = 1 ⚠ (trained with F = 4), optional
clamping; 2D parallel decoding: b1 lengths around the predicted one x b2 noise draws in one batch;
the candidate with the best mean token log-prob (``forward_output_layer``: log-softmax over the vocabulary,
max, mean over the candidate's positions), BLEU-MBR (each candidate scored as the reference of the others, as
``bleu_rerank``), or an autoregressive reranker wins.

⚠ The paper calls its schedule "linear"; the official scripts train with ``--noise-schedule sqrt`` (the
code's "linear" is the VP-SDE curve, ``VPLinearSchedule``), and textdiff's configs follow the scripts.
The network's regularisation and initialisation are fairseq's (``DifformerNet``: residual dropout only,
``--apply-bert-init``).
"""
from __future__ import annotations

import time
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from textdiff.core.gaussian import GaussianProcess
from textdiff.core.sampler import Sampler
from textdiff.core.types import Batch, pad_sequences
from textdiff.families.base import DiffusionModule, OptimizerFactory, SamplerFactory, SchedulerFactory
from textdiff.families.interface import SamplingRun
from textdiff.metrics.selection import best_by_score, mbr_select
from textdiff.nn.difformer import DifformerNet

TOKEN_LOSSES = ("anchor", "rounding", "none")
SELECTIONS = ("logprob", "mbr", "rerank")


class Difformer(DiffusionModule):
    """Difformer.

    Args:
        network: a ``DifformerNet`` (encoder, decoder, shared embedding, length head).
        process: a ``GaussianProcess`` (official: ``DiscreteSchedule(SqrtSchedule(), 2000)``, x0
            prediction, ``noise_factor=4``, ``sample_noise_factor=1``).
        pad_id, bos_id, eos_id: special tokens of the joint vocabulary.
        token_loss: "anchor" (z0_hat . E^T), "rounding" (z0 . E^T) or "none".
        label_smoothing: of the token loss (0.1).
        length_loss_weight: weight of the length CE (0.1).
        self_condition_prob: share of training batches with a self-conditioning first pass (0.5);
            ignored when the network has no self-conditioning input.
        fixed_embeddings: freeze E (Table 3's "w/o anchor loss, fixed embeddings" row).
        clamp: snap z0_hat to sqrt(d) E[argmax z0_hat . E^T] at every decoding step (off in the scripts).
        length_beam, noise_beam: b1 x b2 candidates per source (scripts: 7 x 3 for translation).
        select: how a candidate is chosen: "logprob", "mbr" or "rerank" (needs ``set_reranker``).
        sampler, optimizer, lr_scheduler, time_sampling, time_eps, ema_decay: see ``DiffusionModule``.
    """

    renamed_weights = {"net.": "network."}  # checkpoints saved before the network was called `network`

    conditional = True

    def __init__(
        self,
        network: DifformerNet,
        process: GaussianProcess,
        pad_id: int,
        bos_id: int,
        eos_id: int,
        token_loss: str = "anchor",
        label_smoothing: float = 0.1,
        length_loss_weight: float = 0.1,
        self_condition_prob: float = 0.5,
        fixed_embeddings: bool = False,
        clamp: bool = False,
        length_beam: int = 1,
        noise_beam: int = 1,
        select: str = "logprob",
        sampler: Optional[SamplerFactory] = None,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
        time_sampling: str = "uniform",
        time_eps: float = 0.0,
        ema_decay: Optional[float] = None,
    ) -> None:
        super().__init__(process, sampler, optimizer, lr_scheduler, time_sampling, time_eps, ema_decay)
        if not isinstance(process, GaussianProcess):
            raise TypeError(f"Difformer needs a GaussianProcess, got {type(process).__name__}")
        if token_loss not in TOKEN_LOSSES:
            raise ValueError(f"token_loss must be one of {TOKEN_LOSSES}, got {token_loss!r}")
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
        if length_beam < 1 or noise_beam < 1:
            raise ValueError(f"length_beam and noise_beam must be >= 1, got {length_beam} and {noise_beam}")
        if not 0.0 <= self_condition_prob <= 1.0:
            raise ValueError(f"self_condition_prob must be in [0, 1], got {self_condition_prob}")
        self.network = network
        self.pad_id, self.bos_id, self.eos_id = int(pad_id), int(bos_id), int(eos_id)
        self.token_loss, self.label_smoothing = token_loss, float(label_smoothing)
        self.length_loss_weight, self.self_condition_prob = float(length_loss_weight), float(self_condition_prob)
        self.fixed_embeddings = bool(fixed_embeddings)
        if fixed_embeddings:
            self.network.embedding.weight.requires_grad_(False)
        self.clamp, self.length_beam, self.noise_beam, self.select = (bool(clamp), int(length_beam), int(noise_beam),
                                                                      select)
        self.reranker: Any = None  # not a submodule: never saved with this model's weights

    @property
    def vocab_size(self) -> int:
        """V, the joint vocabulary size."""
        return self.network.vocab_size

    # ----- training -----
    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        ids, mask = batch["ids"], batch["mask"]
        src, src_mask = batch["src_ids"], batch["src_mask"]
        net = self.network
        memory = net.encode(src, src_mask)
        length_target = net.length.target(mask.sum(-1), src_mask.sum(-1))
        length_logits = net.length_logits(memory, src_mask)
        length = F.cross_entropy(length_logits, length_target)
        z0 = net.embed(ids)
        t = self.sample_t(ids.shape[0])
        noise = torch.randn_like(z0)
        z_t = self.process.q_sample(z0, t, noise)  # DDPM eq. 4 with Difformer's F on the noise
        t_in = self.time_input(t)
        prev = None
        if net.self_condition and float(torch.rand(())) < self.self_condition_prob:
            with torch.no_grad():  # self-conditioning (Chen et al. 2022): a first pass with z0_prev = 0
                prev = self.process.to_x0(net(z_t, t_in, memory, mask=mask, src_mask=src_mask), z_t, t).detach()
        out = net(z_t, t_in, memory, mask=mask, src_mask=src_mask, self_cond=prev)
        z0_hat = self.process.to_x0(out, z_t, t)
        m = mask.bool()
        diffusion = ((out - self.process.target(z0, noise, t)) ** 2)[m].mean()  # L_simple over real tokens
        terms = {"diffusion": diffusion, "length": length}
        loss = diffusion + self.length_loss_weight * length
        if self.token_loss != "none":
            logits = net.logits((z0 if self.token_loss == "rounding" else z0_hat)[m])  # anchor loss (§3.1)
            terms["token"] = F.cross_entropy(logits, ids[m], label_smoothing=self.label_smoothing)
            loss = loss + terms["token"]
        terms["length_acc"] = (length_logits.argmax(-1) == length_target).float().mean().detach()
        return {"loss": loss, **terms}

    # ----- decoding -----
    def set_reranker(self, model: Any) -> None:
        """An autoregressive model with ``score(ids, mask, src_ids, src_mask) -> {"logprob", "tokens"}``
        for ``select="rerank"`` (the paper's candidates reranked by a Transformer, ``--ppl-mbr``)."""
        if not hasattr(model, "score"):
            raise TypeError(f"a reranker needs a score(...) method; {type(model).__name__} has none")
        self.reranker = model

    def _clamp_hook(self) -> Any:
        return lambda z0, t: self.network.embed(self.network.logits(z0).argmax(-1))  # clamping: snap to sqrt(d) E[w]

    def _frame(self, rows: list[list[int]]) -> tuple[Tensor, Tensor]:
        """BOS + tokens + EOS, right-padded: (N, L) ids and mask on this model's device."""
        ids, mask = pad_sequences([[self.bos_id, *r, self.eos_id] for r in rows], self.pad_id)
        return ids.to(self.device), mask.to(self.device)

    def build_sampler(self, **overrides: Any) -> Sampler:
        """The configured sampler; it self-conditions whenever the network takes a self-conditioning input."""
        return super().build_sampler(**{"self_condition": self.network.self_condition, **overrides})

    @torch.no_grad()
    def generate_run(
        self,
        src_ids: Tensor,
        src_mask: Optional[Tensor] = None,
        *,
        length_beam: Optional[int] = None,
        noise_beam: Optional[int] = None,
        select: Optional[str] = None,
        clamp: Optional[bool] = None,
        seed: Optional[int] = None,
        sampler: Optional[Sampler] = None,
        **sampler_overrides: Any,
    ) -> SamplingRun:
        """Translate/summarise a batch of sources.

        Args:
            src_ids: (B, S) source ids (BOS ... EOS, PAD after).
            src_mask: (B, S) True on real tokens (default: ``src_ids != pad_id``).
            length_beam, noise_beam, select, clamp: override the model's decoding settings.
            seed: seeds the noise (same seed, same output).
            sampler: a built ``Sampler`` to run; or **sampler_overrides, e.g. ``num_steps=20``, ``early_stop=5``.

        Returns:
            a ``SamplingRun``: ids (B, L) long, BOS + the chosen candidate's non-special tokens + EOS, PAD after;
            ``nfe`` = K x candidates network evaluations per source; ``extras["candidates"]``: every candidate and
            its score, ``{"ids": (B, n, Lc), "mask", "logprob": (B, n), "chosen": (B,)}``.
        """
        start_time = time.perf_counter()
        b1, b2 = length_beam or self.length_beam, noise_beam or self.noise_beam
        select = select or self.select
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
        if select == "rerank" and self.reranker is None:
            raise ValueError("select='rerank' needs an autoregressive model: call set_reranker(model) first")
        with self.sampling():
            net, dev = self.network, self.device
            src_ids = src_ids.to(dev)
            src_mask = (src_ids != self.pad_id) if src_mask is None else src_mask.to(dev).bool()
            B, n = src_ids.shape[0], b1 * b2
            memory = net.encode(src_ids, src_mask)
            lengths = net.length.predict(net.length_logits(memory, src_mask), src_mask.sum(-1), beam=b1,
                                         min_len=2, max_len=net.max_len)  # (B, b1)
            # (B n): source-major, then length, then noise
            lengths = lengths.unsqueeze(-1).expand(B, b1, b2).reshape(-1)
            L = int(lengths.max())
            cand_mask = torch.arange(L, device=dev) < lengths.unsqueeze(-1)
            kv, src_mask_r = net.memory_kv(memory, n), src_mask.repeat_interleave(n, 0)  # once, not at every step
            sampler = self.sampler_for(sampler, sampler_overrides)
            use_clamp = self.clamp if clamp is None else clamp
            gen = self.seeded_generator(seed, dev)

            def denoise(z: Tensor, t: Tensor, sc: Optional[Tensor]) -> Tensor:
                return net(z, self.time_input(t), None, mask=cand_mask, src_mask=src_mask_r, self_cond=sc, memory_kv=kv)

            out = sampler.sample(denoise, (B * n, L, net.latent_dim), generator=gen, device=dev,
                                 hooks=[self._clamp_hook()] if use_clamp else [])
            logp = F.log_softmax(net.logits(out.x0).float(), -1)  # the last z0 estimate (with early stopping too)
            best, tokens = logp.max(-1)
            score = (best * cand_mask).sum(-1) / cand_mask.sum(-1)  # mean token log-prob (fairseq NAT)
            special = {self.pad_id, self.bos_id, self.eos_id}
            rows = [[w for w in tok[:int(k)] if w not in special] for tok, k in zip(tokens.tolist(), lengths.tolist())]
            cand_ids, cand_m = self._frame(rows)
            scores = score.view(B, n)
            if select == "logprob":
                chosen = best_by_score(scores)
            elif select == "mbr":
                chosen = torch.tensor(mbr_select([rows[i * n:(i + 1) * n] for i in range(B)]), device=dev)
            else:
                r = self.reranker.score(cand_ids, cand_m, src_ids.repeat_interleave(n, 0),
                                        src_mask.repeat_interleave(n, 0))
                chosen = best_by_score((r["logprob"] / r["tokens"].clamp_min(1)).view(B, n))
            picked = [rows[i * n + int(c)] for i, c in enumerate(chosen.tolist())]
            ids, _ = self._frame(picked)
        candidates = {"ids": cand_ids.view(B, n, -1), "mask": cand_m.view(B, n, -1), "logprob": scores,
                      "chosen": chosen}
        return SamplingRun(ids, sampler, nfe=out.row_evals / B, seconds=time.perf_counter() - start_time,
                           details={"candidates": n, "length_beam": b1, "noise_beam": b2, "select": select},
                           output=out, extras={"candidates": candidates})

"""Degenerate reference rows of the comparison tables: "models" with nothing learned, which every real model must
beat on the quality/diversity frontier (issue 21, item 2b). They are trained, checkpointed, reloaded, sampled and
scored (judge perplexity included) exactly as the real entrants are; only the statistics of the training split are
kept, in buffers:

- ``mode="frequent"``: the ``top_n`` commonest training sentences, repeated in turn (sample i is sentence
  i mod top_n). Sentences are counted as token-id sequences under the run's tokenizer; ties (every sentence of
  Tatoeba is unique) go to the one met first in the training split; with ``skip_unk`` sentences holding [UNK] are
  left out (they are holes of the vocabulary, not sentences: on Tatoeba the commonest id sequence is
  "Tom is a [UNK].", 25 different sentences). Real sentences (memorisation 1.0, unless the word tokenizer's decoding
  moves 4-grams: E2E's "£30" comes back as "£ 30"), no diversity.
- ``mode="unigram"``: each sample's length (tokens between BOS and EOS) drawn from the training lengths, each token
  i.i.d. from the training unigram distribution raised to 1 / ``temperature`` (renormalised; 1 = the plain unigram
  model, < 1 sharpens it towards the commonest tokens). The right words in the wrong order.

There is no network and no optimiser: ``setup`` counts the training split (``datamodule.statistics_sequences()``),
the fit stops before its first step (``global_step`` 0, no trainable parameters), and ``LastCheckpoint`` writes the
buffers to ``last.ckpt`` when the fit ends. Not a likelihood model: no ``nll_bound`` (``compute_loss`` is the
temperature-1 unigram cross-entropy, for the validation log only). One process (DDP needs parameters).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Literal, Optional, Sequence

import torch
from torch import Tensor

from textdiff.core.types import Batch
from textdiff.families.base import TextModule
from textdiff.families.interface import SamplingRun

log = logging.getLogger(__name__)

MODES = ("frequent", "unigram")


class DegenerateReference(TextModule):
    """A reference row with no learned network: the commonest training sentences, or a (low-temperature) unigram
    sampler.

    Args:
        vocab_size: V (``${data.vocab_size}``). max_len: L, BOS and EOS included (``${data.max_len}``).
        pad_id, bos_id, eos_id, unk_id: the tokenizer's special ids (``${tokens.*}``; ``unk_id`` may be None).
        mode: "frequent" or "unigram" (the module docstring); ``generate_run(mode=...)`` draws the other one from
            the same statistics.
        top_n: sentences that "frequent" repeats (fewer when the corpus has fewer).
        temperature: T of "unigram": p(token) ∝ count ** (1 / T), T > 0.
        skip_unk: leave sentences with [UNK] out of "frequent".
        optimizer, lr_scheduler: ignored (nothing is optimised); accepted because a comparison budget
            (``conf/compare/*.yaml``) sets ``model.lr_scheduler.warmup_steps`` on every entrant.

    Buffers (in checkpoints): ``token_counts`` (V,) long, content tokens only (not PAD/BOS/EOS);
    ``length_counts`` (L - 1,) long, index n = sentences of n tokens between BOS and EOS; ``sentences``
    (top_n, L) long, the ranked sentences as BOS ... EOS PAD; ``sentence_counts`` (top_n,) long (0 = no sentence).
    """

    def __init__(self, vocab_size: int, max_len: int, pad_id: int, bos_id: int, eos_id: int,
                 unk_id: Optional[int] = None, mode: Literal["frequent", "unigram"] = "unigram", top_n: int = 10,
                 temperature: float = 0.5, skip_unk: bool = True, optimizer: Any = None,
                 lr_scheduler: Any = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if int(top_n) < 1 or float(temperature) <= 0 or int(max_len) < 3:
            raise ValueError(f"need top_n >= 1, temperature > 0 and max_len >= 3; got {top_n}, {temperature}, "
                             f"{max_len}")
        self.vocab_size, self.max_len, self.mode = int(vocab_size), int(max_len), mode
        self.pad_id, self.bos_id, self.eos_id = int(pad_id), int(bos_id), int(eos_id)
        self.unk_id = None if unk_id is None else int(unk_id)
        self.top_n, self.temperature, self.skip_unk = int(top_n), float(temperature), bool(skip_unk)
        self.register_buffer("token_counts", torch.zeros(self.vocab_size, dtype=torch.long))
        self.register_buffer("length_counts", torch.zeros(self.max_len - 1, dtype=torch.long))
        self.register_buffer("sentences", torch.full((self.top_n, self.max_len), self.pad_id, dtype=torch.long))
        self.register_buffer("sentence_counts", torch.zeros(self.top_n, dtype=torch.long))

    # ----- statistics -----
    @property
    def fitted(self) -> bool:
        """Whether the statistics are there (counted by ``fit_statistics`` or loaded from a checkpoint)."""
        return bool(self.token_counts.sum() > 0)

    def content(self, seq: Sequence[int]) -> list[int]:
        """The tokens of one framed sequence (n,) between a leading BOS and the first EOS, PAD dropped, capped at
        L - 2."""
        seq = [int(i) for i in seq]
        start = 1 if seq and seq[0] == self.bos_id else 0
        end = seq.index(self.eos_id, start) if self.eos_id in seq[start:] else len(seq)
        return [i for i in seq[start:end] if i != self.pad_id][: self.max_len - 2]

    def fit_statistics(self, seqs: Sequence[Sequence[int]]) -> None:
        """Count the training sequences (each a list of ids, framed as the datamodule frames them) into the buffers:
        token and length counts, and the ``top_n`` commonest sentences (ties: the first met; [UNK] ones left out
        with ``skip_unk``)."""
        sentences = [tuple(self.content(s)) for s in seqs]
        sentences = [s for s in sentences if s]
        if not sentences:
            raise ValueError("no non-empty training sequence to count")
        tokens = torch.tensor([t for s in sentences for t in s])
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"token ids outside [0, {self.vocab_size}): is vocab_size the tokenizer's?")
        counts = torch.bincount(tokens, minlength=self.vocab_size)
        counts[[self.pad_id, self.bos_id, self.eos_id]] = 0
        lengths = torch.bincount(torch.tensor([len(s) for s in sentences]), minlength=self.max_len - 1)
        ranked = Counter(s for s in sentences if not (self.skip_unk and self.unk_id in s)).most_common(self.top_n)
        if not ranked:  # every sentence has an [UNK]
            raise ValueError("every training sentence holds [UNK]: set skip_unk=false")
        self.token_counts.copy_(counts)
        self.length_counts.copy_(lengths)
        self.sentences.fill_(self.pad_id)
        self.sentence_counts.zero_()
        for row, (s, n) in enumerate(ranked):  # most_common keeps first-met order among equal counts
            self.sentences[row, : len(s) + 2] = torch.tensor([self.bos_id, *s, self.eos_id])
            self.sentence_counts[row] = n
        log.info("%s: counted %d training sentences (%d tokens); %d occurrence(s) of the commonest",
                 type(self).__name__, len(sentences), int(counts.sum()), ranked[0][1])

    def unigram_probs(self, temperature: Optional[float] = None) -> Tensor:
        """p(token) ∝ count ** (1 / T) over the content tokens, T = ``temperature`` (default the model's): (V,)
        float64, summing to 1."""
        T = self.temperature if temperature is None else float(temperature)
        if T <= 0:
            raise ValueError(f"temperature must be > 0, got {T}")
        c = self.token_counts.double()
        p = (c / c.max()) ** (1.0 / T)  # scaled first: count ** 10 overflows nothing
        return p / p.sum()

    def setup(self, stage: str) -> None:
        """Count the training split of the trainer's datamodule when fitting (once: loaded statistics are kept)."""
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage != "fit" or self.fitted or dm is None:
            return
        if getattr(dm, "padding", "pad") == "block":
            raise ValueError(f"{type(self).__name__} needs one sentence per example (data.padding=pad), not blocks")
        seqs = dm.statistics_sequences() if hasattr(dm, "statistics_sequences") else [
            item["ids"] for item in dm.dataset("train")]
        self.fit_statistics(seqs)

    # ----- "training": nothing to learn -----
    def configure_optimizers(self) -> None:
        """No optimiser (Lightning runs the fit without one)."""
        return None

    def on_train_start(self) -> None:
        """Stop the fit before its first step: the statistics were counted in ``setup``."""
        log.info("%s: nothing to train, the fit stops at step %d", type(self).__name__, self.global_step)
        self.trainer.should_stop = True

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        """Never reached (the fit stops first); a step would learn nothing."""
        return None

    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        """Cross-entropy (nats per token) of the batch's content tokens (not PAD/BOS/EOS) under the temperature-1
        unigram, add-one smoothed: the validation log's number; not a bound of what is sampled."""
        ids = batch["ids"]
        p = (self.token_counts.double() + 1) / (self.token_counts.sum() + self.vocab_size)
        keep = (ids != self.pad_id) & (ids != self.bos_id) & (ids != self.eos_id)
        nll = -p.log()[ids[keep]]
        return {"loss": nll.mean().float() if nll.numel() else torch.zeros((), device=ids.device)}

    # ----- sampling -----
    @torch.no_grad()
    def generate_run(self, num_samples: int, seq_len: Optional[int] = None, *, seed: Optional[int] = None,
                     batch_size: int = 256, mode: Optional[str] = None, temperature: Optional[float] = None,
                     ) -> SamplingRun:
        """New samples: (N, L) ids framed BOS tokens EOS PAD.

        Args:
            num_samples: N. seq_len: L (default ``max_len``): "frequent" cuts longer sentences (EOS last),
                "unigram" draws only the lengths that fit (n <= L - 2).
            seed: seeds the draws ("unigram"; "frequent" draws nothing); same seed, same samples.
            batch_size: accepted for the common interface: every draw is one batch.
            mode, temperature: override the model's.

        Returns: a ``SamplingRun`` with ids (N, L) long, no sampler, ``details`` = the mode and its settings.
        """
        start = time.perf_counter()
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} has no statistics: fit it (textdiff-train) or call "
                               "fit_statistics(training sequences)")
        L, N = int(seq_len or self.max_len), int(num_samples)
        if L < 3:
            raise ValueError(f"seq_len must be >= 3 (BOS, a token, EOS), got {L}")
        gen = self.seeded_generator(seed, "cpu")
        if mode == "frequent":
            k = int((self.sentence_counts > 0).sum())
            rows = self.sentences[:k].cpu()[torch.arange(N) % k]
            lengths = (rows != self.pad_id).sum(-1) - 2
            pool = rows[:, 1:].clone()  # the content, then EOS / PAD (rewritten below)
            details: dict[str, Any] = {"mode": mode, "top_n": k}
        else:
            T = self.temperature if temperature is None else float(temperature)
            hist = self.length_counts[: L - 1].double().cpu()
            if hist.sum() == 0:
                raise ValueError(f"no training sentence fits seq_len={L}")
            lengths = torch.multinomial(hist, N, replacement=True, generator=gen)
            pool = torch.multinomial(self.unigram_probs(T).cpu(), N * (L - 2), replacement=True,
                                     generator=gen).view(N, L - 2)
            details = {"mode": mode, "temperature": T}
        lengths = lengths.clamp(max=L - 2)
        pos = torch.arange(L)
        ids = torch.full((N, L), self.pad_id, dtype=torch.long)
        ids[:, 0] = self.bos_id
        body = (pos[None, 1:] <= lengths[:, None])  # positions 1..n hold the content
        width = min(pool.shape[1], L - 1)
        ids[:, 1:1 + width] = torch.where(body[:, :width], pool[:, :width], self.pad_id)
        ids[torch.arange(N), lengths + 1] = self.eos_id
        return SamplingRun(ids.to(self.device), seconds=time.perf_counter() - start, details=details)

    def generate(self, *args: Any, **kwargs: Any) -> Tensor:
        """``generate_run(...).ids``: (N, L) long."""
        return self.generate_run(*args, **kwargs).ids

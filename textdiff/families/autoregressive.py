"""The autoregressive Transformer baseline (Vaswani et al. 2017), as fairseq trains and decodes it.

Training is teacher forcing: the network reads ids[:, :-1] and predicts ids[:, 1:], with
label-smoothed cross-entropy over the real (non-pad) target tokens (Szegedy et al. 2016; Vaswani
et al. §5.4, eps_ls = 0.1):

    loss_i = (1 - eps) (-log p(y_i | y_<i, x)) + eps * mean_v (-log p(v | y_<i, x)),

averaged over tokens (torch's ``label_smoothing`` spreads eps over all V classes; fairseq's over the
V - 1 others — a difference of eps / V in the smoothing weight).

The model is conditional (encoder-decoder, ``generate(src_ids, src_mask, ...)`` by beam search) when
its network has an encoder, and a language model (``generate(num_samples, ...)`` by ancestral
sampling) when ``enc_depth == 0``. Its exact likelihood, log p(y|x) = sum_i log p(y_i | y_<i, x),
serves reranking (``score``) and perplexity (``nll_bound``, which is exact here, not a bound).

Decoding (beam search, greedy = beam 1, ancestral sampling) uses a key/value cache by default
(``ARTransformer.start_cache`` / ``decode_step``): each step feeds only the newest token, attending to the
cached keys/values of the earlier positions (and of the source, computed once), so a sequence of length L
costs L single-position decoder passes. ``use_cache=False`` keeps the reference path, which recomputes the
whole prefix at every step (L passes over prefixes of length 1..L, O(L^2) token positions); both give the
same ids up to float rounding of the logits.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import torch
from torch import Tensor

from textdiff.core.categorical import sample_categorical
from textdiff.core.hooks import LogitFilter
from textdiff.core.types import Batch
from textdiff.families.base import OptimizerFactory, SchedulerFactory, TextModule
from textdiff.families.interface import SamplingRun
from textdiff.nn.autoregressive import ARTransformer

NEG_INF = float("-inf")


def _trim(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop trailing columns that are padding in every row: (B, L) -> (B, L') with L' the longest row."""
    width = max(int(mask.sum(1).max()), 1) if mask.numel() else ids.shape[1]
    return ids[:, :width], mask[:, :width]


class Autoregressive(TextModule):
    """Autoregressive Transformer: encoder-decoder for seq2seq, decoder-only for language modelling.

    Args:
        network: an ``ARTransformer``; ``network.enc_depth > 0`` makes the model conditional.
        pad_id, bos_id, eos_id: special-token ids of the tokenizer.
        label_smoothing: eps of the label-smoothed training loss (fairseq IWSLT: 0.1).
        beam_size: default beam width of ``generate`` for conditional models (fairseq IWSLT: 5; 4 here).
        length_penalty: default alpha of the beam score sum log p / length**alpha (fairseq: 1.0).
        max_len: default length cap of generated sequences, BOS and EOS included (None = the
            network's ``max_len``).
        optimizer, lr_scheduler, ema_decay: see ``TextModule``.
    """

    def __init__(
        self,
        network: ARTransformer,
        pad_id: int,
        bos_id: int,
        eos_id: int,
        label_smoothing: float = 0.1,
        beam_size: int = 4,
        length_penalty: float = 1.0,
        max_len: Optional[int] = None,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
        ema_decay: Optional[float] = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if len({pad_id, bos_id, eos_id}) != 3 or None in (pad_id, bos_id, eos_id):
            raise ValueError(f"pad_id, bos_id, eos_id must be three distinct ids, got {pad_id}, {bos_id}, {eos_id}")
        self.network = network
        self.conditional = network.enc_depth > 0
        self.vocab_size = network.vocab_size
        self.pad_id, self.bos_id, self.eos_id = int(pad_id), int(bos_id), int(eos_id)
        self.label_smoothing = float(label_smoothing)
        self.beam_size, self.length_penalty = self._check_beam(beam_size), float(length_penalty)
        self.max_len = self._check_len(max_len if max_len is not None else network.max_len, "max_len")

    # ----- checks -----
    @staticmethod
    def _check_beam(beam_size: int) -> int:
        if int(beam_size) < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        return int(beam_size)

    def _check_len(self, length: int, name: str) -> int:
        if not 2 <= int(length) <= self.network.max_len:
            raise ValueError(f"{name}={length} must be in [2, {self.network.max_len}] (BOS and EOS included; "
                             "the upper end is the network's max_len)")
        return int(length)

    def _source(self, src_ids: Optional[Tensor], src_mask: Optional[Tensor], where: str
                ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Check the source against the model kind; trim it. Returns (src_ids, src_mask) or (None, None)."""
        if not self.conditional:
            if src_ids is not None:
                raise ValueError(f"{where}: this is an unconditional language model (enc_depth=0); "
                                 "it takes no src_ids")
            return None, None
        if src_ids is None:
            raise ValueError(f"{where}: this is a conditional (encoder-decoder) model; pass src_ids and src_mask")
        if src_mask is None:
            src_mask = src_ids != self.pad_id
        if not bool(src_mask.any(1).all()):
            raise ValueError(f"{where}: every source row needs at least one real token")
        return _trim(src_ids, src_mask.bool())

    # ----- teacher forcing -----
    def teacher_forced_logits(self, ids: Tensor, mask: Tensor, src_ids: Optional[Tensor] = None,
                              src_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Logits of every next token given its prefix (and the source).

        Args:
            ids: (B, L) long, BOS ... EOS then PAD. mask: (B, L) bool, True on real tokens.
            src_ids, src_mask: (B, S) source (conditional models only).

        Returns:
            logits (B, L'-1, V) predicting ``targets`` (B, L'-1) = ids[:, 1:L'], and ``target_mask``
            (B, L'-1) = mask[:, 1:L'], where L' <= L drops columns that are padding in every row.
        """
        src_ids, src_mask = self._source(src_ids, src_mask, "teacher forcing")
        ids, mask = _trim(ids, mask.bool())
        if ids.shape[1] < 2:
            raise ValueError("sequences need at least two positions (BOS and one token)")
        memory = self.network.encode(src_ids, src_mask) if self.conditional else None
        logits = self.network.decode(ids[:, :-1], memory, src_mask, tgt_mask=mask[:, :-1])
        return logits, ids[:, 1:], mask[:, 1:]

    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        """Teacher-forced training loss of a batch (``ids``/``mask`` (B, L); ``src_ids``/``src_mask`` (B, S)
        for conditional models).

        Returns:
            scalars: "loss", the label-smoothed CE averaged over the non-pad target tokens ids[:, 1:];
            "nll", the unsmoothed mean NLL per token (nats) over the same tokens.
        """
        logits, targets, tmask = self.teacher_forced_logits(batch["ids"], batch["mask"], batch.get("src_ids"),
                                                            batch.get("src_mask"))
        logp = logits.float().log_softmax(-1)  # (B, L-1, V)
        nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L-1)
        smooth = -logp.mean(-1)  # uniform-target cross-entropy
        eps, w = self.label_smoothing, tmask.float()
        n = w.sum().clamp_min(1.0)
        loss = (((1 - eps) * nll + eps * smooth) * w).sum() / n
        return {"loss": loss, "nll": (nll * w).sum() / n}

    @torch.no_grad()
    def score(self, ids: Tensor, mask: Tensor, src_ids: Optional[Tensor] = None,
              src_mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Teacher-forced log-likelihood in eval mode: sum_i log p(y_i | y_<i, x) over every real token
        after BOS (EOS included).

        Args:
            ids: (B, L) long, BOS ... EOS then PAD. mask: (B, L) bool, True on real tokens.
            src_ids, src_mask: (B, S) source (conditional models only; required there).

        Returns:
            {"logprob": (B,) float, "tokens": (B,) float (the number of scored tokens)}.
            Reranking uses logprob / tokens.
        """
        with self.sampling():
            logits, targets, tmask = self.teacher_forced_logits(ids, mask, src_ids, src_mask)
        picked = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        w = tmask.float()
        return {"logprob": (picked * w).sum(-1), "tokens": w.sum(-1)}

    @torch.no_grad()
    def nll_bound(self, batch: Batch, **ignored: Any) -> dict[str, Tensor]:
        """Exact NLL -log p(y | x) in nats per sequence: -``score``. Extra keyword arguments (``num_t``
        and others meant for diffusion bounds) are ignored.

        Returns:
            {"nll": (B,), "tokens": (B,)} with tokens counted as in ``score`` (after BOS, EOS included).
        """
        out = self.score(batch["ids"], batch["mask"], batch.get("src_ids"), batch.get("src_mask"))
        return {"nll": -out["logprob"], "tokens": out["tokens"]}

    # ----- generation -----
    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Generate token ids; the signature follows the model kind (``self.conditional``):

        - conditional: ``generate(src_ids, src_mask, *, beam_size=None, max_len=None, min_len=None,
          length_penalty=None, seed=None, return_scores=False, use_cache=True, **ignored)`` -> ``beam_search``
          (src_ids, src_mask (B, S));
        - unconditional: ``generate(num_samples, seq_len=None, *, seed=None, batch_size=256,
          temperature=1.0, top_k=None, top_p=None, float64=False, use_cache=True, **ignored)`` -> ``sample``.

        Returns (B, L) long ids: BOS, the tokens, EOS where one was produced, then PAD.
        Raises a ValueError naming the right call when the arguments fit the other kind.
        """
        first = args[0] if args else kwargs.get("src_ids", kwargs.get("num_samples"))
        if self.conditional:
            if not isinstance(first, Tensor):
                raise ValueError("this is a conditional (encoder-decoder) model: call "
                                 "generate(src_ids, src_mask, ...) with the source tensors, not a sample count")
            return self.beam_search(*args, **kwargs)
        if isinstance(first, Tensor) or "src_ids" in kwargs:
            raise ValueError("this is an unconditional language model (enc_depth=0): call "
                             "generate(num_samples, seq_len=None, ...); it takes no source")
        return self.sample(*args, **kwargs)

    def generate_run(self, *args: Any, **kwargs: Any) -> SamplingRun:
        """``generate`` (same arguments) as a ``SamplingRun``: the ids, the wall-clock seconds, and the decoding
        settings given (``details``); no sampler."""
        if kwargs.get("return_scores"):
            raise ValueError("generate_run returns the ids only; call beam_search(..., return_scores=True) for scores")
        start = time.perf_counter()
        ids = self.generate(*args, **kwargs)
        settings = (("beam_size", "length_penalty", "max_len", "min_len", "use_cache") if self.conditional
                    else ("temperature", "top_k", "top_p", "float64", "use_cache"))
        return SamplingRun(ids, seconds=time.perf_counter() - start,
                           details={k: kwargs[k] for k in settings if kwargs.get(k) is not None})

    def _next_logprobs(self, tokens: Tensor, memory: Optional[Tensor], memory_mask: Optional[Tensor]) -> Tensor:
        """log p(next token | prefix) for prefixes (N, t), recomputed from scratch: (N, V) float."""
        return self.network.decode(tokens, memory, memory_mask, last_only=True)[:, -1].float().log_softmax(-1)

    def _cached_logprobs(self, tokens: Tensor, cache: Any) -> Tensor:
        """log p(next token | prefix) for prefixes (N, t) whose first t - 1 positions are in ``cache`` (a
        ``DecodeCache``, advanced by one position): (N, V) float."""
        return self.network.decode_step(tokens[:, -1], cache).float().log_softmax(-1)

    @torch.no_grad()
    def beam_search(self, src_ids: Tensor, src_mask: Optional[Tensor] = None, *, beam_size: Optional[int] = None,
                    max_len: Optional[int] = None, min_len: Optional[int] = None,
                    length_penalty: Optional[float] = None, seed: Optional[int] = None, return_scores: bool = False,
                    use_cache: bool = True, **ignored: Any) -> Any:
        """Batched beam search (fairseq's ``SequenceGenerator``), all sources and beams in one batch.

        At each step every live beam is extended by every token (PAD and BOS excluded); the best 2K
        candidates by summed log-prob are kept. A candidate ending in EOS among the top K is finished
        with score sum log p / n**length_penalty (n = generated tokens, EOS included; BOS not); the
        first K candidates that do not end in EOS continue. A source is done when it has K finished
        hypotheses; at ``max_len`` EOS is forced (and before ``min_len`` banned). The best finished hypothesis
        by score is returned.

        Args:
            src_ids: (B, S) long source. src_mask: (B, S) bool, True on real tokens (None: src_ids != PAD).
            beam_size: K (default: the model's); 1 is greedy decoding.
            max_len: output length cap, BOS and EOS included (default: the model's ``max_len``).
            min_len: shortest output, BOS and EOS included (fairseq's ``--min-len``): EOS is banned at the
                positions before min_len - 1 (default: no minimum; ``min_len == max_len`` decodes exactly
                max_len positions, as benchmarks need).
            length_penalty: alpha (default: the model's).
            seed: accepted for a uniform interface; beam search is deterministic.
            return_scores: also return the chosen hypotheses' length-normalised scores (B,).
            use_cache: decode incrementally with the network's key/value cache (default); False recomputes
                every prefix at every step (the reference path; same ids up to float rounding).

        Returns:
            (B, L) long ids: BOS, tokens, EOS, then PAD (L = the longest hypothesis); with
            ``return_scores``, ``(ids, scores)``.
        """
        K = self._check_beam(beam_size if beam_size is not None else self.beam_size)
        L = self._check_len(max_len if max_len is not None else self.max_len, "max_len")
        shortest = 2 if min_len is None else int(min_len)
        if not 2 <= shortest <= L:
            raise ValueError(f"min_len={min_len} must be in [2, max_len={L}] (BOS and EOS included)")
        alpha = float(length_penalty if length_penalty is not None else self.length_penalty)
        src_ids, src_mask = self._source(src_ids, src_mask, "generate")
        with self.sampling():
            B, V, dev = src_ids.shape[0], self.vocab_size, src_ids.device
            memory, memory_mask, cache = self.network.encode(src_ids, src_mask), src_mask, None
            if use_cache:  # the source's cross-attention keys/values once per source, shared by its K beams
                cache = self.network.start_cache(memory, memory_mask, beams=K, max_len=L)
            else:
                memory, memory_mask = memory.repeat_interleave(K, 0), memory_mask.repeat_interleave(K, 0)  # (B*K, S)
            tokens = torch.full((B * K, 1), self.bos_id, dtype=torch.long, device=dev)
            cum = torch.full((B, K), NEG_INF, device=dev)
            cum[:, 0] = 0.0  # one live beam at the start, so the first step picks K distinct tokens
            finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
            width = min(2 * K, K * V)
            for step in range(1, L):  # choose the token at position `step` (= number generated so far)
                if cache is not None:
                    logp = self._cached_logprobs(tokens, cache)  # (B*K, V)
                else:
                    logp = self._next_logprobs(tokens, memory, memory_mask)
                logp[:, [self.pad_id, self.bos_id]] = NEG_INF
                if step + 1 < shortest:  # EOS here would end the output before min_len
                    logp[:, self.eos_id] = NEG_INF
                if step == L - 1:  # last position: only EOS (fairseq forces EOS at the length cap)
                    eos_logp = logp[:, self.eos_id].clone()
                    logp.fill_(NEG_INF)[:, self.eos_id] = eos_logp
                cand = (cum.view(B * K, 1) + logp).view(B, K * V)
                top, idx = cand.topk(width, dim=-1)  # (B, 2K), best first
                beam, tok = idx // V, idx % V
                is_eos = tok == self.eos_id
                top_l, beam_l, eos_l = top.tolist(), beam.tolist(), is_eos.tolist()
                for b in range(B):
                    for j in range(min(K, width)):
                        if eos_l[b][j] and top_l[b][j] > NEG_INF and len(finished[b]) < K:
                            prefix = tokens[b * K + beam_l[b][j], 1:].tolist()
                            finished[b].append((top_l[b][j] / step ** alpha, prefix + [self.eos_id]))
                if all(len(f) >= K for f in finished):
                    break
                # the first K non-EOS candidates continue (an EOS one only fills up, with score -inf)
                order = (is_eos.long() * width + torch.arange(width, device=dev)).argsort(-1)[:, :K]
                cum = top.gather(1, order).masked_fill(is_eos.gather(1, order), NEG_INF)
                rows = (torch.arange(B, device=dev).unsqueeze(1) * K + beam.gather(1, order)).view(-1)
                tokens = torch.cat([tokens[rows], tok.gather(1, order).view(-1, 1)], dim=1)
                if cache is not None and K > 1:  # (K = 1: every row keeps its own single beam)
                    cache.reorder(rows)
        best = [max(f, key=lambda h: h[0]) for f in finished]  # max keeps the first of equal scores
        out = torch.full((B, 1 + max(len(h[1]) for h in best)), self.pad_id, dtype=torch.long, device=dev)
        out[:, 0] = self.bos_id
        for b, (_, seq) in enumerate(best):
            out[b, 1:1 + len(seq)] = torch.tensor(seq, dtype=torch.long, device=dev)
        if return_scores:
            return out, torch.tensor([h[0] for h in best], device=dev)
        return out

    @torch.no_grad()
    def sample(self, num_samples: int, seq_len: Optional[int] = None, *, seed: Optional[int] = None,
               batch_size: int = 256, temperature: float = 1.0, top_k: Optional[int] = None,
               top_p: Optional[float] = None, float64: bool = False, use_cache: bool = True,
               **ignored: Any) -> Tensor:
        """Ancestral sampling of a language model: from BOS, draw y_i ~ p(. | y_<i) (PAD and BOS
        banned; temperature / top-k / top-p through ``LogitFilter``) until EOS or ``seq_len``.

        Args:
            num_samples: N.
            seq_len: output length L, BOS included (default: the model's ``max_len``); a row that
                reaches it without EOS is cut there (no EOS).
            seed: seeds a torch.Generator (same seed and batch_size, same samples).
            batch_size: sequences decoded together.
            temperature, top_k, top_p: see ``LogitFilter``.
            float64: draw each token from the filtered log-probs cast to float64 (``sample_categorical``; other
                ids for the same seed). Off by default, as fairseq's sampling (``torch.multinomial`` on float32
                probabilities), which this baseline follows.
            use_cache: decode incrementally with the network's key/value cache (default); False recomputes
                every prefix at every step (the reference path; same samples up to float rounding).

        Returns:
            (N, L) long ids: BOS, tokens, EOS, then PAD.
        """
        if self.conditional:
            raise ValueError("sample() is for unconditional language models; this model is conditional: "
                             "use generate(src_ids, src_mask, ...)")
        if int(num_samples) < 1 or int(batch_size) < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
        L = self._check_len(seq_len if seq_len is not None else self.max_len, "seq_len")
        filt = LogitFilter(top_k=top_k, top_p=top_p, temperature=temperature, banned_ids=[self.pad_id, self.bos_id])
        with self.sampling():
            gen = self.seeded_generator(seed)
            out = torch.full((int(num_samples), L), self.pad_id, dtype=torch.long, device=self.device)
            no_t = torch.zeros(1, device=self.device)
            for start, n in self.batches(num_samples, batch_size):
                tokens = torch.full((n, 1), self.bos_id, dtype=torch.long, device=self.device)
                alive = torch.ones(n, dtype=torch.bool, device=self.device)
                cache = self.network.start_cache(batch=n, max_len=L) if use_cache else None
                for _ in range(1, L):
                    logp = (self._cached_logprobs(tokens, cache) if cache is not None
                            else self._next_logprobs(tokens, None, None))
                    logp = filt(logp.unsqueeze(1), no_t).squeeze(1)  # (n, V)
                    nxt = sample_categorical(logp, generator=gen, float64=float64)
                    nxt = torch.where(alive, nxt, torch.full_like(nxt, self.pad_id))
                    tokens = torch.cat([tokens, nxt.unsqueeze(1)], dim=1)
                    alive &= nxt != self.eos_id
                    if not bool(alive.any()):
                        break
                out[start:start + n, :tokens.shape[1]] = tokens
        return out

"""x0 hooks: callables ``(x0_hat, t) -> x0_hat`` the sampler applies at every step.

Gaussian processes pass x0 (B, L, D); absorbing ones pass log-probs (B, L, V). t is (B,) in [0, 1].

Two optional class attributes tell the sampler what a hook allows:

- ``time_invariant = True``: the output does not depend on t, so the sampler may keep it for sequences
  that did not change (``Sampler(reuse_unchanged=True)``);
- ``rowwise = True``: the hook acts on each position's last-dim vector on its own, so it gives the same
  values on rows gathered from the (B, L, V) tensor: ``hook(x0 (n, V), t (n,))`` with t the time of each
  row's sequence. It must also leave a position that holds one certain token (log-prob 0 there, -inf
  elsewhere: a revealed token) certain of that token. The absorbing sampler's reveal-first step
  (``Sampler(reveal_first=True)``) runs x0 hooks only at the positions it needs and needs every hook to
  be row-wise; with any other hook it runs the whole-tensor reference step.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EmbeddingSource = Union[Tensor, nn.Embedding, Callable[[], Tensor]]


def apply_x0_hooks(x0: Tensor, t: Tensor, hooks: Sequence[Callable[[Tensor, Tensor], Tensor]]) -> Tensor:
    """``x0`` after each hook in turn, ``hook(x0, t)``: (B, L, D) / (B, L, V) with t (B,), or gathered rows
    (n, V) with t (n,) for ``rowwise`` hooks. Returns the same shape."""
    for hook in hooks:
        x0 = hook(x0, t)
    return x0


def _weight(source: EmbeddingSource) -> Tensor:
    if isinstance(source, nn.Embedding):
        return source.weight
    if isinstance(source, Tensor):
        return source
    return source()


def _in_window(t: Tensor, t_min: float, t_max: float, like: Tensor) -> Tensor:
    inside = (t >= t_min) & (t <= t_max)
    return inside.view(-1, *([1] * (like.dim() - 1)))


def nearest_rows(x: Tensor, weight: Tensor, metric: str = "l2", chunk: int = 8192) -> Tensor:
    """Index of the nearest row of ``weight`` (V, D) for each vector of ``x`` (..., D). Returns (...,).

    metric "l2": argmin ||x - e||^2 = argmin (||e||^2 - 2 x.e) (Diffusion-LM's ``denoised_fn_round``);
    "dot": argmax x.e (Difformer's clamping through the tied output projection).
    """
    flat = x.reshape(-1, x.shape[-1]).to(weight.dtype)
    sq = (weight**2).sum(-1) if metric == "l2" else None
    out = []
    for part in flat.split(chunk):
        scores = part @ weight.t()  # (n, V)
        out.append((sq - 2 * scores).argmin(-1) if metric == "l2" else scores.argmax(-1))
    return torch.cat(out).view(x.shape[:-1])


class ClampToEmbeddings:
    """The clamping trick (Li et al. 2022 §4.2): replace x0_hat by its nearest embedding row while
    t is in [t_min, t_max].

    Args:
        embedding: the embedding table (V, D), an ``nn.Embedding``, or a zero-argument callable that
            returns the current table (so a training model's latest weights are used).
        metric: "l2" (Diffusion-LM) or "dot" (Difformer's argmax of x0 . E^T).
        scale: multiply the chosen rows (Difformer clamps to sqrt(d) * E[argmax]).
        t_min, t_max: the time window where clamping applies (DiffuSeq's ``clamp_step`` variant).
    """

    def __init__(self, embedding: EmbeddingSource, metric: str = "l2", scale: float = 1.0,
                 t_min: float = 0.0, t_max: float = 1.0) -> None:
        if metric not in ("l2", "dot"):
            raise ValueError(f"metric must be 'l2' or 'dot', got {metric!r}")
        self.embedding, self.metric, self.scale = embedding, metric, float(scale)
        self.t_min, self.t_max = float(t_min), float(t_max)

    def __call__(self, x0: Tensor, t: Tensor) -> Tensor:
        weight = _weight(self.embedding)
        snapped = self.scale * F.embedding(nearest_rows(x0, weight, self.metric), weight).to(x0.dtype)
        return torch.where(_in_window(t, self.t_min, self.t_max, x0), snapped, x0)


class L2Renormalize:
    """Rescale every position's vector to L2 norm ``norm`` (default sqrt(D)), as LD4LG does for its
    L2-normalised latents in seq2seq sampling. Applies while t is in [t_min, t_max]."""

    def __init__(self, norm: Optional[float] = None, t_min: float = 0.0, t_max: float = 1.0) -> None:
        self.norm, self.t_min, self.t_max = norm, float(t_min), float(t_max)

    def __call__(self, x0: Tensor, t: Tensor) -> Tensor:
        target = self.norm if self.norm is not None else math.sqrt(x0.shape[-1])
        renorm = F.normalize(x0, dim=-1) * target
        return torch.where(_in_window(t, self.t_min, self.t_max, x0), renorm, x0)


class LogitFilter:
    """Temperature, top-k, top-p and banned tokens on log-probs (..., V); renormalised.

    As an x0 hook it acts on p(x0 | x_t) (B, L, V); positions that already hold one certain token
    (revealed tokens) are unchanged by construction. As an absorbing sampler's ``posterior_filter`` it
    acts on the joint reverse posterior (n, V) instead (DiffusionBERT's official semantics).
    """

    time_invariant = True  # ignores t: the sampler may reuse its output for unchanged sequences
    rowwise = True  # each position's (V,) vector on its own: the sampler may run it on gathered (n, V) rows

    def __init__(self, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 temperature: float = 1.0, banned_ids: Sequence[int] = ()) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k, self.top_p, self.temperature = top_k, top_p, float(temperature)
        self.banned_ids = list(banned_ids)

    @property
    def bans_only(self) -> bool:
        """True when the filter only bans ids (temperature 1, no top-k/top-p): on log-probs it is then
        log_softmax with the banned ids at -inf."""
        return self.temperature == 1.0 and self.top_k is None and self.top_p in (None, 1.0)

    @property
    def is_identity(self) -> bool:
        """True when the filter changes nothing (temperature 1, no top-k/top-p, nothing banned)."""
        return (self.temperature == 1.0 and self.top_k is None and self.top_p in (None, 1.0)
                and not self.banned_ids)

    def __call__(self, logp: Tensor, t: Tensor) -> Tensor:
        x = logp / self.temperature if self.temperature != 1.0 else logp
        if self.banned_ids:
            x = x.index_fill(-1, torch.tensor(self.banned_ids, device=x.device), float("-inf"))
        if self.top_k is not None and self.top_k < x.shape[-1]:
            kth = x.topk(self.top_k, dim=-1).values[..., -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1:
            sorted_x, idx = x.sort(-1, descending=True)
            cum = sorted_x.softmax(-1).cumsum(-1)
            drop_sorted = (cum - sorted_x.softmax(-1)) >= self.top_p  # keep the smallest set reaching top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
            x = x.masked_fill(drop, float("-inf"))
        if self.banned_ids:  # a position whose only token is banned (e.g. a revealed BOS) keeps it
            emptied = torch.isneginf(x).all(-1)
            if emptied.any():
                x[emptied] = logp[emptied]
        return F.log_softmax(x, dim=-1)

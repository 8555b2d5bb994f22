"""Analyses of a learned embedding space for embedding diffusion (Difformer, Gao et al. 2022,
arXiv 2212.09412, §3 and its Fig. 1): anisotropy, embedding norm against word frequency, how often a
noised latent is still nearest to its own token, and how large the noise is against the gaps
between embeddings.

Reference: the paper motivates its anchor loss, embedding LayerNorm and noise factor F with these
properties (§3.1-§3.3). The numbering used below (eq. 5, Fig. 1a/1b/1c) follows issue 3; the
paper's full text was not readable offline, so each quantity is defined in full in its docstring
rather than by reference.

Notation: E (V, d) is the embedding table; a latent table is the set of diffused vectors z0 of every
token (Difformer: z0 = sqrt(d) E[w], ``DifformerNet.embed``). A Gaussian process gives
(a_t, sigma_t) = (sqrt(abar_t), F sqrt(1 - abar_t)) through ``coefs(t)``; t in [0, 1] (t = i / T on a
discrete chain). All functions are pure torch (no scipy) and run under ``torch.no_grad``.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor

METRICS = ("dot", "l2")


def _kept_ids(num: int, exclude: Iterable[int], device: torch.device) -> Tensor:
    """Ids 0..num-1 not in ``exclude``: (V',) long."""
    keep = torch.ones(num, dtype=torch.bool, device=device)
    bad = [int(i) for i in exclude if i is not None]
    if any(not 0 <= i < num for i in bad):
        raise ValueError(f"exclude ids {bad} out of range for a table of {num} rows")
    if bad:
        keep[torch.tensor(bad, dtype=torch.long, device=device)] = False
    return keep.nonzero().squeeze(-1)


def _with_noise_factor(process: Any, noise_factor: Optional[float]) -> Any:
    """``process`` itself, or a shallow copy whose ``coefs`` use F = ``noise_factor`` (the schedule
    and the variance-preserving setting are shared, as ``GaussianProcess.for_sampling`` does)."""
    if not hasattr(process, "coefs") or not hasattr(process, "noise_factor"):
        raise TypeError(f"a Gaussian process with coefs(t) and noise_factor is needed, got {type(process).__name__}")
    if noise_factor is None:
        return process
    if not noise_factor > 0:
        raise ValueError(f"noise_factor must be > 0, got {noise_factor}")
    twin = copy.copy(process)
    twin.noise_factor = float(noise_factor)
    return twin


def anisotropy(weight: Tensor, exclude: Sequence[int] = ()) -> float:
    """Mean cosine similarity between the embedding vectors of distinct tokens (the paper's eq. 5
    anisotropy measure, §3.1: a collapsing embedding space drives it towards 1).

    A = 1 / (V (V - 1)) sum_{i != j} cos(w_i, w_j), computed exactly over all ordered pairs without a
    V x V matrix: with u_i = w_i / |w_i|, sum_{i != j} u_i . u_j = |sum_i u_i|^2 - V, so
    A = (|sum_i u_i|^2 - V) / (V (V - 1)). Ranges over [-1 / (V - 1), 1].

    Args:
        weight: (V, d) embedding table (rows are tokens).
        exclude: token ids left out (special tokens such as PAD, BOS, EOS, UNK). Rows of norm 0
            (cosine undefined) are left out too.

    Returns:
        A as a Python float (computed in float64).
    """
    w = weight.detach().to(torch.float64)
    if w.dim() != 2:
        raise ValueError(f"weight must be (V, d), got shape {tuple(w.shape)}")
    w = w[_kept_ids(w.shape[0], exclude, w.device)]
    norms = w.norm(dim=-1)
    w, norms = w[norms > 0], norms[norms > 0]
    V = w.shape[0]
    if V < 2:
        raise ValueError(f"anisotropy needs at least 2 non-zero rows, got {V}")
    s = (w / norms.unsqueeze(-1)).sum(0)
    return float((s @ s - V) / (V * (V - 1)))


def rankdata(x: Tensor) -> Tensor:
    """1-based ranks of ``x`` (N,), ties given their average rank (scipy's ``rankdata`` "average").
    Returns (N,) float64."""
    x = x.detach().flatten().to(torch.float64)
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)  # the last rank of each group of equal values
    return (ends - (counts.to(torch.float64) - 1) / 2)[inverse]


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of ``x`` and ``y`` (N,): the Pearson correlation of their average
    ranks. NaN when either is constant."""
    if x.numel() != y.numel() or x.numel() < 2:
        raise ValueError(f"spearman needs two vectors of one length >= 2, got {x.numel()} and {y.numel()}")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = (rx.pow(2).sum() * ry.pow(2).sum()).sqrt()
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def norm_by_frequency(weight: Tensor, counts: Tensor, exclude: Sequence[int] = (),
                      num_bins: int = 10) -> dict[str, Any]:
    """Embedding norm against word frequency (Fig. 1a; §3.2: frequent words get larger norms, so one
    noise scale corrupts rare words more).

    Per kept token w: norm |weight[w]| and log-frequency log(1 + count[w]) (tokens never seen in
    training get 0 and are kept). Spearman's rho between norm and count (average ranks for ties; it
    is the same for count and log-frequency). Frequency bins: the kept tokens sorted by count (ties by
    id) and cut into ``num_bins`` groups of equal size (deciles for 10), rarest first.

    Args:
        weight: (V, d) table whose row norms are measured (E, or the latent table sqrt(d) E).
        counts: (V,) token counts in the training split (``textdiff.data.word_freq.token_counts``).
        exclude: token ids left out (special tokens).
        num_bins: number of frequency bins.

    Returns:
        {"ids": (V',) long, "norms": (V',) float, "log_freq": (V',) float, "counts": (V',) long,
        "spearman": float, "mean_norm": float, "num_tokens": V', "num_unseen": tokens with count 0,
        "bins": [{"bin", "num_tokens", "count_min", "count_max", "mean_log_freq", "mean_norm"}, ...]}.
    """
    if weight.dim() != 2 or counts.shape != (weight.shape[0],):
        raise ValueError(f"weight must be (V, d) and counts (V,), got {tuple(weight.shape)} and {tuple(counts.shape)}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    ids = _kept_ids(weight.shape[0], exclude, torch.device("cpu"))
    if len(ids) == 0:
        raise ValueError("norm_by_frequency: every token is excluded")
    norms = weight.detach().to(torch.float64).cpu()[ids].norm(dim=-1)
    c = counts.detach().cpu().long()[ids]
    log_freq = torch.log1p(c.to(torch.float64))
    order = torch.sort(c, stable=True).indices  # rarest first; ids ascending within equal counts
    bins = []
    for k, part in enumerate(torch.tensor_split(order, min(num_bins, len(order)))):
        bins.append({"bin": k, "num_tokens": int(part.numel()), "count_min": int(c[part].min()),
                     "count_max": int(c[part].max()), "mean_log_freq": float(log_freq[part].mean()),
                     "mean_norm": float(norms[part].mean())})
    return {"ids": ids, "norms": norms.float(), "log_freq": log_freq.float(), "counts": c,
            "spearman": spearman(norms, c.to(torch.float64)) if len(ids) >= 2 else float("nan"),
            "mean_norm": float(norms.mean()), "num_tokens": int(len(ids)), "num_unseen": int((c == 0).sum()),
            "bins": bins}


@torch.no_grad()
def noisy_nearest_accuracy(process: Any, embed: Callable[[Tensor], Tensor], weight: Tensor, ids: Tensor,
                           mask: Tensor, times: Sequence[float], noise_factor: Optional[float] = None,
                           metric: str = "dot", generator: Optional[torch.Generator] = None,
                           chunk_size: int = 4096) -> list[float]:
    """Share of noised latents whose nearest embedding is still their own token (Fig. 1b; §3.3: with
    F = 1 most of the chain is trivially denoisable by rounding, which the noise factor prevents).

    For every real position (``mask``) of ``ids`` with latent z0 = embed(ids) and one noise draw eps
    (shared by all t, so the curve is not jagged by fresh noise), z_t = a_t z0 + sigma_t eps with
    (a_t, sigma_t) = ``process.coefs(t)`` at F = ``noise_factor`` (default: the process's own F, the
    training one for Difformer). The prediction is argmax_w z_t . E[w] for ``metric="dot"`` (the
    model's tied logits, ``DifformerNet.logits``) or argmin_w |z_t - z0(w)| for ``"l2"`` (nearest row of
    the latent table embed(0..V-1), = sqrt(d) E by default). Chance level is about 1 / V.

    Args:
        process: a ``GaussianProcess`` (anything with ``coefs(t) -> (a, sigma)`` and ``noise_factor``).
        embed: ids (B, L) -> latents (B, L, d), e.g. ``model.network.embed``.
        weight: (V, d) embedding table E of the logits.
        ids: (B, L) long token ids; mask: (B, L) True on the positions scored.
        times: the t in [0, 1] to evaluate.
        noise_factor: overrides F (compare F = 1 with the training F on one model).
        metric: "dot" or "l2".
        generator: for the noise draw (on the device of ``ids``).
        chunk_size: positions scored at once (bounds the (chunk, V) score matrix).

    Returns:
        One accuracy in [0, 1] per entry of ``times``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    proc = _with_noise_factor(process, noise_factor)
    m = mask.bool()
    target = ids[m]
    n = target.numel()
    if n == 0:
        raise ValueError("mask selects no position")
    x0 = embed(ids)[m].float()  # (N, d)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    w = weight.detach().float()
    if metric == "l2":
        table = embed(torch.arange(w.shape[0], device=ids.device).unsqueeze(0))[0].float()  # (V, d)
        sq = table.pow(2).sum(-1)
    out = []
    for t in times:
        a, sigma = proc.coefs(torch.full((1,), float(t), device=x0.device))
        zt = a.float() * x0 + sigma.float() * eps
        hits = 0
        for start in range(0, n, chunk_size):
            z = zt[start:start + chunk_size]
            if metric == "dot":
                pred = (z @ w.t()).argmax(-1)
            else:  # |z - e|^2 = |z|^2 - 2 z.e + |e|^2: the |z|^2 term does not change the argmin
                pred = (2 * z @ table.t() - sq).argmax(-1)
            hits += int((pred == target[start:start + chunk_size]).sum())
        out.append(hits / n)
    return out


@torch.no_grad()
def nearest_neighbor_distances(points: Tensor, chunk_size: int = 1024) -> Tensor:
    """Euclidean distance from each row of ``points`` (V, d) to its nearest other row, in float64,
    ``chunk_size`` rows against all V at a time (never a V x V matrix). Returns (V,)."""
    x = points.detach().to(torch.float64)
    V = x.shape[0]
    if x.dim() != 2 or V < 2:
        raise ValueError(f"points must be (V, d) with V >= 2, got shape {tuple(x.shape)}")
    sq = x.pow(2).sum(-1)
    out = torch.empty(V, dtype=torch.float64, device=x.device)
    for start in range(0, V, chunk_size):
        stop = min(start + chunk_size, V)
        d2 = sq[start:stop, None] - 2 * x[start:stop] @ x.t() + sq[None, :]  # (chunk, V)
        rows = torch.arange(stop - start, device=x.device)
        d2[rows, rows + start] = math.inf  # not itself
        out[start:stop] = d2.min(-1).values.clamp_min(0).sqrt()
    return out


@torch.no_grad()
def noise_to_distance_ratio(process: Any, weight: Tensor, embed_scale: float, times: Sequence[float],
                            noise_factors: Sequence[float], exclude: Sequence[int] = (),
                            chunk_size: int = 1024) -> dict[float, list[float]]:
    """Noise scale against the spacing of the embeddings (Fig. 1c; §3.3).

    With latents x_w = embed_scale * weight[w] (d dims) and D = mean over kept tokens of the distance
    from x_w to its nearest other latent (``nearest_neighbor_distances``), the ratio at t is

        r(t, F) = sigma_t(F) sqrt(d) / (a_t D)

    i.e. the typical norm of the noise, sigma sqrt(d) (E|eps| ~ sqrt(d) for eps ~ N(0, I_d)), measured
    in the units of the signal a_t x (dividing z_t by a_t). r < 1/2: the noise rarely carries a latent
    past the midpoint to its neighbour; r >> 1: the token is lost. For a non-variance-preserving process
    r is linear in F; a_t = 0 gives inf.

    Args:
        process: a ``GaussianProcess`` (``coefs`` and ``noise_factor``).
        weight: (V, d) table; embed_scale: its scale to latents (sqrt(d) for Difformer's E; 1 for a
            latent table).
        times: the t in [0, 1]; noise_factors: the F to evaluate.
        exclude: token ids left out (special tokens).
        chunk_size: rows per block of the nearest-neighbour search.

    Returns:
        {F: [r(t, F) for t in times]} with float keys.
    """
    ids = _kept_ids(weight.shape[0], exclude, weight.device)
    x = float(embed_scale) * weight.detach().to(torch.float64)[ids]
    d = x.shape[1]
    mean_nn = float(nearest_neighbor_distances(x, chunk_size).mean())
    t = torch.tensor([float(v) for v in times], dtype=torch.float32, device=weight.device)
    out: dict[float, list[float]] = {}
    for f in noise_factors:
        a, sigma = _with_noise_factor(process, float(f)).coefs(t)
        a, sigma = a.double().cpu(), sigma.double().cpu()
        num = sigma * math.sqrt(d)
        den = a * mean_nn
        r = torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, math.inf))
        out[float(f)] = [float(v) for v in r]
    return out

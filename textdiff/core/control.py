"""Controllable generation as sampler step hooks (``Sampler.sample(step_hooks=[...])``): Diffusion-LM's
plug-and-play classifier guidance and infilling. Both work with any family that samples through the
core ``Sampler`` (classifier guidance: Gaussian processes; infilling: Gaussian and absorbing).
Classifier-free guidance, which changes the denoiser's output rather than the state, is a denoise
wrapper: ``textdiff.core.guidance.ClassifierFreeGuidance``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from textdiff.core.gaussian import GaussianProcess

#: ``(x (B, L, D), t (B,)) -> (B,)``: the negative log-likelihood of the wanted attribute for each
#: noisy state, from a classifier that reads x_t and t (e.g. ``class_nll(classifier, labels)``).
NllFn = Callable[[Tensor, Tensor], Tensor]


def class_nll(classifier: Callable[[Tensor, Tensor], Tensor], labels: Tensor) -> NllFn:
    """An ``NllFn`` from a classifier ``(x_t (B, L, D), t (B,)) -> logits (B, C)`` and the wanted class ids
    ``labels`` (B,) long: cross-entropy of ``labels`` under the logits, per sequence (B,)."""

    def nll(x: Tensor, t: Tensor) -> Tensor:
        return F.cross_entropy(classifier(x, t), labels.to(x.device), reduction="none")

    return nll


class ClassifierGuidance:
    """Plug-and-play control (Li et al. 2022, Diffusion-LM §5.2 and eq. 4): after each reverse step
    x_t -> x_s, ``steps`` gradient steps on x_s that minimise

        mean_b nll(x_s, s)_b  +  fluency * sum_{l,d} mean_b (mu - x_s)^2 / std

    where N(mu, std^2) is the step's Gaussian p(x_s | x_t) (``GaussianProcess.reverse_mean_std``): the
    attribute term pulls x_s towards the wanted class, the fluency term keeps it likely under the
    diffusion model. As the official ``langevin_fn3``: Adagrad with a fresh optimizer for every
    gradient step (so each step moves every coordinate by about ``lr``), no steps while t < ``t_min``
    (their K = 0 for t < 10 of 200), std replaced by 1 when the step is deterministic (eta = 0).

    Args:
        process: the sampler's (sampling view of the) Gaussian process.
        nll: the attribute's ``NllFn``, evaluated at the new time s.
        eta, variance: the sampler's, to rebuild the step's mean and std.
        steps: gradient steps per reverse step (official 3). lr: Adagrad learning rate (0.05-0.2).
        fluency: lambda, the weight of the fluency term (official 0.0005-0.1 by task; 0.01 default).
        t_min: no guidance when the step starts below this time.

    ``grad_steps`` counts the gradient steps taken (for reports).
    """

    def __init__(self, process: GaussianProcess, nll: NllFn, *, eta: float = 1.0, variance: str = "small",
                 steps: int = 3, lr: float = 0.05, fluency: float = 0.01, t_min: float = 0.05) -> None:
        if not isinstance(process, GaussianProcess):
            raise TypeError(f"classifier guidance needs a Gaussian process, got {type(process).__name__}")
        if steps < 0 or lr <= 0 or fluency < 0:
            raise ValueError(f"need steps >= 0, lr > 0, fluency >= 0; got {steps}, {lr}, {fluency}")
        self.process, self.nll, self.eta, self.variance = process, nll, float(eta), variance
        self.steps, self.lr, self.fluency, self.t_min = int(steps), float(lr), float(fluency), float(t_min)
        self.grad_steps = 0

    @classmethod
    def for_sampler(cls, sampler: object, nll: NllFn, **kwargs: float) -> "ClassifierGuidance":
        """Guidance that matches ``sampler`` (a ``textdiff.core.Sampler``): its process, eta and variance."""
        variance = getattr(sampler, "variance", None) or "small"
        return cls(sampler.process, nll, eta=sampler.eta, variance=variance, **kwargs)

    def __call__(self, x_s: Tensor, s: Tensor, t: Tensor, x0_hat: Tensor, x_t: Tensor) -> Tensor:
        if self.steps == 0 or bool((t < self.t_min).all()):
            return x_s
        mean, std = self.process.reverse_mean_std(x_t, x0_hat, t, s, eta=self.eta, variance=self.variance)
        scale = torch.ones_like(std) if float(std.mean()) == 0.0 else std
        active = (t >= self.t_min).view(-1, *([1] * (x_s.dim() - 1)))
        x = x_s.detach().clone()
        with torch.enable_grad():
            for _ in range(self.steps):
                x.requires_grad_(True)
                attribute = self.nll(x, s).mean()
                fluency = ((mean - x) ** 2 / scale).mean(0).sum()  # lambda * sum (mu - x)^2 / sigma, batch mean
                loss = attribute + self.fluency * fluency
                opt = torch.optim.Adagrad([x], lr=self.lr)  # fresh each step, as the official code
                opt.zero_grad()
                loss.backward()
                opt.step()
                x = x.detach()
                self.grad_steps += 1
        return torch.where(active, x, x_s)


class Infill:
    """Infilling: fixed context re-imposed after every reverse step, so only the other positions are
    generated (Diffusion-LM's infilling task; DiffuSeq keeps its source part the same way).

    Args:
        context: what the kept positions hold: for a Gaussian process the clean latents (B, L, D) (e.g.
            the model's embeddings of the context tokens); for an absorbing process the token ids (B, L).
        keep: (B, L) bool, True at the context positions (the rest is generated).
        process: a Gaussian process to noise the context to the step's level s (``q_sample``) instead of
            imposing it clean (``noise_context=True``; RePaint-style). Ignored for ids.
        generator: RNG of that noise.
    """

    reads_x0 = False  # ignores x0_hat: a sampler need not build it for this hook (core/reveal_first.py)

    def __init__(self, context: Tensor, keep: Tensor, process: Optional[GaussianProcess] = None,
                 noise_context: bool = False, generator: Optional[torch.Generator] = None) -> None:
        if keep.dtype != torch.bool or keep.shape != context.shape[:2]:
            raise ValueError(f"keep must be a (B, L) bool tensor matching the context {tuple(context.shape)}, "
                             f"got {keep.dtype} {tuple(keep.shape)}")
        if noise_context and process is None:
            raise ValueError("noise_context=True needs the process that noises the context")
        self.context, self.keep, self.process = context, keep, process
        self.noise_context, self.generator = bool(noise_context), generator

    def impose(self, x: Tensor, s: Optional[Tensor] = None) -> Tensor:
        """``x`` (B, L, D) or (B, L) with the context at the kept positions (noised to ``s`` (B,) when
        ``noise_context``; clean at s = 0). Use it on the prior draw too (``x_init``), so that the first
        step sees the context."""
        context = self.context.to(x.device)
        if self.noise_context and x.is_floating_point() and s is not None and bool((s > 0).any()):
            noise = torch.randn(context.shape, generator=self.generator, device=context.device, dtype=context.dtype)
            context = self.process.q_sample(context, s, noise=noise)
        keep = self.keep.to(x.device)
        keep = keep.unsqueeze(-1) if x.dim() == 3 else keep
        return torch.where(keep, context.to(x.dtype), x)

    def __call__(self, x_s: Tensor, s: Tensor, t: Tensor, x0_hat: Tensor, x_t: Tensor) -> Tensor:
        return self.impose(x_s, s)

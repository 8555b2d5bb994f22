"""Is the closed-form filtered posterior (``sampler.closed_form_posterior=true``) the official one, on a trained model?

For test sentences noised at t in {0.1, ..., 0.99}, the trained network's x0 log-probs at every [MASK] position
(frame tokens banned, as ``DiffusionBERT.generate_run``) and a grid of unmasking probabilities u, it compares, as
probabilities (no sampling noise):

- the reference step: the joint posterior (log(u p_v) per token, log(1 - u) for [MASK]) through the preset's
  ``LogitFilter`` (temperature, top-k), as ``AbsorbingProcess.reverse_step(posterior_filter=...)``;
- the closed form: ``filtered_reveal_prob`` from the k largest log-probs, and the token distribution that
  ``filtered_token_draw`` samples from (the k largest, or the k - 1 largest while [MASK] is among the k largest).

It prints the largest total-variation distance between the two distributions of one step over V + 1 outcomes
(stay [MASK] or each token). Usage::

    python experiments/sampling/closed_form_check.py <DiffusionBERT run dir> [ckpt]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from textdiff.cli.runs import load_run
from textdiff.core.hooks import LogitFilter


def main(run_dir: str, ckpt: str = "last") -> None:
    model, dm, _, _ = load_run(Path(run_dir), ckpt, "cpu")
    model.eval()
    proc, k, T = model.process, model.top_k, model.temperature
    if k is None or model.filter_on != "posterior":
        raise SystemExit(f"{run_dir}: no top-k filter on the posterior (top_k={k}, filter_on={model.filter_on})")
    dm.setup("test")
    x0 = next(iter(dm.test_dataloader()))["ids"]
    frame, filt = LogitFilter(banned_ids=model.frame_ids()), LogitFilter(top_k=k, temperature=T)
    us = torch.cat([torch.logspace(-6, 0, 60), torch.tensor([0.5, 0.9, 0.99, 0.999999])])
    gen = torch.Generator().manual_seed(0)
    worst, positions = 0.0, 0
    with torch.no_grad():
        for tf in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
            t = proc.schedule.training_times(torch.full((x0.shape[0],), tf))
            xt = proc.q_sample(x0, t, generator=gen)
            masked = xt == proc.mask_id
            rows_t = t[masked.nonzero()[:, 0]]
            lp = frame(proc.masked_x0(model.denoise(xt, t)[masked]), rows_t)  # (n, V)
            top, ids = lp.topk(k, -1)
            positions += lp.shape[0]
            for u in us:
                uu = torch.full((lp.shape[0],), float(u))
                ref = filt(proc.posterior_joint(lp.clone(), uu), rows_t).double().exp()  # (n, V): [MASK] slot
                cf_reveal = proc.filtered_reveal_prob(top, None, uu.unsqueeze(1), T, k).squeeze(1).double()
                kept = torch.logit(uu) <= -top[:, k - 1]  # [MASK] among the k largest: the k - 1 largest tokens
                w = torch.softmax(top.double() / T, -1)
                w_rest = torch.cat([torch.softmax(top[:, :k - 1].double() / T, -1), torch.zeros_like(w[:, :1])], 1)
                w = torch.where(kept.unsqueeze(1), w_rest, w)
                cf = torch.zeros_like(ref).scatter_(1, ids, w * cf_reveal.unsqueeze(1))
                cf[:, proc.mask_id] = 1 - cf_reveal
                worst = max(worst, float(0.5 * (ref - cf).abs().sum(-1).max()))
    print(f"{positions} masked positions x {len(us)} values of u: largest total-variation distance between the "
          f"official filtered posterior and the closed form: {worst:.3g}")


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Diffusion-LM against its official code (XiangLi1999/Diffusion-LM, ``improved_diffusion/gaussian_diffusion.py``,
``training_losses_e2e``), written out here independently: the x0 draw q(x0 | w), the MSE term with its first-step
replacement (x0 and eps parameterisations), L_T (``tT_loss``) and the rounding term; and the likelihood bound for
an eps-predicting model."""
from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from textdiff.core import DiscreteSchedule, GaussianProcess, Sampler, SqrtSchedule
from textdiff.families import DiffusionLM
from textdiff.nn import TransformerDenoiser
from tests.parity.test_core import betas_for_alpha_bar, cumprod, official_curve

T, V, D, L = 100, 30, 8, 10


def _model(prediction):
    torch.manual_seed(0)
    return DiffusionLM(TransformerDenoiser(D, dim=32, depth=1, heads=2, max_len=L, dropout=0.0),
                       GaussianProcess(DiscreteSchedule(SqrtSchedule(), T), prediction=prediction),
                       vocab_size=V, embed_dim=D, sampler=partial(Sampler, num_steps=10, eta=1.0))


@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_training_loss_terms_are_training_losses_e2e(prediction):
    """Per sequence: mse = mean((target - out)^2) with target x_start (START_X) or the noise (EPSILON), replaced
    at t = 0 by mean((EMB(w) - pred_xstart)^2) whatever the parameterisation; tT_loss = mean((sqrt(abar_{T-1})
    x_start)^2); decoder_nll = mean over positions of CE(logits(x_start), w); loss = mse + decoder_nll + tT_loss,
    where x_start = EMB(w) + sqrt(1 - abar_0) noise0 (``get_x_start``)."""
    m = _model(prediction).train()
    ids = torch.randint(0, V, (4, L), generator=torch.Generator().manual_seed(1))
    idx = torch.tensor([0, 4, 49, 99])  # the official chain index; ours t = (idx + 1) / T
    m.sample_t = lambda n: (idx + 1).float() / T  # type: ignore[method-assign]
    torch.manual_seed(7)
    ours = m.compute_loss({"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool)})

    abar = torch.tensor(cumprod(betas_for_alpha_bar(T, official_curve("sqrt"))), dtype=torch.float32)
    torch.manual_seed(7)  # the same draws in the same order: noise0 for x_start, then the q_sample noise
    emb = m.embedding(ids)
    x_start = emb + (1 - abar[0]).sqrt() * torch.randn_like(emb)
    noise = torch.randn_like(x_start)
    a, s = abar[idx].sqrt().view(-1, 1, 1), (1 - abar[idx]).sqrt().view(-1, 1, 1)
    x_t = a * x_start + s * noise
    out = m.network(x_t, idx.float() * 1000 / T)  # --rescale_timesteps: t * 1000 / T
    target = x_start if prediction == "x0" else noise
    mse = ((target - out) ** 2).mean((1, 2))
    pred_xstart = out if prediction == "x0" else (x_t - s * out) / a
    mse = torch.where(idx == 0, ((emb - pred_xstart) ** 2).mean((1, 2)), mse)
    tT = ((abar[-1].sqrt() * x_start) ** 2).mean((1, 2))
    decoder_nll = F.cross_entropy(m.lm_head(x_start).transpose(1, 2), ids, reduction="none").mean(-1)
    assert torch.allclose(ours["mse"], mse.mean(), atol=1e-5)
    assert torch.allclose(ours["prior"], tT.mean(), atol=1e-6)
    assert torch.allclose(ours["rounding"], decoder_nll.mean(), atol=1e-5)
    assert torch.allclose(ours["loss"], (mse + tT + decoder_nll).mean(), atol=1e-5)


def test_the_bound_of_an_eps_model_uses_its_x0_estimate():
    """An eps-predicting network and the x0-predicting network it is equivalent to (eps = (x_t - a x0) / sigma)
    have the same bound: the bound reads the process's x0 estimate, not the raw output."""
    x0_model, eps_model = _model("x0").eval(), _model("eps").eval()
    w = torch.randn(D, D, generator=torch.Generator().manual_seed(2)) / 3

    def f_x0(xt, t, mask=None):
        return torch.tanh(xt @ w)

    def f_eps(xt, t, mask=None):
        a, sigma = eps_model.process.coefs(t)
        return (xt - a.view(-1, 1, 1) * f_x0(xt, t)) / sigma.view(-1, 1, 1)

    x0_model.denoise, eps_model.denoise = f_x0, f_eps  # type: ignore[method-assign]
    eps_model.load_state_dict(x0_model.state_dict())
    ids = torch.randint(0, V, (3, L), generator=torch.Generator().manual_seed(3))
    batch = {"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool)}
    torch.manual_seed(5)
    want = x0_model.nll_bound(batch, num_t=2, exact_steps=5)
    torch.manual_seed(5)
    got = eps_model.nll_bound(batch, num_t=2, exact_steps=5)
    for key in ("nll", "diffusion", "decoder"):
        assert torch.allclose(got[key], want[key], rtol=1e-3, atol=1e-3), key

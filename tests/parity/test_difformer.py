"""Difformer against its official code (zhjgao/difformer), each formula written out here independently: q_sample
with the noise factor F, the decoding loop with F = 1 and early stopping on a 20-step respacing, and the network's
regularisation and initialisation as the shipped config builds it."""
from __future__ import annotations

import math

import pytest
import torch

from textdiff.cli.common import build
from textdiff.core import DiscreteSchedule, GaussianProcess, Sampler, SqrtSchedule
from tests.parity.test_core import betas_for_alpha_bar, cumprod, official_curve

T, K, EARLY = 2000, 20, 5


def _official_chain():
    abar = cumprod(betas_for_alpha_bar(T, official_curve("sqrt")))
    return torch.tensor(abar, dtype=torch.float64)


def test_q_sample_scales_the_noise_by_f():
    """``forward``: noise = randn * rescaling_factor; z_t = q_sample(z0, t, noise) = sqrt(abar_t) z0 + sqrt(1 - abar_t)
    noise, for the chain index t ~ U{0..T-1} (our time (t + 1) / T)."""
    g = torch.Generator().manual_seed(0)
    proc = GaussianProcess(DiscreteSchedule(SqrtSchedule(), T), noise_factor=4.0, sample_noise_factor=1.0)
    abar = _official_chain()
    idx = torch.tensor([0, 17, 999, 1999])
    z0, eps = torch.randn(4, 5, 8, generator=g), torch.randn(4, 5, 8, generator=g)
    want = abar[idx].sqrt().view(-1, 1, 1) * z0 + (1 - abar[idx]).sqrt().view(-1, 1, 1) * (4.0 * eps)
    assert torch.allclose(proc.q_sample(z0, (idx + 1) / T, eps), want.float(), atol=1e-5)


def _respaced():
    """``space_timesteps(2000, "20")`` and the respaced chain (``SpacedDiffusion``): kept indices
    round(k (T - 1) / (K - 1)), new betas 1 - abar_k / abar_prev, posterior coefficients and the clipped log
    variance of improved-diffusion's ``GaussianDiffusion``."""
    stride = (T - 1) / (K - 1)
    keep, cur = [], 0.0
    for _ in range(K):
        keep.append(round(cur))
        cur += stride
    abar_full = _official_chain()
    abar = abar_full[keep]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    betas = 1 - abar / prev
    var = betas * (1 - prev) / (1 - abar)
    log_var = torch.log(torch.cat([var[1:2], var[1:]]))
    coef1 = betas * prev.sqrt() / (1 - abar)
    coef2 = (1 - prev) * (1 - betas).sqrt() / (1 - abar)
    return keep, coef1, coef2, log_var


def test_decoding_loop_is_the_official_one_with_decoding_f_1():
    """``generator.generate`` + ``forward_decoder``: z_K ~ N(0, F_dec^2) with F_dec = 1 (the evaluate scripts do not
    set ``--decoding-rescaling-factor``), for step in 19..5: z0_hat = model(z, timestep_map[step]),
    z = coef1 z0_hat + coef2 z + exp(log_var / 2) F_dec noise; the output is the last z0_hat. The model is trained
    with F = 4; our process carries both factors."""
    keep, coef1, coef2, log_var = _respaced()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 8, generator=g) / 3

    def model(z, chain_index):  # any deterministic denoiser of (z, t)
        return torch.tanh(z.float() @ w) * (1 + chain_index.float().view(-1, 1, 1) / T)

    proc = GaussianProcess(DiscreteSchedule(SqrtSchedule(), T), noise_factor=4.0, sample_noise_factor=1.0)
    sampler = Sampler(proc, num_steps=K, spacing="uniform", eta=1.0, variance="small", early_stop=EARLY)
    shape = (3, 6, 8)
    ours = sampler.sample(lambda z, t, sc: model(z, torch.round(t.double() * T) - 1), shape,
                          generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(shape, generator=gen) * 1.0
    z0_hat = None
    for step in range(EARLY, K)[::-1]:
        z0_hat = model(z, torch.full((3,), float(keep[step])))
        noise = torch.randn(shape, generator=gen) * 1.0
        z = (coef1[step] * z0_hat + coef2[step] * z + (0.5 * log_var[step]).exp() * noise).float()
    assert ours.nfe == K - EARLY == 15
    assert torch.allclose(ours.x0, z0_hat, atol=1e-5)
    assert torch.allclose(ours.x, z, atol=1e-4)


def test_shipped_network_regularisation_and_initialisation(preset, tmp_path):
    """``model=difformer`` as shipped: dropout 0.3 on the residual branches only (fairseq ``attention_dropout``
    and ``activation_dropout`` default to 0 and the scripts do not set them); encoder positions from
    N(0, dim^-1/2) (fairseq ``LearnedPositionalEmbedding``); the decoder side from N(0, 0.02)
    (``--apply-bert-init``); the official 20-step decoding with early stopping at 5."""
    cfg = preset(["model=difformer", "schedule=sqrt", "data=multi30k", "data.vocab_size=3000", "data.max_len=64",
                  "data.max_src_len=64", "tokens.pad_id=0", "tokens.bos_id=1", "tokens.eos_id=2"], tmp_path)
    assert cfg.sampler.num_steps == K and cfg.sampler.early_stop == EARLY  # conf/decoding/difformer.yaml
    assert cfg.model.network.attention_dropout == 0.0 and cfg.model.network.activation_dropout == 0.0
    torch.manual_seed(0)
    net = build(cfg, "model").network
    for layer in [*net.encoder, *net.decoder]:
        assert layer.dropout1.p == 0.3 and layer.dropout.p == 0.0 and layer.self_attn.dropout == 0.0
    assert all(layer.multihead_attn.dropout == 0.0 for layer in net.decoder)
    dim = cfg.model.network.dim
    assert net.enc_pos.weight.std().item() == pytest.approx(dim ** -0.5, rel=0.05)
    assert net.dec_pos.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for lin in (net.dec_in, net.dec_out, net.time[0], net.decoder[0].linear1, net.decoder[0].self_attn.out_proj):
        assert lin.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert net.decoder[0].self_attn.in_proj_weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert net.embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert abs(net.enc_in.weight.std().item() - 0.02) > 0.005  # the encoder keeps torch's initialisation
    with pytest.raises(ValueError, match="init"):
        type(net)(10, init="bert")
    assert math.isclose(cfg.model.process.noise_factor, 4.0) and cfg.model.process.sample_noise_factor == 1.0

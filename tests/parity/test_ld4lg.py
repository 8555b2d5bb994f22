"""LD4LG against its official code (justinlovelace/latent-diffusion-for-language,
``diffusion/text_denoising_diffusion.py``), each formula written out here independently: the v target and the
x0/eps conversions, the self-conditioning renormalisation in training, the DDPM sampling loop with and
without the per-step L2 renormalisation, and the latent-normalisation rule."""
from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import TINY_AE, TINY_BART
from textdiff.core import CosineSquaredSchedule, GaussianProcess, Sampler
from textdiff.families.ld4lg import BartDenoiser, LatentAutoencoder, LD4LG
from textdiff.nn.ld4lg import LatentDenoiser

V, PAD, BOS, EOS, MASK = 40, 0, 2, 3, 4
STEPS = 5


def _official_alpha(t, scale=1.0):
    """``cosine_schedule`` (clamp 1e-9) -> ``alpha_to_shifted_log_snr`` (logSNR clamped to +-15, + 2 ln scale)
    -> ``log_snr_to_alpha`` (sigmoid)."""
    a = torch.cos(t * math.pi / 2) ** 2
    a = a.clamp_min(1e-9)
    log_snr = (torch.log(a) - torch.log(1 - a)).clamp(-15, 15) + 2 * math.log(scale)
    return torch.sigmoid(log_snr)


def _model(seq2seq=False, **kw):
    torch.manual_seed(0)
    bart = BartDenoiser(dict(TINY_BART), V, PAD, BOS, EOS, MASK).bart
    ae = LatentAutoencoder(bart=bart, **TINY_AE)
    den = LatentDenoiser(latent_dim=TINY_AE["latent_dim"], dim=32, depth=2, heads=2, max_len=TINY_AE["num_latents"],
                         num_skips=1, context_dim=TINY_BART["d_model"] if seq2seq else None)
    proc = GaussianProcess(CosineSquaredSchedule(scale=0.5), prediction="v")
    return LD4LG(den, proc, autoencoder=ae, seq2seq=seq2seq,
                 sampler=partial(Sampler, num_steps=STEPS, eta=1.0, variance="large"), **kw).eval()


def test_v_target_and_conversions_are_the_official_ones():
    """target v = sqrt(a) eps - sqrt(1 - a) x (``forward``); x = sqrt(a) z - sqrt(1 - a) v
    (``predict_start_from_v``); eps = sqrt(1 - a) z + sqrt(a) v (``predict_noise_from_v``)."""
    g = torch.Generator().manual_seed(0)
    proc = GaussianProcess(CosineSquaredSchedule(scale=0.5), prediction="v")
    t = torch.tensor([0.05, 0.3, 0.7, 0.99])
    x0, eps, v = (torch.randn(4, 3, 8, generator=g) for _ in range(3))
    a = _official_alpha(t, 0.5).view(-1, 1, 1)
    z = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert torch.allclose(proc.q_sample(x0, t, eps), z, atol=1e-6)
    assert torch.allclose(proc.target(x0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * x0, atol=1e-6)
    x_hat = proc.to_x0(v, z, t)
    assert torch.allclose(x_hat, a.sqrt() * z - (1 - a).sqrt() * v, atol=1e-6)
    assert torch.allclose(proc.to_eps(x_hat, z, t), (1 - a).sqrt() * z + a.sqrt() * v, atol=1e-4)


def test_training_self_conditioning_input_is_renormalised():
    """Official ``forward``: with an L2-normalising autoencoder the no-grad first pass's x0 estimate is rescaled to
    norm sqrt(d) before it conditions the second pass, in unconditional training too."""
    seen = []
    for mode, expect_norm in (("official", True), ("off", False)):
        model = _model(l2_renormalize=mode, self_condition_prob=1.0).train()
        calls = []
        net = model.net
        model.net = lambda x, t, sc=None, **kw: (calls.append(sc), net(x, t, sc, **kw))[1]  # type: ignore[method-assign]
        ids = torch.randint(5, V, (4, 9))
        ids[:, 0], ids[:, -1] = BOS, EOS
        model.compute_loss({"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool)})
        assert calls[0] is None and calls[1] is not None
        norms = calls[1].norm(dim=-1)
        d = TINY_AE["latent_dim"]
        assert torch.allclose(norms, torch.full_like(norms, math.sqrt(d)), atol=1e-4) == expect_norm
        seen.append(norms)
    assert not torch.allclose(seen[0], seen[1])


def _official_ddpm_sample(model, shape, gen, renorm, **cond):
    """``GaussianDiffusion.ddpm_sample``: times linspace(1, 0, K + 1); at each pair (t, s): the model's v at z
    with the previous x0 as self-conditioning; x = sqrt(a) z - sqrt(1 - a) v; with ``l2_normalize`` x is rescaled
    to norm sqrt(d) and eps re-derived from it (``diffusion_model_predictions``), else eps = sqrt(1 - a) z +
    sqrt(a) v; the last step returns x; otherwise z = (z - (1 - a_ts) / sqrt(1 - a) eps) / sqrt(a_ts) +
    sqrt(1 - a_ts) noise with a_ts = a_t / a_s. The noise comes from ``gen`` in the sampler's order (the prior,
    then one draw per step)."""
    z = torch.randn(shape, generator=gen)
    times = torch.linspace(1.0, 0.0, STEPS + 1, dtype=torch.float64)
    x_start = None
    for k in range(STEPS):
        t = torch.full((shape[0],), float(times[k]))
        s = torch.full((shape[0],), float(times[k + 1]))
        v = model.net(z, t, x_start, **cond)
        a = _official_alpha(t, 0.5).view(-1, 1, 1)
        a_next = _official_alpha(s, 0.5).view(-1, 1, 1)
        x = a.sqrt() * z - (1 - a).sqrt() * v
        if renorm:
            x = F.normalize(x, dim=-1) * math.sqrt(x.shape[-1])
            eps = (z - a.sqrt() * x) / (1 - a).sqrt().clamp(min=1e-8)
        else:
            eps = (1 - a).sqrt() * z + a.sqrt() * v
        x_start = x
        noise = torch.randn(shape, generator=gen)
        if float(times[k + 1]) <= 0:
            z = x
            continue
        a_now = a / a_next
        z = 1 / a_now.sqrt() * (z - (1 - a_now) / (1 - a).sqrt() * eps) + (1 - a_now).sqrt() * noise
    return z


@pytest.mark.parametrize("seq2seq,mode,renorm", [(True, "official", True), (False, "official", False),
                                                 (False, "always", True), (True, "off", False)])
def test_ddpm_sampling_loop_matches_the_official_one(seq2seq, mode, renorm):
    """The official seq2seq sampler renormalises x0_hat at every step; its unconditional sampler does not
    (``sample()`` passes no ``l2_normalize``): "official" reproduces both, "always" renormalises both."""
    model = _model(seq2seq=seq2seq, l2_renormalize=mode)
    n, shape = 3, (3, TINY_AE["num_latents"], TINY_AE["latent_dim"])
    cond = {}
    if seq2seq:
        src = torch.randint(5, V, (n, 7))
        src[:, 0], src[:, -1] = BOS, EOS
        mask = torch.ones_like(src, dtype=torch.bool)
        cond = {"context": model.context(src, mask), "context_mask": mask}
    with torch.no_grad():
        out, _ = model._sample_latents(n, torch.Generator().manual_seed(1), model.build_sampler(), 1.0, **cond)
        ours = out.x0
        official = _official_ddpm_sample(model, shape, torch.Generator().manual_seed(1), renorm, **cond)
    assert torch.allclose(ours, official, atol=2e-4), (ours - official).abs().max()


def test_latent_normalisation_is_off_by_default_and_refused_with_l2_latents(preset, tmp_path):
    """Official ``Trainer.__init__``: with an L2-normalising autoencoder, ``assert not args.normalize_latent``."""
    cfg = preset(["model=ld4lg", "schedule=cosine_squared", "sampler=ddpm_large", "diffusion_steps=null"], tmp_path)
    assert cfg.model.normalize_latents is False and cfg.model.l2_renormalize == "official"
    with pytest.raises(ValueError, match="normalize_latent"):
        _model(normalize_latents=True)
    model = _model()
    assert model.autoencoder.l2_normalize and not model.normalize_latents

import pytest
import torch

from textdiff.core import (
    AbsorbingProcess, ClampToEmbeddings, CosineSchedule, DiscreteSchedule, GaussianProcess,
    L2Renormalize, LogitFilter, MutualSchedule, Sampler, SqrtSchedule, nearest_rows,
)


def _gauss():
    return GaussianProcess(DiscreteSchedule(SqrtSchedule(), 100))


def test_timesteps_and_nfe():
    calls = []

    def denoise(x, t, sc):
        calls.append(t[0].item())
        return torch.zeros_like(x)

    sampler = Sampler(_gauss(), num_steps=10)
    ts = sampler.timesteps()
    assert ts.shape == (11,) and ts[0] == 1.0 and ts[-1] == 0.0 and torch.all(ts[1:] < ts[:-1])
    out = sampler.sample(denoise, (2, 3, 4))
    assert out.nfe == 10 and len(calls) == 10 and calls[0] == 1.0
    early = Sampler(_gauss(), num_steps=10, early_stop=3).sample(denoise, (2, 3, 4))
    assert early.nfe == 7


def test_self_conditioning_passes_previous_x0():
    seen = []

    def denoise(x, t, sc):
        seen.append(None if sc is None else sc.clone())
        return torch.full_like(x, t[0].item())

    Sampler(_gauss(), num_steps=4, self_condition=True).sample(denoise, (1, 2, 2))
    assert seen[0] is None
    times = Sampler(_gauss(), num_steps=4).timesteps()
    for k in range(1, 4):
        torch.testing.assert_close(seen[k], torch.full((1, 2, 2), float(times[k - 1])))


def test_step_hooks_and_trajectory():
    fixed = torch.randn(1, 5, 3)

    def infill(x_s, s, t, x0, x_t):  # re-impose the first two positions after each step
        x_s = x_s.clone()
        x_s[:, :2] = fixed[:, :2]
        return x_s

    out = Sampler(_gauss(), num_steps=6).sample(lambda x, t, sc: x * 0.5, (1, 5, 3), step_hooks=[infill],
                                                keep_trajectory=True)
    assert torch.equal(out.x[:, :2], fixed[:, :2])
    assert len(out.trajectory) == 7 and len(out.x0_trajectory) == 6


def test_same_generator_same_samples():
    s = Sampler(_gauss(), num_steps=8, eta=1.0)

    def denoise(x, t, sc):
        return x * 0.9

    a = s.sample(denoise, (2, 4, 3), generator=torch.Generator().manual_seed(7)).x
    b = s.sample(denoise, (2, 4, 3), generator=torch.Generator().manual_seed(7)).x
    c = s.sample(denoise, (2, 4, 3), generator=torch.Generator().manual_seed(8)).x
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_reuse_unchanged_skips_calls_without_changing_samples():
    """The cache recomputes only the sequences that changed: same samples, fewer row evaluations."""
    V, MASK, B = 8, 7, 6
    proc = AbsorbingProcess(DiscreteSchedule(MutualSchedule(), 64, max_beta=1.0), mask_id=MASK)
    W = torch.randn(V, V, generator=torch.Generator().manual_seed(0)) * 2

    def den(xt, t, self_cond):  # time-agnostic, each row's output depends on that row only
        return W[xt] + W[xt.sum(-1, keepdim=True) % V]

    plain = Sampler(proc, num_steps=64, eta=1.0).sample(den, (B, 4), generator=torch.Generator().manual_seed(3))
    cached = Sampler(proc, num_steps=64, eta=1.0, reuse_unchanged=True).sample(
        den, (B, 4), generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain.x, cached.x)
    assert plain.nfe == 64 and plain.row_evals == 64 * B
    assert cached.nfe < 64 and cached.row_evals <= B * (4 + 1)  # the first call, then once per revealing step


def test_invalid_configurations():
    with pytest.raises(ValueError, match="early_stop"):
        Sampler(_gauss(), num_steps=5, early_stop=5)
    absorbing = AbsorbingProcess(DiscreteSchedule(MutualSchedule(), 10, max_beta=1.0), mask_id=3)
    with pytest.raises(ValueError, match="Gaussian"):
        Sampler(absorbing, variance="large")
    with pytest.raises(ValueError, match="absorbing"):
        Sampler(_gauss(), reuse_unchanged=True)
    with pytest.raises(ValueError, match="num_steps"):
        Sampler(_gauss(), num_steps=500)  # more steps than the 100-step chain
    with pytest.raises(TypeError):
        Sampler(object())


def test_clamp_hook_snaps_to_nearest_row_in_window():
    emb = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 3.0]])
    x0 = torch.tensor([[[0.9, 1.2], [-1.5, 2.0], [0.3, -0.1]]])  # dot: row 1 wins for the last
    clamp = ClampToEmbeddings(emb)
    torch.testing.assert_close(clamp(x0, torch.tensor([0.5])), emb[[1, 2, 0]].unsqueeze(0))
    windowed = ClampToEmbeddings(emb, t_max=0.3)
    torch.testing.assert_close(windowed(x0, torch.tensor([0.5])), x0)
    dot = ClampToEmbeddings(emb, metric="dot", scale=2.0)
    torch.testing.assert_close(dot(x0, torch.tensor([0.5])), 2 * emb[[1, 2, 1]].unsqueeze(0))
    big = torch.randn(500, 8)
    table = torch.randn(37, 8)
    brute = torch.cdist(big, table).argmin(-1)
    assert torch.equal(nearest_rows(big, table, chunk=64), brute)


def test_clamped_sampling_ends_on_embeddings():
    emb = torch.randn(20, 4)
    out = Sampler(GaussianProcess(CosineSchedule()), num_steps=10, hooks=[ClampToEmbeddings(emb)]).sample(
        lambda x, t, sc: x, (3, 5, 4))
    dists = torch.cdist(out.x.reshape(-1, 4), emb).min(-1).values
    assert torch.all(dists < 1e-4)


def test_l2_renormalize_and_logit_filter():
    x = torch.randn(2, 3, 16)
    norms = L2Renormalize()(x, torch.tensor([0.5, 0.5])).norm(dim=-1)
    torch.testing.assert_close(norms, torch.full((2, 3), 4.0))
    logp = torch.log_softmax(torch.tensor([[[3.0, 2.0, 1.0, 0.0]]]), -1)
    p = LogitFilter(top_k=2)(logp, torch.tensor([0.5])).exp()
    assert torch.all(p[..., 2:] == 0) and p.sum().item() == pytest.approx(1.0)
    p = LogitFilter(top_p=0.7)(logp, torch.tensor([0.5])).exp()  # softmax [.64,.24,.09,.03] -> keep 2
    assert (p > 0).sum().item() == 2
    p = LogitFilter(banned_ids=[0])(logp, torch.tensor([0.5])).exp()
    assert p[..., 0].item() == 0
    cold = LogitFilter(temperature=0.1)(logp, torch.tensor([0.5])).exp()
    assert cold[..., 0].item() > 0.99

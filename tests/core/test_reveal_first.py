"""The absorbing sampler's reveal-first step (``Sampler(reveal_first=True)``, the default) against the
reference whole-tensor step (``reveal_first=False``): the same samples, bit for bit, where the random draws
are the same (eta = 0, eta = 1, a posterior filter that is not a ``LogitFilter``), and the same reveal rates
and token distributions where they are not (a ``LogitFilter`` of temperature and top-k on the posterior)."""
import math

import pytest
import torch

from textdiff.core import (
    AbsorbingProcess, DiscreteSchedule, Infill, LogitFilter, MutualSchedule, Sampler, SpindleSchedule,
)

V, PAD, BOS, EOS, MASK = 24, 0, 2, 3, 4
FRAME = LogitFilter(banned_ids=[PAD, BOS, EOS])


def _proc(spindle: bool, T: int = 64, posterior: str = "official") -> AbsorbingProcess:
    base = DiscreteSchedule(MutualSchedule(), T, max_beta=1.0)
    if not spindle:
        return AbsorbingProcess(base, mask_id=MASK)
    weight = torch.rand(V, generator=torch.Generator().manual_seed(1))
    return AbsorbingProcess(SpindleSchedule(base, weight, ignore_ids=[PAD, BOS, EOS]), mask_id=MASK,
                            spindle_posterior=posterior)


def _denoiser(scale: float = 2.0, ties: bool = False):
    """Time-agnostic, each row's logits depend on that row only (so ``reuse_unchanged`` is exact). With
    ``ties`` the logits take few distinct values, so argmax ties are common."""
    W = torch.randn(V, V, generator=torch.Generator().manual_seed(0)) * scale
    if ties:
        W = W.round()

    def denoise(xt, t, sc):
        mix = (xt * torch.arange(1, xt.shape[1] + 1)).sum(-1, keepdim=True) % V
        return W[xt] + W[mix]

    return denoise


def _init(B: int = 12, L: int = 10) -> torch.Tensor:
    """[MASK] between BOS and EOS, PAD after; lengths 4..L."""
    lengths = torch.randint(4, L + 1, (B,), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(L)
    x = torch.full((B, L), MASK).masked_fill(pos >= lengths[:, None], PAD)
    x[:, 0] = BOS
    return x.masked_fill(pos == lengths[:, None] - 1, EOS)


def _run(reveal_first: bool, *, spindle: bool, reuse: bool, eta: float, hooks=(FRAME,), posterior=None,
         step_hooks=(), ties=False, early_stop=0, keep_trajectory=True, seed=5, K=24):
    sampler = Sampler(_proc(spindle), num_steps=K, eta=eta, reuse_unchanged=reuse, reveal_first=reveal_first,
                      hooks=list(hooks), early_stop=early_stop)
    return sampler.sample(_denoiser(ties=ties), (12, 10), x_init=_init(), generator=torch.Generator().manual_seed(seed),
                          posterior_filter=posterior, step_hooks=list(step_hooks), keep_trajectory=keep_trajectory)


def _assert_same(a, b):
    assert torch.equal(a.x, b.x)
    assert (a.nfe, a.row_evals) == (b.nfe, b.row_evals)
    assert torch.equal(a.x0, b.x0)  # the reveal-first x0 is computed on access, from the kept outputs
    if a.trajectory is not None:
        assert len(a.trajectory) == len(b.trajectory)
        assert all(torch.equal(p, q) for p, q in zip(a.trajectory, b.trajectory))
        assert all(torch.equal(p, q) for p, q in zip(a.x0_trajectory, b.x0_trajectory))


class _Wrapped:
    """A posterior filter that is not a ``LogitFilter``: the exact (n, V) posterior path."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, joint, t):
        return self.inner(joint, t)


EXACT_CASES = {
    "ancestral": dict(eta=1.0),
    "ancestral, temperature and top-k on x0": dict(eta=1.0, hooks=(FRAME, LogitFilter(top_k=5, temperature=0.7))),
    "ancestral, top-p on x0": dict(eta=1.0, hooks=(FRAME, LogitFilter(top_p=0.8))),
    "ancestral, no hooks": dict(eta=1.0, hooks=()),
    "ancestral, tied logits": dict(eta=1.0, ties=True, hooks=(FRAME, LogitFilter(temperature=0.5))),
    "deterministic": dict(eta=0.0),
    "deterministic, tied logits": dict(eta=0.0, ties=True),
    "posterior filter, not a LogitFilter": dict(eta=1.0, posterior=_Wrapped(LogitFilter(top_k=5, temperature=0.5))),
    "posterior LogitFilter with top-p": dict(eta=1.0, posterior=LogitFilter(top_p=0.9)),
    "early stop": dict(eta=1.0, early_stop=5),
}


@pytest.mark.parametrize("case", list(EXACT_CASES))
@pytest.mark.parametrize("spindle", [False, True], ids=["plain", "spindle"])
@pytest.mark.parametrize("reuse", [False, True], ids=["every-row", "reuse"])
def test_reveal_first_is_exact_where_the_draws_are_the_same(case, spindle, reuse):
    kw = EXACT_CASES[case]
    ref = _run(False, spindle=spindle, reuse=reuse, **kw)
    fast = _run(True, spindle=spindle, reuse=reuse, **kw)
    _assert_same(fast, ref)
    if kw.get("early_stop", 0) == 0:
        assert not (fast.x == MASK).any()


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_reveal_first_exact_with_small_tables(monkeypatch, eta):
    """u tables built in chunks of sequences, and none kept for the run (u computed at each step)."""
    import textdiff.core.reveal_first as reveal_first_module

    ref = _run(False, spindle=True, reuse=True, eta=eta)
    for table, kept in ((50, 2**24), (50, 0)):
        monkeypatch.setattr(reveal_first_module, "_TABLE_ELEMENTS", table)
        monkeypatch.setattr(reveal_first_module, "_KEPT_TABLE_ELEMENTS", kept)
        _assert_same(_run(True, spindle=True, reuse=True, eta=eta), ref)


def test_reveal_first_exact_without_trajectory_and_on_other_seeds():
    """keep_trajectory does not change the draws; several seeds, spindle and reuse (the DiffusionBERT setting)."""
    for seed in range(4):
        ref = _run(False, spindle=True, reuse=True, eta=1.0, seed=seed, keep_trajectory=False)
        fast = _run(True, spindle=True, reuse=True, eta=1.0, seed=seed, keep_trajectory=False)
        _assert_same(fast, ref)
        assert torch.equal(fast.x, _run(True, spindle=True, reuse=True, eta=1.0, seed=seed).x)


def test_reveal_first_exact_with_step_hooks():
    """Infilling (a step hook that does not read x0) and a step hook that reads x0 each step."""
    context = _init().clone()
    keep = torch.zeros_like(context, dtype=torch.bool)
    keep[:, 1:3] = context[:, 1:3] == MASK  # fix two inner tokens
    context[:, 1:3] = torch.where(keep[:, 1:3], torch.tensor([7, 9]), context[:, 1:3])

    def run(reveal_first):
        seen = []

        def reads_x0(x_s, s, t, x0_hat, x_t):
            seen.append(x0_hat.clone())
            return x_s

        infill = Infill(context, keep)
        sampler = Sampler(_proc(True), num_steps=24, eta=1.0, reuse_unchanged=True, reveal_first=reveal_first,
                          hooks=[FRAME])
        out = sampler.sample(_denoiser(), (12, 10), x_init=infill.impose(_init()), step_hooks=[infill, reads_x0],
                             generator=torch.Generator().manual_seed(3))
        return out, seen

    (ref, seen_ref), (fast, seen_fast) = run(False), run(True)
    _assert_same(fast, ref)
    assert all(torch.equal(p, q) for p, q in zip(seen_fast, seen_ref)) and len(seen_fast) == 24
    assert torch.equal(fast.x[keep], context[keep])


def test_filtered_posterior_goes_on_after_a_step_hook_fills_a_waiting_position():
    """The closed-form filtered step draws each position's reveal step ahead; a step hook that fills a [MASK]
    position before its reveal (here: column 1 of every row at the 3rd step) must not stall the later reveals
    (its pending event once kept the sampler waiting for it: [MASK]s were left)."""
    calls = []

    def fill(x_s, s, t, x0_hat, x_t):
        calls.append(1)
        if len(calls) % 24 == 3:  # the 3rd of 24 steps
            x_s = x_s.clone()
            x_s[:, 1] = torch.where(x_s[:, 1] == MASK, 7, x_s[:, 1])
        return x_s

    fill.reads_x0 = False
    for reuse in (True, False):
        sampler = Sampler(_proc(True), num_steps=24, eta=1.0, reuse_unchanged=reuse, hooks=[FRAME],
                          closed_form_posterior=True)
        out = sampler.sample(_denoiser(), (12, 10), x_init=_init(), step_hooks=[fill],
                             posterior_filter=LogitFilter(top_k=3, temperature=0.5),
                             generator=torch.Generator().manual_seed(3))
        assert not (out.x == MASK).any()
        assert (out.x[:, 1] == 7).sum() >= 6  # most rows still had it masked at the 3rd step


def test_rowwise_hooks_only():
    """A hook that is not declared row-wise runs the reference step (same samples as reveal_first=False)."""
    def plain_hook(x0, t):  # acts on (B, L, V) as a whole
        return x0

    a = _run(True, spindle=False, reuse=True, eta=1.0, hooks=(FRAME, plain_hook))
    b = _run(False, spindle=False, reuse=True, eta=1.0, hooks=(FRAME, plain_hook))
    _assert_same(a, b)
    assert LogitFilter.rowwise and LogitFilter.time_invariant


def test_lazy_x0_is_computed_once():
    out = _run(True, spindle=True, reuse=True, eta=1.0, keep_trajectory=False)
    first = out.x0
    assert first.shape == (12, 10, V) and out.x0 is first


def test_unmask_table_matches_unmask_prob():
    """The grid version of unmask_prob (one call for J steps) gives the per-step values bit for bit."""
    x0 = torch.randint(0, V, (7, 11), generator=torch.Generator().manual_seed(4))
    for proc in (_proc(False), _proc(True), _proc(True, posterior="exact")):
        grid = proc.schedule.sampling_times(16, "even").float()
        table = proc.unmask_table(grid, x0)
        for j in range(16):
            t, s = torch.full((7,), float(grid[j])), torch.full((7,), float(grid[j + 1]))
            assert torch.equal(table[:, j].expand(7, 11), proc.unmask_prob(t, s, x0))
        if proc.schedule.token_dependent:  # at chosen positions only, with or without the kept time terms
            at = (torch.tensor([0, 3, 3, 6]), torch.tensor([10, 0, 5, 2]))
            terms = proc.schedule.time_terms(grid.view(1, -1))
            for kept in (None, terms):
                assert torch.equal(proc.unmask_table(grid, x0, at=at, terms=kept), table[at[0], :, at[1]])


def test_first_reveal_is_the_first_success():
    """P(first success at j) = prod_{i<j} (1 - r_i) r_j; a certain trial always succeeds."""
    g = torch.Generator().manual_seed(0)
    r = torch.tensor([0.1, 0.3, 0.0, 0.5, 1.0])
    n = 100_000
    steps = AbsorbingProcess.first_reveal(torch.log1p(-r).expand(n, -1).contiguous(), g)
    freq = torch.bincount(steps, minlength=6).double() / n
    expected = torch.tensor([0.1, 0.9 * 0.3, 0.0, 0.9 * 0.7 * 0.5, 0.9 * 0.7 * 0.5, 0.0], dtype=torch.double)
    assert torch.allclose(freq, expected, atol=0.005), freq
    never = AbsorbingProcess.first_reveal(torch.zeros(1000, 3), g)  # log(1 - 0): no trial succeeds
    assert (never == 3).all()


def _official_reveal_probs(x0_logp, u, temperature, top_k):
    """``discrete_diffusion_predict_fn`` at one masked position: logits log(u p_v) for the tokens and
    log(1 - u) for [MASK], divided by the temperature, the k largest kept, softmax (float64)."""
    logits = x0_logp.double() + math.log(u)
    logits[MASK] = math.log1p(-u) if u < 1 else float("-inf")
    logits = logits / temperature
    if top_k:
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, -1)


@pytest.mark.parametrize("temperature,top_k", [(1.0, 3), (0.5, 3), (1.0, 1), (0.3, None), (1.0, 12)])
@pytest.mark.parametrize("u", [0.05, 0.4, 0.97, 1.0])
def test_filtered_reveal_prob_and_token_draw_match_the_official_posterior(temperature, top_k, u):
    """Reveal probability (exact numbers) and the revealed token's distribution (sampled) of the reveal-first
    "filtered" step against the joint categorical the reference step draws from."""
    proc = _proc(False)
    logits = torch.randn(V, generator=torch.Generator().manual_seed(7)) * 2
    x0_logp = proc.masked_x0(logits)
    official = _official_reveal_probs(x0_logp, u, temperature, top_k)
    k = top_k or 1
    top, ids = x0_logp.unsqueeze(0).topk(k, -1)
    lse = torch.logsumexp(x0_logp / temperature, -1).view(1)
    reveal = proc.filtered_reveal_prob(top, lse, torch.tensor([[u]]), temperature, top_k)
    assert reveal.item() == pytest.approx(1 - official[MASK].item(), abs=1e-5)
    if top_k is None or reveal.item() < 1e-6:  # no reveal: no token to compare
        return
    n = 200_000
    tokens = proc.filtered_token_draw(top.expand(n, -1), ids.expand(n, -1), torch.full((n,), u), temperature, top_k,
                                      torch.Generator().manual_seed(1))
    freq = torch.bincount(tokens, minlength=V).double() / n
    given = official.clone()
    given[MASK] = 0
    given = given / given.sum()
    assert torch.allclose(freq, given, atol=0.004), (freq, given)


def _histograms(out, K):
    """Per-step reveal counts (K,) and per-position token histograms (L, V) of a run with a trajectory."""
    traj = torch.stack(out.trajectory)  # (K + 1, B, L)
    masked = traj == MASK
    reveals = (masked[:-1] & ~masked[1:]).sum((1, 2)).double()
    B, L = traj.shape[1:]
    hist = torch.stack([torch.bincount(out.x[:, j], minlength=V) for j in range(L)]).double() / B
    return reveals, hist


FILTERS = {"top-k": dict(temperature=0.7, top_k=4), "temperature": dict(temperature=0.5),
           "top-k over V": dict(temperature=0.8, top_k=V + 3)}


@pytest.mark.parametrize("reuse,spindle,filt", [
    (True, False, "top-k"), (True, True, "top-k"), (False, False, "top-k"), (False, True, "top-k"),
    (True, True, "temperature"), (False, True, "temperature"), (True, False, "top-k over V"),
    (True, True, "top-k, small tables"),
])
def test_filtered_posterior_matches_the_reference_in_distribution(reuse, spindle, filt, monkeypatch):
    """A LogitFilter (temperature, top-k) on the joint posterior: the reveal-first step draws differently
    (per-position reveal steps drawn ahead, inverse-CDF token draws), so the samples differ, but the number
    revealed at each step and the tokens at each position have the same distribution as the reference's.
    Tolerances are 5 standard errors of the difference of two independent estimates."""
    K, B, L = 12, 6000, 4
    proc = _proc(spindle, T=48)
    W = torch.randn(V, V, generator=torch.Generator().manual_seed(3)) * 1.5

    def denoise(xt, t, sc):  # each position sees its left neighbour: outputs change when a row changes
        left = torch.cat([torch.full_like(xt[:, :1], BOS), xt[:, :-1]], 1)
        return W[left] + W[xt] * 0.5

    x_init = torch.full((B, L), MASK)
    if filt.endswith("small tables"):  # the per-step tables in chunks of 500 sequences
        import textdiff.core.reveal_first as reveal_first_module

        monkeypatch.setattr(reveal_first_module, "_TABLE_ELEMENTS", 500 * K * L)
        filt = filt.split(",")[0]
    filt = LogitFilter(**FILTERS[filt])
    runs = []
    for reveal_first in (True, False):
        sampler = Sampler(proc, num_steps=K, eta=1.0, reuse_unchanged=reuse, reveal_first=reveal_first, hooks=[FRAME],
                          closed_form_posterior=True)
        out = sampler.sample(denoise, (B, L), x_init=x_init, generator=torch.Generator().manual_seed(11),
                             posterior_filter=filt, keep_trajectory=True)
        assert not (out.x == MASK).any()
        runs.append(_histograms(out, K))
    (rev_fast, hist_fast), (rev_ref, hist_ref) = runs
    n = B * L
    p = rev_ref / n
    se = torch.sqrt(2 * p * (1 - p) / n).clamp_min(1e-4)
    assert ((rev_fast - rev_ref).abs() / n <= 5 * se + 1e-4).all(), (rev_fast, rev_ref)
    se_tok = torch.sqrt(2 * hist_ref * (1 - hist_ref) / B).clamp_min(2e-4)
    assert ((hist_fast - hist_ref).abs() <= 5 * se_tok + 1e-4).all(), (hist_fast - hist_ref).abs().max()
    assert rev_ref[:-1].sum() > 0.2 * n  # the filter reveals tokens before the last step (not all at the end)


def test_filtered_posterior_differs_from_the_reference_under_a_wrong_rate():
    """The distribution check above can fail: a top-k of 4 against a top-k of 3 is caught."""
    K, B, L = 12, 6000, 4
    proc = _proc(False, T=48)
    W = torch.randn(V, V, generator=torch.Generator().manual_seed(3)) * 1.5

    def denoise(xt, t, sc):
        return W[xt]

    runs = []
    for top_k, reveal_first in ((4, True), (3, False)):
        filt = LogitFilter(top_k=top_k, temperature=0.7)
        sampler = Sampler(proc, num_steps=K, eta=1.0, reuse_unchanged=True, reveal_first=reveal_first, hooks=[FRAME],
                          closed_form_posterior=True)
        out = sampler.sample(denoise, (B, L), x_init=torch.full((B, L), MASK), posterior_filter=filt,
                             generator=torch.Generator().manual_seed(11), keep_trajectory=True)
        runs.append(_histograms(out, K))
    (rev_a, _), (rev_b, _) = runs
    n = B * L
    p = rev_b / n
    se = torch.sqrt(2 * p * (1 - p) / n).clamp_min(1e-4)
    assert not ((rev_a - rev_b).abs() / n <= 5 * se + 1e-4).all()


@pytest.mark.parametrize("spindle", [False, True])
@pytest.mark.parametrize("reuse", [False, True])
def test_a_logit_filter_posterior_is_exact_by_default(spindle, reuse):
    """DiffusionBERT's preset (temperature/top-k on the joint posterior): without ``closed_form_posterior`` the
    reveal-first step draws the reference's samples, bit for bit."""
    filt = LogitFilter(top_k=3, temperature=0.8)
    _assert_same(_run(True, spindle=spindle, reuse=reuse, eta=1.0, posterior=filt),
                 _run(False, spindle=spindle, reuse=reuse, eta=1.0, posterior=filt))

"""Parallel-decoding policies of the absorbing sampler (``Sampler(unmask=...)``, ``textdiff.core.unmasking``):
confidence-ordered unmasking (LLaDA), confidence-threshold decoding (Fast-dLLM) and semi-autoregressive blocks,
checked with an oracle denoiser whose x0 puts a known probability on a known target token at every position."""
from functools import partial

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from textdiff.core import (
    AbsorbingProcess, DiscreteSchedule, GaussianProcess, LogitFilter, MutualSchedule, Sampler, SpindleSchedule,
)
from textdiff.core.schedules import SqrtSchedule, discretize
from textdiff.core.unmasking import confidence_score, even_split

V, PAD, BOS, EOS, MASK = 24, 0, 2, 3, 4
FRAME = LogitFilter(banned_ids=[PAD, BOS, EOS])
POLICIES = {
    "confidence": {"unmask": "confidence"},
    "threshold": {"unmask": "threshold", "threshold": 0.9},
    "semi_ar_confidence": {"unmask": "confidence", "block_length": 3},
    "semi_ar_threshold": {"unmask": "threshold", "threshold": 0.9, "block_length": 3},
}


def _proc(spindle: bool = False, T: int = 64) -> AbsorbingProcess:
    base = DiscreteSchedule(MutualSchedule(), T, max_beta=1.0)
    if not spindle:
        return AbsorbingProcess(base, mask_id=MASK)
    weight = torch.rand(V, generator=torch.Generator().manual_seed(1))
    return AbsorbingProcess(SpindleSchedule(base, weight, ignore_ids=[PAD, BOS, EOS]), mask_id=MASK)


class Oracle:
    """A time- and context-agnostic denoiser conditioned on a prompt token at position 0 (ids 5, 6, ...: row r of
    the tables): its x0 puts probability ``conf[r, l]`` on ``target[r, l]`` and the rest evenly on the other
    ordinary ids (5..V-1), none on PAD/BOS/EOS/[MASK]. Records each call's (x, t)."""

    def __init__(self, R: int = 6, L: int = 12, low: float = 0.2, high: float = 0.98, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.target = torch.randint(5, V, (R, L), generator=g)
        self.conf = low + (high - low) * torch.rand(R, L, generator=g)
        p = ((1 - self.conf) / (V - 6)).unsqueeze(-1).repeat(1, 1, V)
        p[..., :5] = 0.0
        p.scatter_(-1, self.target.unsqueeze(-1), self.conf.unsqueeze(-1))
        self.logits = p.log()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, t, sc):
        self.calls.append((x.clone(), t.clone()))
        return self.logits[x[:, 0] - 5]

    def init(self, lengths=None) -> torch.Tensor:
        """The prompt at 0, [MASK] up to each length, PAD after."""
        R, L = self.target.shape
        lengths = torch.full((R,), L) if lengths is None else torch.as_tensor(lengths)
        x = torch.full((R, L), MASK).masked_fill(torch.arange(L) >= lengths[:, None], PAD)
        x[:, 0] = 5 + torch.arange(R)
        return x


def _run(oracle, x, K=8, hooks=(FRAME,), seed=0, **kw):
    """Sample from ``x`` on the even grid (K equal strides, as conf/sampler/*.yaml), keeping the trajectory."""
    sampler = Sampler(_proc(kw.pop("spindle", False)), num_steps=K, spacing="even", hooks=list(hooks), **kw)
    return sampler.sample(oracle, tuple(x.shape), x_init=x, generator=torch.Generator().manual_seed(seed),
                          keep_trajectory=True)


def _reveals(traj):
    """(steps, B, L) bool: the positions each step revealed."""
    return torch.stack([(a == MASK) & (b != MASK) for a, b in zip(traj, traj[1:])])


# ----- every policy -----
@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("reveal_first, reuse", [(True, False), (False, False), (True, True)])
def test_each_policy_ends_on_the_target_and_never_remasks(policy, reveal_first, reuse):
    oracle = Oracle()
    x = oracle.init(lengths=[12, 12, 9, 7, 5, 1])  # the last row has nothing to reveal
    out = _run(oracle, x, K=8, reveal_first=reveal_first, reuse_unchanged=reuse, **POLICIES[policy])
    maskable = x == MASK
    assert not (out.x == MASK).any()
    assert torch.equal(out.x[maskable], oracle.target[maskable])  # argmax of x0 = the target
    assert torch.equal(out.x[~maskable], x[~maskable])  # PAD and the prompt untouched
    for a, b in zip(out.trajectory, out.trajectory[1:]):
        assert torch.equal(a[a != MASK], b[a != MASK])  # a revealed token never changes
    assert 1 <= out.nfe <= 8 and out.row_evals <= 5 * out.nfe  # the empty row is never evaluated
    assert all(int(c[0][:, 0].eq(10).sum()) == 0 for c in oracle.calls)
    assert len(out.trajectory) == len(out.x0_trajectory) + 1 and out.x0.shape == (6, 12, V)


def test_gathered_and_whole_tensor_x0_and_the_cache_give_the_same_samples():
    """A random net, draws from x0 with margins and a threshold: x0 at [MASK] positions only (reveal_first) or on
    the whole tensor, with or without reuse_unchanged, the same samples; the cache saves evaluations."""
    W = torch.randn(V, V, generator=torch.Generator().manual_seed(0)) * 3

    def net(xt, t, sc):
        mix = (xt * torch.arange(1, xt.shape[1] + 1)).sum(-1, keepdim=True) % V
        return W[xt] + W[mix]

    x = Oracle().init(lengths=[12, 10, 8, 6, 4, 3])
    for kw in ({"unmask": "threshold", "threshold": 0.5, "confidence": "margin", "draw": "sample"},
               {"unmask": "confidence", "draw": "sample", "spindle": True},
               {"unmask": "confidence", "block_length": 4, "draw": "sample"}):
        runs = [_run(net, x, K=10, reveal_first=rf, reuse_unchanged=reuse, seed=3, **dict(kw))
                for rf, reuse in ((True, False), (False, False), (True, True))]
        for other in runs[1:]:
            assert torch.equal(runs[0].x, other.x)
        assert runs[1].row_evals == runs[0].row_evals and runs[2].row_evals <= runs[0].row_evals
        assert not (runs[0].x == MASK).any()


# ----- confidence (LLaDA) -----
def test_confidence_reveals_the_scheduled_count_most_confident_first():
    oracle = Oracle()
    x = oracle.init()  # 11 [MASK] per row; K = 4
    out = _run(oracle, x, K=4, unmask="confidence")
    rev = _reveals(out.trajectory)
    times = Sampler(_proc(), num_steps=4, spacing="even").timesteps()
    masked = (x == MASK).sum(-1)  # (B,)
    for k in range(4):  # round(sum of unmask_prob over the masked positions), eta = 0's count
        u = _proc().unmask_prob(times[k:k + 1].float(), times[k + 1:k + 2].float(), x[:1])[0, 0]
        expected = torch.round(masked * u).long()
        assert torch.equal(rev[k].sum(-1), expected)
        masked = masked - expected
    assert rev.sum(-1)[:, 0].tolist() == [3, 3, 2, 3]
    for k in range(4):  # every position revealed is more confident than every one left masked
        before = out.trajectory[k] == MASK
        left = before & ~rev[k]
        lo = oracle.conf.masked_fill(~rev[k], 2.0).amin(-1)
        hi = oracle.conf.masked_fill(~left, -1.0).amax(-1)
        assert (lo > hi).all()
    assert out.nfe == 4 and out.row_evals == 24


def test_confidence_on_a_linear_schedule_is_llada_even_split():
    """12 [MASK] over K = 4 steps of the linear schedule: 3 per step, LLaDA's get_num_transfer_tokens."""
    oracle = Oracle(L=13)
    out = _run(oracle, oracle.init(), K=4, unmask="confidence")
    llada = even_split(torch.full((4,), 12), torch.full((4,), 4), torch.arange(4))
    assert _reveals(out.trajectory).sum(-1).T.tolist() == [llada.tolist()] * 6 == [[3, 3, 3, 3]] * 6


@pytest.mark.parametrize("spindle", [False, True])
@pytest.mark.parametrize("reveal_first", [True, False])
def test_confidence_with_prob_and_argmax_is_the_eta0_step(spindle, reveal_first):
    """The eta = 0 reverse step reveals the same count, most confident first, as argmax: the same samples."""
    W = torch.randn(V, V, generator=torch.Generator().manual_seed(4)) * 2

    def net(xt, t, sc):
        return W[xt] + W[(xt.sum(-1, keepdim=True) * 7) % V]

    x = Oracle().init(lengths=[12, 11, 9, 8, 6, 4])
    eta0 = _run(net, x, K=6, eta=0.0, spindle=spindle, reveal_first=reveal_first)
    conf = _run(net, x, K=6, unmask="confidence", spindle=spindle, reveal_first=reveal_first)
    assert torch.equal(eta0.x, conf.x) and conf.nfe <= eta0.nfe == 6


# ----- threshold (Fast-dLLM) -----
def test_threshold_reveals_every_position_above_tau_and_at_least_one():
    oracle = Oracle(low=0.5, high=1.0)
    x = oracle.init(lengths=[12, 12, 10, 8, 6, 4])
    out = _run(oracle, x, K=12, unmask="threshold", threshold=0.9)
    for k, rev in enumerate(_reveals(out.trajectory)):
        before = out.trajectory[k] == MASK
        above = before & (oracle.conf > 0.9)
        best = oracle.conf.masked_fill(~before, -1.0).argmax(-1)
        one = torch.zeros_like(before).scatter_(1, best[:, None], True) & before
        expected = torch.where(above.any(-1, keepdim=True), above, one)
        assert torch.equal(rev, expected)
    # static confidences: all above tau at the first step, then one per step
    n_above, n_below = ((x == MASK) & (oracle.conf > 0.9)).sum(-1), ((x == MASK) & (oracle.conf <= 0.9)).sum(-1)
    per_row = n_below + (n_above > 0).long()
    assert out.nfe == int(per_row.max()) < 12 and out.row_evals == int(per_row.sum())


def test_threshold_with_high_confidences_takes_one_evaluation_and_the_last_step_reveals_all():
    oracle = Oracle(low=0.95, high=0.99)
    out = _run(oracle, oracle.init(), K=64, unmask="threshold", threshold=0.9)
    assert out.nfe == 1 and out.row_evals == 6 and torch.equal(out.x[:, 1:], oracle.target[:, 1:])
    low = Oracle(low=0.2, high=0.8)
    out = _run(low, low.init(), K=3, unmask="threshold", threshold=0.9)  # 11 [MASK], none above tau
    assert _reveals(out.trajectory).sum(-1).T.tolist() == [[1, 1, 9]] * 6 and out.nfe == 3
    assert torch.equal(out.x[:, 1:], low.target[:, 1:])


# ----- semi-autoregressive blocks -----
@pytest.mark.parametrize("unmask", ["confidence", "threshold"])
def test_blocks_are_decoded_left_to_right(unmask):
    oracle = Oracle(L=12)
    x = oracle.init(lengths=[12, 11, 9, 7, 5, 4])
    out = _run(oracle, x, K=8, unmask=unmask, block_length=3, threshold=0.6)
    block = torch.arange(12) // 3
    for state in out.trajectory:  # no position of a block revealed while a block before it holds [MASK]
        masked = state == MASK
        first_open = torch.where(masked.any(-1), masked.float().argmax(-1), torch.full((6,), 12))
        later = block[None, :] > block[first_open.clamp_max(11)][:, None]
        assert torch.equal(masked[later], (x == MASK)[later])
    assert not (out.x == MASK).any()


def test_blocks_split_the_steps_and_the_masked_counts_evenly():
    """One row, prompt + 8 [MASK], blocks of 3 ({prompt, 2 masks}, 3, 3), K = 6: 2 steps per block, LLaDA's
    split of each block's count over its 2 steps: 1 1 | 2 1 | 2 1, most confident first; t is each step's grid time."""
    oracle = Oracle(R=1, L=9)
    out = _run(oracle, oracle.init(), K=6, unmask="confidence", block_length=3)
    rev = _reveals(out.trajectory)
    assert rev.sum(-1)[:, 0].tolist() == [1, 1, 2, 1, 2, 1]
    for k in (0, 2, 4):
        first, second = rev[k, 0], rev[k + 1, 0]
        assert oracle.conf[0][first].min() > oracle.conf[0][second].max()
    times = Sampler(_proc(), num_steps=6, spacing="even").timesteps().float()
    assert torch.equal(torch.cat([t for _, t in oracle.calls]), times[:6])
    # threshold in blocks: a block done at its first step hands over at once; the next one starts at its own
    # first grid step (t of steps 0, 2, 4), 3 evaluations of the cap K = 6
    high = Oracle(R=1, L=9, low=0.95, high=0.99)
    out = _run(high, high.init(), K=6, unmask="threshold", block_length=3)
    assert out.nfe == 3 and torch.equal(torch.cat([t for _, t in high.calls]), times[[0, 2, 4]])


# ----- confidence measures, the token draw and the filters -----
def test_margin_and_prob_order_differ():
    """Position 1: p = 0.50 / 0.45 (margin 0.05); position 2: p = 0.40 / 0.10 (margin 0.30)."""
    p = torch.zeros(3, V)
    p[1, 5:] = 0.05 / (V - 7)
    p[1, 5], p[1, 6] = 0.50, 0.45
    p[2, 5:] = 0.50 / (V - 7)
    p[2, 7], p[2, 8] = 0.40, 0.10
    p[0, 9] = 1.0
    logits = p.log().unsqueeze(0)
    x = torch.tensor([[9, MASK, MASK]])
    lp = torch.log_softmax(logits[0, 1:], -1)
    assert torch.allclose(confidence_score(lp, lp.argmax(-1), "prob").exp(), torch.tensor([0.50, 0.40]))
    assert torch.allclose(confidence_score(lp, lp.argmax(-1), "margin"), torch.tensor([0.05, 0.30]))
    first = {}
    for kind in ("prob", "margin"):
        out = _run(lambda xt, t, sc: logits.expand(xt.shape[0], -1, -1), x, K=2, unmask="confidence",
                   confidence=kind)
        first[kind] = _reveals(out.trajectory)[0, 0].nonzero().squeeze(-1).tolist()
        assert out.x.tolist() == [[9, 5, 7]]
    assert first == {"prob": [1], "margin": [2]}


def test_draws_from_x0_and_the_posterior_filter_choose_the_token():
    oracle = Oracle(low=0.3, high=0.6)
    x = oracle.init()
    drawn = _run(oracle, x, K=6, unmask="confidence", draw="sample", seed=1)
    assert not (drawn.x == MASK).any() and 0.2 < (drawn.x[:, 1:] == oracle.target[:, 1:]).float().mean() < 0.8
    top1 = Sampler(_proc(), num_steps=6, hooks=[FRAME], unmask="confidence", draw="sample").sample(
        oracle, tuple(x.shape), x_init=x, generator=torch.Generator().manual_seed(1),
        posterior_filter=LogitFilter(top_k=1))  # the filter acts on x0 for the token choice: top-1 = argmax
    assert torch.equal(top1.x[:, 1:], oracle.target[:, 1:])


def test_a_hook_that_is_not_rowwise_sees_the_whole_tensor():
    seen = []

    def hook(x0, t):  # no ``rowwise``: the sampler must pass (B, L, V)
        seen.append(x0.dim())
        return FRAME(x0, t)

    oracle = Oracle()
    x = oracle.init()
    out = _run(oracle, x, K=4, hooks=[hook], unmask="threshold")
    assert set(seen) == {3} and torch.equal(out.x, _run(Oracle(), x, K=4, unmask="threshold").x)


def test_step_hooks_run_after_every_step():
    calls = []

    class Hook:
        reads_x0 = False

        def __call__(self, x_s, s, t, x0_hat, x_t):
            calls.append(x0_hat)
            return x_s

    oracle = Oracle()
    out = Sampler(_proc(), num_steps=5, spacing="even", unmask="confidence", step_hooks=[Hook()]).sample(
        oracle, (6, 12), x_init=oracle.init())
    assert len(calls) == out.nfe == 5 and all(c is None for c in calls)


# ----- options -----
def test_bad_options_are_rejected_with_their_name():
    proc = _proc()
    for kw, msg in (({"unmask": "greedy"}, "unmask must be one of"), ({"confidence": "entropy"}, "confidence must"),
                    ({"draw": "beam"}, "draw must be one of"), ({"threshold": 0.0}, r"threshold must be in \(0, 1\)"),
                    ({"threshold": 1.0}, "threshold must be in"), ({"unmask": "threshold", "threshold": 1.5}, "0, 1"),
                    ({"unmask": "confidence", "block_length": 0}, "block_length must be >= 1"),
                    ({"block_length": 4}, "block_length .* needs unmask='confidence' or 'threshold'"),
                    ({"unmask": "confidence", "early_stop": 2}, "early_stop applies to unmask='schedule'"),
                    ({"unmask": "threshold", "self_condition": True}, "self_condition applies to")):
        with pytest.raises(ValueError, match=msg):
            Sampler(proc, num_steps=8, **kw)
    # the shipped absorbing config turns the closed form on; a policy override on top of it ignores it
    Sampler(proc, num_steps=8, unmask="confidence", closed_form_posterior=True)
    gauss = GaussianProcess(DiscreteSchedule(SqrtSchedule(), 10))
    with pytest.raises(ValueError, match="absorbing processes only, got a GaussianProcess"):
        Sampler(gauss, num_steps=4, unmask="confidence")
    with pytest.raises(ValueError, match="num_steps=3 is fewer than the 4 blocks"):
        _run(Oracle(), Oracle().init(), K=3, unmask="confidence", block_length=3)


@pytest.mark.parametrize("name, unmask, K, block", [("confidence", "confidence", 32, None),
                                                     ("threshold", "threshold", 128, None),
                                                     ("semi_ar", "confidence", 32, 8)])
def test_sampler_configs_instantiate_and_override(name, unmask, K, block):
    from textdiff.cli.common import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"sampler={name}"])
        tuned = compose(config_name="train", overrides=[f"sampler={name}", "sampler.unmask=threshold",
                                                        "sampler.threshold=0.8", "sampler.confidence=margin"])
    sampler = instantiate(cfg.sampler)(process=_proc(T=128))
    assert (sampler.unmask, sampler.num_steps, sampler.block_length, sampler.threshold) == (unmask, K, block, 0.9)
    tuned = instantiate(tuned.sampler)(process=_proc(T=128))
    assert (tuned.unmask, tuned.threshold, tuned.confidence) == ("threshold", 0.8, "margin")
    oracle = Oracle(L=12)
    assert not (sampler.sample(oracle, (6, 12), x_init=oracle.init()).x == MASK).any()


# ----- a family: DiffusionBERT -----
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 20, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_diffusion_bert_generates_with_each_policy(policy):
    from textdiff.families import DiffusionBERT
    from textdiff.nn.bert import TimeConditionedBert

    torch.manual_seed(0)
    base = discretize(MutualSchedule(), 64, max_beta=1.0)
    model = DiffusionBERT(TimeConditionedBert(TINY, time_mode="none", num_steps=64, vocab_size=30),
                          AbsorbingProcess(SpindleSchedule(base, pad_id=PAD), mask_id=MASK, hybrid_lambda=0.01),
                          pad_id=PAD, bos_id=BOS, eos_id=EOS, max_len=12,
                          sampler=partial(Sampler, num_steps=16, eta=1.0), top_k=5, temperature=0.5)
    g = torch.Generator().manual_seed(1)
    model.set_corpus_statistics([[BOS, *torch.randint(5, 30, (4 + i % 3,), generator=g).tolist(), EOS]
                                 for i in range(60)])
    run = model.generate_run(6, seed=0, draw="sample", **POLICIES[policy])  # top-k/T filter x0 for the token
    ids = run.ids
    assert ids.shape == (6, 12) and not (ids == MASK).any()
    assert (ids[:, 0] == BOS).all() and (ids[:, -1] == EOS).all()
    assert not torch.isin(ids[:, 1:-1], torch.tensor([PAD, BOS, EOS])).any()
    assert run.nfe == run.output.row_evals / 6 <= run.output.nfe <= 16
    assert torch.equal(ids, model.generate_run(6, seed=0, draw="sample", **POLICIES[policy]).ids)

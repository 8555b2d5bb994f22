"""Categorical draws (``textdiff.core.categorical.sample_categorical``) in float32 and float64, on peaked categoricals:
the float64 draws hit the tail at its probability; the float32 inverse CDF misplaces it (tokens of ~2e-8 after the
peak get an empty interval or a 3x one); the float32 ``torch.multinomial`` draws the float64 ids on the CPU. With
``float64`` off every sampler path draws the ids it drew before the option existed; the shipped configs set the
defaults (on for the LLaDA-style policies, off for MDLM, DiffusionBERT and the AR baseline)."""
import inspect
import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from textdiff.core import (
    AbsorbingProcess, DiscreteSchedule, GaussianProcess, LogitFilter, MutualSchedule, Sampler, sample_categorical,
)
from textdiff.core.schedules import SqrtSchedule, discretize
from textdiff.families import Autoregressive
from textdiff.families.interface import SamplingRun
from textdiff.nn import ARTransformer

BIG_V, PEAK, TAIL = 50_000, 7, 1e-3  # one token of probability 1 - 1e-3 early in the vocabulary, the rest ~2e-8 each


def _peaked() -> torch.Tensor:
    """(1, BIG_V) float64 log-probs: ``PEAK`` has 1 - TAIL, every other token TAIL / (BIG_V - 1)."""
    logits = torch.full((1, BIG_V), math.log(TAIL / (BIG_V - 1)), dtype=torch.float64)
    logits[0, PEAK] = math.log1p(-TAIL)
    return logits


def _near(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """``count`` successes of ``n`` trials is within ``sigmas`` binomial standard deviations of n p."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def _draw(logits, float64, method, seed=0, **kw):
    return sample_categorical(logits, generator=torch.Generator().manual_seed(seed), float64=float64, method=method,
                              **kw)


# ----- the draws -----
def test_inverse_cdf_float64_draws_the_tail_and_float32_misplaces_it():
    """4M draws from the peaked categorical. After the peak the float32 CDF sits on a 6e-8 grid, so of the tail's
    49,999 tokens of ~2e-8 each about two thirds get an empty interval (never drawn) and the others one grid step
    (three times their probability); the tail's total stays right on the CPU (whose cumsum accumulates in float64).
    Measured at seed 0: tail 4,078 (float32) and 4,065 (float64) of 4,000 expected; on the 33,739 float32-empty
    tokens, 0 (float32) and 2,688 (float64) of 2,699 expected, so float32 puts ~3x the mass on the other 16,253."""
    logits, S = _peaked(), 4_000_000
    cdf32 = torch.softmax(logits.float(), -1).cumsum(-1)[0]
    empty = torch.zeros(BIG_V, dtype=torch.bool)
    empty[PEAK + 1:] = cdf32[PEAK + 1:] == cdf32[PEAK:-1]  # tail tokens whose float32 interval is empty
    assert int(empty.sum()) > (BIG_V - 1) // 2
    p_empty = int(empty.sum()) * TAIL / (BIG_V - 1)
    ids64, ids32 = (_draw(logits, f64, "inverse_cdf", num_samples=S)[0] for f64 in (True, False))
    assert _near(int((ids64 != PEAK).sum()), S, TAIL)
    assert _near(int(empty[ids64].sum()), S, p_empty)  # float64 reaches every tail token at its probability
    assert _near(int((ids32 != PEAK).sum()), S, TAIL)  # float32: the total is right on the CPU ...
    assert int(empty[ids32].sum()) == 0  # ... but two thirds of the tail's tokens are never drawn


def test_inverse_cdf_few_small_tokens_after_the_peak():
    """Four tokens of 5e-5 late in the vocabulary, after the peak and a tail of ~2e-9 tokens: both precisions draw
    them at their probability (float32's 6e-8 grid is a 0.1% error here, below what 2M draws resolve; measured at
    seed 0: 85, 105, 108, 103 (float64) and 103, 99, 88, 95 (float32) of 100 each)."""
    late, p, S = [20_000, 35_000, 42_000, BIG_V - 1], 5e-5, 2_000_000
    logits = torch.full((1, BIG_V), math.log(1e-4 / (BIG_V - 6)), dtype=torch.float64)
    logits[0, late] = math.log(p)
    logits[0, 3] = math.log(1 - 4 * p - 1e-4)
    for f64 in (True, False):
        ids = _draw(logits, f64, "inverse_cdf", num_samples=S)[0]
        counts = torch.bincount(ids, minlength=BIG_V)
        assert all(_near(int(counts[i]), S, p) for i in late), (f64, counts[late])
        assert _near(int(counts[3]), S, 1 - 4 * p - 1e-4)


def test_multinomial_float32_draws_the_float64_ids_on_the_cpu():
    """``torch.multinomial`` (one draw per row: the exponential race p / q, q ~ Exp(1)) draws q in float64 on the
    CPU and rounds it: float32 and float64 give the same ids, so there the float32 draw is exact (equality is
    asserted, not a frequency). The float64 draws hit a few small tokens after the peak at their probability."""
    peaked = _peaked().expand(64, -1)
    assert torch.equal(_draw(peaked.float(), False, "multinomial"), _draw(peaked, True, "multinomial"))
    wide = torch.randn(1000, 2000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 6
    wide = wide.log_softmax(-1)  # probabilities from ~1 down to far below 1e-20
    assert torch.equal(_draw(wide.float(), False, "multinomial"), _draw(wide, True, "multinomial"))
    V, late, p, n = 1000, [400, 700, 999], 5e-3, 20_000
    logits = torch.full((1, V), -60.0, dtype=torch.float64)  # the rest: e^-60 ~ 1e-26
    logits[0, late] = math.log(p)
    logits[0, 2] = math.log(1 - 3 * p)
    ids = _draw(logits.expand(n, -1), True, "multinomial")
    counts = torch.bincount(ids, minlength=V)
    assert all(_near(int(counts[i]), n, p) for i in late) and int(counts.sum()) == n


def test_support_num_samples_and_bad_arguments():
    logits = torch.zeros(3, 5, dtype=torch.float64)
    support = torch.tensor([1, 2, 5])
    for f64 in (False, True):
        ids = _draw(logits, f64, "inverse_cdf", support=support, num_samples=2000)
        assert ids.shape == (3, 2000) and ids.dtype == torch.long
        assert set(ids[0].tolist()) == {0} and set(ids[1].tolist()) == {0, 1} and set(ids[2].tolist()) == set(range(5))
        assert _draw(logits, f64, "multinomial").shape == (3,) and _draw(logits, f64, "multinomial",
                                                                        num_samples=4).shape == (3, 4)
    for kw, match in (({"method": "gumbel"}, "method must be"), ({"num_samples": 0}, "num_samples"),
                      ({"support": support}, "support applies")):
        with pytest.raises(ValueError, match=match):
            sample_categorical(logits, **{"method": "multinomial", **kw})
    with pytest.raises(ValueError, match=r"\(n, m\)"):
        sample_categorical(torch.zeros(5))


# ----- every sampler path: float64 off draws today's ids -----
V, PAD, BOS, EOS, MASK = 24, 0, 2, 3, 4
FRAME = LogitFilter(banned_ids=[PAD, BOS, EOS])
W = torch.randn(V, V, generator=torch.Generator().manual_seed(0))


def _denoise(xt, t, sc):
    mix = (xt * torch.arange(1, xt.shape[1] + 1)).sum(-1, keepdim=True) % V
    return W[xt] + W[mix]


class _Wrapped:
    """A posterior filter that is not a ``LogitFilter``: the exact (n, V) posterior path."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, joint, t):
        return self.inner(joint, t)


# (Sampler options, posterior filter, the ids drawn at seed 3 before the float64 option existed)
PATHS = {
    "ancestral": ({"eta": 1.0}, None,
                  [[2, 20, 11, 16, 7, 22, 11, 3], [2, 11, 7, 20, 12, 7, 14, 3], [2, 20, 11, 14, 14, 23, 12, 3],
                   [2, 10, 20, 18, 14, 7, 18, 3]]),
    "ancestral, reference step": ({"eta": 1.0, "reveal_first": False}, None,
                                  [[2, 20, 11, 16, 7, 22, 11, 3], [2, 11, 7, 20, 12, 7, 14, 3],
                                   [2, 20, 11, 14, 14, 23, 12, 3], [2, 10, 20, 18, 14, 7, 18, 3]]),
    "posterior filter": ({"eta": 1.0}, _Wrapped(LogitFilter(top_k=5, temperature=0.7)),
                         [[2, 1, 14, 14, 11, 12, 21, 3], [2, 14, 12, 12, 14, 11, 20, 3], [2, 1, 9, 20, 14, 1, 21, 3],
                          [2, 1, 20, 14, 14, 19, 23, 3]]),
    "closed form, top-k": ({"eta": 1.0, "closed_form_posterior": True, "reuse_unchanged": True},
                           LogitFilter(top_k=5, temperature=0.7),
                           [[2, 14, 10, 10, 10, 14, 10, 3], [2, 11, 11, 11, 14, 14, 14, 3],
                            [2, 14, 18, 14, 20, 14, 11, 3], [2, 11, 6, 20, 12, 12, 14, 3]]),
    "closed form, no top-k": ({"eta": 1.0, "closed_form_posterior": True, "reuse_unchanged": True},
                              LogitFilter(temperature=0.7),
                              [[2, 1, 10, 10, 10, 9, 12, 3], [2, 21, 7, 18, 7, 7, 8, 3], [2, 19, 12, 8, 12, 20, 12, 3],
                               [2, 16, 11, 7, 7, 10, 7, 3]]),
    "confidence": ({"unmask": "confidence", "draw": "sample"}, None,
                   [[2, 14, 14, 9, 9, 18, 11, 3], [2, 11, 12, 12, 14, 12, 14, 3], [2, 19, 11, 1, 21, 12, 20, 3],
                    [2, 14, 6, 11, 14, 12, 12, 3]]),
    "threshold": ({"unmask": "threshold", "threshold": 0.5, "draw": "sample"}, None,
                  [[2, 20, 14, 14, 20, 6, 16, 3], [2, 12, 10, 9, 9, 14, 14, 3], [2, 14, 11, 21, 7, 14, 20, 3],
                   [2, 11, 21, 14, 20, 20, 11, 3]]),
    "semi-autoregressive": ({"unmask": "confidence", "block_length": 3, "draw": "sample"}, None,
                            [[2, 1, 7, 20, 11, 20, 9, 3], [2, 14, 8, 10, 10, 23, 10, 3], [2, 6, 14, 14, 9, 21, 20, 3],
                             [2, 1, 14, 9, 14, 20, 9, 3]]),
}
INVERSE_CDF = ("closed form, top-k", "closed form, no top-k")  # the paths that draw by inverse CDF


def _proc(T: int = 64) -> AbsorbingProcess:
    return AbsorbingProcess(DiscreteSchedule(MutualSchedule(), T, max_beta=1.0), mask_id=MASK)


def _sample(path, **extra):
    kw, posterior, _ = PATHS[path]
    sampler = Sampler(_proc(), num_steps=16, spacing="even", hooks=[FRAME], **kw, **extra)
    x = torch.full((4, 8), MASK)
    x[:, 0], x[:, -1] = BOS, EOS
    return sampler.sample(_denoise, (4, 8), x_init=x, generator=torch.Generator().manual_seed(3),
                          posterior_filter=posterior).x


@pytest.mark.parametrize("path", list(PATHS))
def test_float64_off_draws_the_ids_of_before(path):
    assert _sample(path).tolist() == PATHS[path][2]
    assert _sample(path, float64=False).tolist() == PATHS[path][2]
    on = _sample(path, float64=True)
    assert not torch.isin(on[:, 1:-1], torch.tensor([PAD, BOS, EOS, MASK])).any()
    if path in INVERSE_CDF:  # float64 uniforms: other draws (the multinomial paths give the same ids on the CPU)
        assert on.tolist() != PATHS[path][2]


def test_autoregressive_sample_float64_off_draws_the_ids_of_before():
    torch.manual_seed(5)
    net = ARTransformer(V, dim=32, enc_depth=0, dec_depth=1, heads=2, ffn_dim=64, max_len=9, max_src_len=10,
                        dropout=0.0)
    lm = Autoregressive(net, PAD, 1, EOS)
    before = [[1, 15, 15, 6, 5, 17, 6, 6, 17], [1, 4, 2, 20, 9, 12, 12, 12, 18], [1, 15, 19, 18, 3, 0, 0, 0, 0],
              [1, 20, 6, 6, 19, 6, 6, 14, 21]]
    assert lm.generate(4, seed=11, batch_size=3, temperature=2.0).tolist() == before
    assert lm.generate(4, seed=11, batch_size=3, temperature=2.0, float64=False).tolist() == before
    run = lm.generate_run(4, seed=11, batch_size=3, temperature=2.0, float64=True)
    assert run.ids.shape == (4, 9) and run.details == {"temperature": 2.0, "float64": True}


# ----- the option: where it applies, what the run records, the shipped defaults -----
def test_the_option_is_absorbing_only_and_recorded():
    gauss = GaussianProcess(discretize(SqrtSchedule(), 20))
    with pytest.raises(ValueError, match="float64 applies to absorbing processes only"):
        Sampler(gauss, num_steps=4, float64=True)
    assert "float64" not in SamplingRun(torch.zeros(1, 2), Sampler(gauss, num_steps=4)).report()
    for on in (False, True):
        assert SamplingRun(torch.zeros(1, 2), Sampler(_proc(), num_steps=4, float64=on)).report()["float64"] is on


def _shipped(*overrides):
    from textdiff.cli.common import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("overrides, on", [
    (["experiment=mdlm_owt"], False),  # the official MDLM samples in float32 (diffusion.py _sample_categorical)
    (["experiment=mdlm_tatoeba_cpu"], False),
    (["experiment=diffusion_bert_tatoeba_cpu"], False),  # the official Categorical(logits).sample() in float32
    (["sampler=confidence"], True),  # LLaDA's generate.py add_gumbel_noise: float64
    (["sampler=threshold"], True),
    (["sampler=semi_ar"], True),
])
def test_shipped_defaults(overrides, on):
    sampler = instantiate(_shipped(*overrides).sampler)(process=_proc(2048))
    assert sampler.float64 is on


def test_the_autoregressive_baseline_draws_in_float32_by_default():
    """fairseq's sampling, which the baseline follows, draws from float32 probabilities: off unless asked."""
    assert inspect.signature(Autoregressive.sample).parameters["float64"].default is False
    assert "float64" not in _shipped("experiment=ar_lm_tatoeba_cpu").eval.generate

"""Control hooks: classifier guidance moves samples towards the wanted class and no further than its
fluency term allows; infilling keeps the context exactly (Gaussian and absorbing)."""
import pytest
import torch
import torch.nn.functional as F

from textdiff.core import (
    AbsorbingProcess, ClassifierGuidance, DiscreteSchedule, GaussianProcess, Infill, MutualSchedule, Sampler,
    SqrtSchedule, class_nll,
)
from tests.helpers import absorbing_oracle


def _gauss():
    return GaussianProcess(DiscreteSchedule(SqrtSchedule(), 200))


def _mean_classifier(x, t):
    """Class 1 when the mean coordinate is positive: logits (B, 2) = (-4 m, 4 m)."""
    m = x.mean(dim=(1, 2))
    return torch.stack([-4 * m, 4 * m], dim=-1)


def _sample(sampler, hooks=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    return sampler.sample(lambda x, t, sc: x, (16, 6, 4), generator=g, step_hooks=hooks).x  # x0_hat = x_t


def test_reverse_step_is_mean_plus_std_noise():
    proc, z = _gauss(), torch.randn(3, 5, 4)
    xt, x0 = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    t, s = torch.full((3,), 0.6), torch.full((3,), 0.5)
    for eta, variance in ((1.0, "small"), (0.5, "small"), (1.0, "large")):
        mean, std = proc.reverse_mean_std(xt, x0, t, s, eta=eta, variance=variance)
        step = proc.reverse_step(xt, x0, t, s, eta=eta, variance=variance, noise=z)
        torch.testing.assert_close(step, mean + std * z)
        assert std.shape == (3, 1, 1) and bool((std > 0).all())


def test_class_nll_is_the_cross_entropy_per_sequence():
    x, labels = torch.randn(4, 3, 2), torch.tensor([0, 1, 1, 0])
    expected = F.cross_entropy(_mean_classifier(x, None), labels, reduction="none")
    torch.testing.assert_close(class_nll(_mean_classifier, labels)(x, None), expected)


def test_guidance_moves_samples_towards_the_class_and_fluency_holds_them_back():
    sampler = Sampler(_gauss(), num_steps=20, eta=1.0)
    plain = _sample(sampler)
    want = torch.ones(16, dtype=torch.long)
    guided_hook = ClassifierGuidance.for_sampler(sampler, class_nll(_mean_classifier, want), steps=3, lr=0.1,
                                                 fluency=0.0)
    guided = _sample(sampler, [guided_hook])
    held = _sample(sampler, [ClassifierGuidance.for_sampler(sampler, class_nll(_mean_classifier, want), steps=3,
                                                            lr=0.1, fluency=100.0)])
    acc = lambda x: float((_mean_classifier(x, None).argmax(-1) == 1).float().mean())  # noqa: E731
    assert acc(plain) < 0.8 and acc(guided) == 1.0
    shift = lambda x: float((x - plain).abs().mean())  # noqa: E731
    assert shift(held) < 0.5 * shift(guided)
    steps_taken = [float(t) for t in sampler.timesteps()[:-1] if t >= 0.05]
    assert guided_hook.grad_steps == 3 * len(steps_taken) and 0 < len(steps_taken) < 20
    late = ClassifierGuidance.for_sampler(sampler, class_nll(_mean_classifier, want), t_min=1.5)
    assert torch.equal(_sample(sampler, [late]), plain) and late.grad_steps == 0


def test_guidance_refuses_an_absorbing_process():
    with pytest.raises(TypeError, match="Gaussian"):
        ClassifierGuidance(AbsorbingProcess(DiscreteSchedule(MutualSchedule(), 10), mask_id=0), lambda x, t: x)


def test_infill_keeps_the_context_gaussian_clean_and_noised():
    proc = _gauss()
    context, keep = torch.randn(2, 6, 4), torch.zeros(2, 6, dtype=torch.bool)
    keep[:, :2] = True
    sampler = Sampler(proc, num_steps=10, eta=1.0)
    seen = []

    def spy(x_s, s, t, x0, x_t):
        seen.append(x_s[:, :2].clone())
        return x_s

    for noisy in (False, True):
        seen.clear()
        hook = Infill(context, keep, proc, noise_context=noisy, generator=torch.Generator().manual_seed(1))
        init = hook.impose(proc.prior((2, 6, 4), generator=torch.Generator().manual_seed(0)), torch.ones(2))
        out = sampler.sample(lambda x, t, sc: x, (2, 6, 4), x_init=init, step_hooks=[hook, spy],
                             generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out.x[:, :2], context[:, :2])  # the last step imposes it clean
        assert not torch.equal(out.x[:, 2:], init[:, 2:])
        mid = seen[4]
        assert torch.equal(mid, context[:, :2]) != noisy  # noised to s before the end when noise_context


def test_infill_keeps_context_ids_with_an_absorbing_process():
    proc = AbsorbingProcess(DiscreteSchedule(MutualSchedule(), 20), mask_id=0)
    target = torch.randint(1, 9, (3, 7))
    keep = torch.rand(3, 7) < 0.4
    hook = Infill(torch.where(keep, target, 0), keep)
    x_init = hook.impose(proc.prior((3, 7)))
    assert torch.equal(x_init[keep], target[keep]) and bool((x_init[~keep] == 0).all())
    out = Sampler(proc, num_steps=20).sample(absorbing_oracle(target, 10), (3, 7), x_init=x_init, step_hooks=[hook])
    assert torch.equal(out.x, target)
    with pytest.raises(ValueError, match="bool"):
        Infill(target, keep.long())

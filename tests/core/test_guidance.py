"""Classifier-free guidance: the combination rule and the wrapper's calls."""
import pytest
import torch

from textdiff.core import ClassifierFreeGuidance, guidance_combine


def test_combination_interpolates_and_extrapolates():
    c, u = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert torch.allclose(guidance_combine(c, u, 1.0), c)
    assert torch.allclose(guidance_combine(c, u, 0.0), u)
    assert torch.allclose(guidance_combine(c, u, 2.0), 2 * c - u)  # Ho & Salimans eq. 6 with their w = 1
    with pytest.raises(ValueError, match="shape"):
        guidance_combine(c, u[:1], 2.0)


def test_weight_one_skips_the_unconditional_call():
    calls = []

    def cond(x, t, sc):
        calls.append("c")
        return x + 1

    def uncond(x, t, sc):
        calls.append("u")
        return x - 1

    x, t = torch.zeros(2, 3, 4), torch.ones(2)
    plain = ClassifierFreeGuidance(cond, uncond, 1.0)
    assert torch.equal(plain(x, t, None), x + 1) and calls == ["c"] and plain.nfe == 1
    calls.clear()
    guided = ClassifierFreeGuidance(cond, uncond, 3.0)
    assert torch.allclose(guided(x, t, None), torch.full_like(x, 5.0)) and calls == ["c", "u"] and guided.nfe == 2

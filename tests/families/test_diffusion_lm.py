"""Diffusion-LM: loss terms, the first-step target, sampling, likelihood, training on real text,
and checkpoint reload."""
from functools import partial

import pytest
import torch

from textdiff.core import DiscreteSchedule, GaussianProcess, Sampler, SqrtSchedule
from textdiff.families import DiffusionLM
from textdiff.nn import TransformerDenoiser


def tiny(vocab=40, d=8, max_len=12, T=100, steps=10, **kw):
    return DiffusionLM(
        TransformerDenoiser(d, dim=32, depth=1, heads=2, max_len=max_len, dropout=0.0),
        GaussianProcess(DiscreteSchedule(SqrtSchedule(), T)), vocab_size=vocab, embed_dim=d,
        sampler=partial(Sampler, num_steps=steps, eta=1.0), **kw)


def _batch(vocab=40, B=6, L=12):
    return {"ids": torch.randint(0, vocab, (B, L)), "mask": torch.ones(B, L, dtype=torch.bool)}


def test_loss_is_the_sum_of_its_terms():
    m = tiny()
    terms = m.compute_loss(_batch())
    assert set(terms) == {"loss", "mse", "prior", "rounding"}
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["prior"] + terms["rounding"])
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    assert m.embedding.weight.grad is not None and m.embedding.weight.grad.abs().sum() > 0


def test_first_step_target_is_the_clean_embedding(monkeypatch):
    m = tiny()
    batch = _batch()
    monkeypatch.setattr(m, "sample_t", lambda n: m.first_step_time(n))
    monkeypatch.setattr(m, "denoise", lambda xt, t, mask=None: m.embedding(batch["ids"]))
    assert m.compute_loss(batch)["mse"].item() == pytest.approx(0.0, abs=1e-10)


def test_rounding_head_is_tied_to_the_embedding():
    m = tiny()
    assert m.lm_head.weight.data_ptr() == m.embedding.weight.data_ptr()
    assert m.time_input(torch.tensor([0.01, 1.0])).tolist() == pytest.approx([0.0, 990.0])  # index * 1000 / T


def test_generate_is_seeded_and_clamps_to_embeddings():
    m = tiny()
    a = m.generate(5, seed=3)
    assert a.shape == (5, 12) and a.dtype == torch.long
    assert torch.equal(a, m.generate(5, seed=3))
    assert not torch.equal(a, m.generate(5, seed=4))
    out = m.generate_run(3, seed=0, num_steps=20).output
    assert out.nfe == 20
    dist = torch.cdist(out.x.reshape(-1, 8), m.embedding.weight).min(-1).values
    assert torch.all(dist < 1e-4)  # the last clamped x0 is an embedding row
    unclamped = m.generate_run(3, seed=0, clamp=False).output
    assert torch.cdist(unclamped.x.reshape(-1, 8), m.embedding.weight).min(-1).values.max() > 1e-3


def test_nll_bound_terms():
    m = tiny()
    out = m.nll_bound(_batch(), num_t=4)
    assert set(out) >= {"nll", "tokens", "prior", "diffusion", "decoder", "rounding"}
    torch.testing.assert_close(out["nll"], out["prior"] + out["diffusion"] + out["decoder"] + out["rounding"])
    assert torch.all(out["tokens"] == 12) and torch.all(torch.isfinite(out["nll"]))


def test_incompatible_arguments():
    with pytest.raises(ValueError, match="in_dim"):
        DiffusionLM(TransformerDenoiser(4, dim=16, depth=1, heads=2), GaussianProcess(SqrtSchedule()),
                    vocab_size=10, embed_dim=8)
    with pytest.raises(ValueError, match="prediction"):
        DiffusionLM(TransformerDenoiser(8, dim=16, depth=1, heads=2),
                    GaussianProcess(SqrtSchedule(), prediction="v"), vocab_size=10, embed_dim=8)


def test_nll_bound_estimator_is_unbiased_against_the_exact_sum():
    m = tiny(T=16, max_len=6)
    batch = _batch(B=4, L=6)
    exact, est = [], []
    for seed in range(24):
        torch.manual_seed(seed)
        exact.append(m.nll_bound(batch, num_t=0, exact_steps=16)["diffusion"].sum())  # all 15 terms
        torch.manual_seed(1000 + seed)
        est.append(m.nll_bound(batch, num_t=4, exact_steps=5)["diffusion"].sum())  # 4 exact + 4 draws
    exact, est = torch.stack(exact), torch.stack(est)
    stderr = (exact.var() / len(exact) + est.var() / len(est)).sqrt()
    assert abs(exact.mean() - est.mean()) < 4 * stderr


def test_infill_keeps_the_context_and_guidance_hooks_compose():
    from textdiff.core import ClassifierGuidance, class_nll

    torch.manual_seed(0)
    model = tiny()
    context = torch.randint(4, 40, (3, 12))
    fill = torch.zeros(3, 12, dtype=torch.bool)
    fill[:, 3:7] = True
    a = model.infill(context, fill, seed=1)
    assert a.shape == (3, 12) and torch.equal(a[~fill], context[~fill])
    assert torch.equal(a, model.infill(context, fill, seed=1))  # seeded
    # guidance on top of infilling: a hook that pushes the latents one way changes the filled tokens
    sampler = model.build_sampler()
    push = ClassifierGuidance.for_sampler(sampler,
                                          class_nll(lambda x, t: torch.stack([-x.mean((1, 2)), x.mean((1, 2))], -1),
                                                    torch.ones(3, dtype=torch.long)), lr=1.0, fluency=0.0)
    b = model.infill(context, fill, seed=1, step_hooks=[push])
    assert torch.equal(b[~fill], context[~fill]) and push.grad_steps > 0
    with pytest.raises(ValueError, match="fill"):
        model.infill(context, fill.long())


def test_encode_templates_marks_blanks_and_names_bad_templates():
    from textdiff.data import build_word_tokenizer
    from textdiff.data.sources import DataError
    from textdiff.data.templates import encode_templates

    tok = build_word_tokenizer(["the pub is near the river", "a cheap pub"])
    context, fill = encode_templates(["the _ is near _ _ river"], tok, length=10)
    assert fill[0].tolist() == [False, False, True, False, False, True, True, False, False, False]
    assert context[0, 0] == tok.bos_id and context[0, 8] == tok.eos_id and context[0, 9] == tok.pad_id
    assert tok.decode(context[0].tolist()) == "the is near river"
    with pytest.raises(DataError, match="template 1 .* no blank"):
        encode_templates(["_ pub", "a cheap pub"], tok, length=10)
    with pytest.raises(DataError, match="needs 12 positions"):
        encode_templates(["_ " * 10], tok, length=10)


def test_generate_runs_in_eval_mode_and_restores_the_mode_even_when_it_raises():
    m = tiny()
    m.network.dropout = torch.nn.Dropout(0.5)  # a module whose mode matters
    seen = []
    quiet = lambda xt, t, mask=None: (seen.append(m.training), torch.zeros_like(xt))[1]  # noqa: E731
    m.denoise = quiet
    m.train()
    m.generate(2, seed=0)
    assert seen and not any(seen) and m.training  # eval inside, training again after
    m.denoise = lambda xt, t, mask=None: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        m.generate(2, seed=0)
    assert m.training and m.network.training  # before: left in eval mode by the error
    m.denoise = quiet
    m.eval()
    m.generate(2, seed=0)
    assert not m.training


def test_generate_scaffolding_batches_and_seeds():
    m = tiny()
    assert list(m.batches(5, 2)) == [(0, 2), (2, 2), (4, 1)] and list(m.batches(4, 4)) == [(0, 4)]
    assert m.seeded_generator(None) is None
    a, b = m.seeded_generator(3), m.seeded_generator(3, "cpu")
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    # batch_size splits the draws, but the same seed and batch size give the same samples
    assert torch.equal(m.generate(5, seed=1, batch_size=2), m.generate(5, seed=1, batch_size=2))

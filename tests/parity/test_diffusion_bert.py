"""DiffusionBERT against its official code (Hzfinfdu/Diffusion-BERT), each formula written out here
independently: the spindle keep-probabilities on padded batches of the shipped preset, the D3PM loss with
a non-zero hybrid weight, the reveal posterior under a temperature and top-k, and the defaults."""
from __future__ import annotations

import math

import pytest
import torch

from textdiff.cli.common import build, build_datamodule
from textdiff.core import AbsorbingProcess, DiscreteSchedule, MutualSchedule, SpindleSchedule
from textdiff.core.hooks import LogitFilter

LAM = 0.3


def _official_state(T: int) -> torch.Tensor:
    """``MaskDiffusion._create_state`` for the "mutual" schedule: beta_k = 1 / (T - k)
    (``create_discrete_diffusion_schedule``), state = cumprod(1 - [0, beta_0..beta_{T-1}]), state[T] = 0."""
    betas = torch.cat([torch.zeros(1, dtype=torch.float64), 1.0 / (T - torch.arange(T, dtype=torch.float64))])
    state = torch.cumprod(1 - betas, 0)
    state[-1] = 0.0
    return state


def _official_keep(state, T, k, f_tokens, own):
    """``noise_fn``: p = clip(state[k] + lam sin(pi k / T) (f - mean over the sentence's own tokens), 0, .999)
    (``DDP_main.py::collate_fn`` centres f per example before padding). f_tokens (L,), own (L,) bool."""
    centred = f_tokens - f_tokens[own].mean()
    return (state[k] + LAM * math.sin(math.pi * k / T) * centred).clamp(0.0, 0.999)


@pytest.fixture(scope="module")
def tatoeba_preset(tmp_path_factory, shared_data):
    """``experiment=diffusion_bert_tatoeba_cpu`` built as ``textdiff-train`` builds it (on 3,000 training
    sentences), with its corpus statistics set as ``DiffusionBERT.setup`` sets them."""
    from tests.parity.conftest import compose_preset

    run_dir = tmp_path_factory.mktemp("dbert")
    cfg = compose_preset(["experiment=diffusion_bert_tatoeba_cpu", "data.max_train_examples=3000",
                          "data.max_eval_examples=64"], run_dir)
    dm = build_datamodule(cfg, run_dir)
    model = build(cfg, "model")
    model.set_corpus_statistics(dm.statistics_sequences() if hasattr(dm, "statistics_sequences")
                                else [item["ids"] for item in dm.dataset("train")])
    return cfg, dm, model


def test_spindle_keep_probabilities_do_not_depend_on_padding(tatoeba_preset):
    """A sentence gets the same keep-probabilities alone and padded to the preset's 24 positions, and they
    are the official ones: f = log(1 + count) / max from the training split, centred over the sentence's
    own tokens ([CLS]/[SEP] and PAD excluded)."""
    cfg, dm, model = tatoeba_preset
    proc, tok = model.process, dm.tokenizer
    T = cfg.diffusion_steps
    ids = torch.tensor([tok.bos_id, *tok.encode("the cat is on the table near my house"), tok.eos_id])
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and len(ids) < 24
    padded = torch.full((24,), tok.pad_id)
    padded[: len(ids)] = ids
    counts = torch.zeros(tok.vocab_size, dtype=torch.float64)  # word_freq.py: token counts of the train split
    for seq in [item["ids"] for item in dm.dataset("train")]:
        for w in seq:
            counts[w] += 1
    counts[[tok.pad_id, tok.bos_id, tok.eos_id]] = 0  # never in the official x0 (add_special_tokens=False)
    f = torch.log1p(counts)
    f = f / f.max()
    own = torch.zeros(len(ids), dtype=torch.bool)
    own[1:-1] = True
    state = _official_state(T)
    for k in (T // 8, T // 2, 3 * T // 4):
        t = torch.tensor([k / T])
        alone = proc.keep_prob(t, ids.unsqueeze(0))[0]
        in_row = proc.keep_prob(t, padded.unsqueeze(0))[0, : len(ids)]
        official = _official_keep(state, T, k, f[ids], own)
        assert torch.allclose(alone[own].double(), official[own], atol=1e-5), k
        assert torch.allclose(in_row[own], alone[own], atol=1e-6), (k, in_row[own] - alone[own])


def _official_d3pm_loss(logits, x0, xt_plus_1, t_off, T, f_centred, hybrid_lambda, mask_id, target_mask):
    """``compute_kl_reverse_process`` (predict_x0, probs space) for one t shared by the batch, from dense
    categorical vectors: q(x_t | x_{t+1}, x0) ∝ q(x_t | x0) q(x_{t+1} | x_t) (``sample_and_compute_posterior_q``,
    the one-step factor ``qt_reverse`` with the base beta_t = 1 / (T - t)), p the same with softmax(logits) in
    place of x0 (``p_forward``), KL for t > 0, CE at t = 0, plus hybrid_lambda * CE(softmax(logits), x0); sums
    over ``target_mask``. Returns the summed loss (the official divides it by the batch size)."""
    V = logits.shape[-1]
    state = _official_state(T)
    p_t = (state[t_off] + LAM * math.sin(math.pi * t_off / T) * f_centred).clamp(0, 0.999)  # noise_fn at t
    beta = 1.0 / (T - t_off)

    def q_t_given(q0):  # noise_fn (t > 0) or q0 itself (t == 0)
        if t_off == 0:
            return q0
        non_mask = p_t.unsqueeze(-1) * q0
        out = non_mask.clone()
        out[..., mask_id] = 1 - non_mask.sum(-1) + non_mask[..., mask_id]
        return out

    onehot_next = torch.nn.functional.one_hot(xt_plus_1, V).double()
    trans = (1 - beta) * onehot_next + beta * onehot_next[..., mask_id:mask_id + 1]  # qt_reverse
    trans[..., mask_id] = onehot_next[..., mask_id]
    eps = 1e-20
    probs = torch.softmax(logits.double(), -1)
    q = q_t_given(torch.nn.functional.one_hot(x0, V).double()) * trans
    q = q / q.sum(-1, keepdim=True)
    p = q_t_given(probs) * trans
    p = p / p.sum(-1, keepdim=True)
    kl = torch.relu((q * (torch.log(q + eps) - torch.log(p + eps))).sum(-1))  # losses.kl_divergence_with_probs
    ce_p = -torch.log(p + eps).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    base = ce_p if t_off == 0 else kl
    hybrid = -torch.log(probs + eps).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    m = target_mask.bool()  # (padding, never noised here, has no posterior at the last step: left out)
    return (base[m].sum() + hybrid_lambda * hybrid[m].sum()).item()


@pytest.mark.parametrize("t_off", [0, 1, 7, 40, 63])
def test_d3pm_loss_with_hybrid_weight_matches_the_official_kl(t_off):
    """textdiff's closed form (w * CE on masked positions + 0.01 CE everywhere) against the official dense KL,
    on padded rows, with the spindle term and a model that puts no mass on [MASK] (SUBS)."""
    g = torch.Generator().manual_seed(t_off)
    T, V, MASK, PAD = 64, 12, 1, 0
    B, L = 4, 7
    weight = torch.rand(V, generator=g)
    weight[PAD] = 0.0
    sched = SpindleSchedule(DiscreteSchedule(MutualSchedule(), T, max_beta=1.0), weight, lam=LAM, pad_id=PAD)
    proc = AbsorbingProcess(sched, MASK, hybrid_lambda=0.01)
    x0 = torch.randint(2, V, (B, L), generator=g)
    lengths = torch.tensor([7, 5, 3, 6])
    valid = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
    x0 = x0.masked_fill(~valid, PAD)
    t = torch.full((B,), (t_off + 1) / T)  # textdiff's time of x_{t+1}; the loss is L_t (official index)
    xt = proc.q_sample(x0, t, keep=~valid, generator=g)
    logits = torch.randn(B, L, V, generator=g) * 2
    logits[..., MASK] = float("-inf")
    ours = proc.loss(logits, x0, xt, t, mask=valid)["loss"].sum().item()
    f = weight[x0].double()
    f_centred = torch.stack([(f[b] - f[b][valid[b]].mean()) * valid[b] for b in range(B)])  # pad_sequence: 0
    official = _official_d3pm_loss(logits, x0, xt, t_off, T, f_centred, 0.01, MASK, valid)
    assert ours == pytest.approx(official, rel=1e-4, abs=1e-6)


def _official_reveal_probs(x0_logp, u, mask_id, temperature, top_k):
    """``discrete_diffusion_predict_fn`` at a masked position: logits log(u p_v) for tokens and log(1 - u) for
    [MASK], divided by the temperature, then ``top_k_top_p_filtering`` (keep the k largest), then softmax."""
    logits = x0_logp.double() + math.log(u)
    logits[mask_id] = math.log1p(-u)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, -1)


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.5, 3), (0.1, None)])
def test_posterior_filter_samples_the_official_reveal_posterior(temperature, top_k):
    """With ``posterior_filter`` a masked position is drawn from the official joint categorical over
    {tokens, stay [MASK]} after the temperature and top-k, so the filter also changes the reveal rate."""
    V, MASK, n = 6, 0, 40000
    T = 8
    proc = AbsorbingProcess(DiscreteSchedule(MutualSchedule(), T, max_beta=1.0), MASK)
    p = torch.tensor([0.0, 0.5, 0.2, 0.15, 0.1, 0.05])
    x0_logp = torch.log(p).expand(n, 1, V).clone()
    xt = torch.full((n, 1), MASK)
    t, s = torch.full((n,), 5 / 8), torch.full((n,), 4 / 8)
    u = 1 / 5  # (abar_s - abar_t) / (1 - abar_t) = (4/8 - 3/8) / (5/8)
    assert torch.allclose(proc.unmask_prob(t[:1], s[:1], xt[:1]), torch.tensor([[u]]))
    filt = LogitFilter(temperature=temperature, top_k=top_k)
    out = proc.reverse_step(xt, x0_logp, t, s, eta=1.0, generator=torch.Generator().manual_seed(0),
                            posterior_filter=filt)[:, 0]
    freq = torch.bincount(out, minlength=V).double() / n
    official = _official_reveal_probs(torch.log(p), u, MASK, temperature, top_k)
    assert torch.allclose(freq, official, atol=0.008), (freq, official)
    if temperature < 1:  # the temperature moves mass onto "stay masked" (1 - u > u p_v for every v)
        assert official[MASK] > 1 - u


def test_shipped_defaults_are_the_official_ones(preset, tmp_path):
    """``model=diffusion_bert`` as shipped: one t per batch, fixed-length samples, the filter on the reveal
    posterior, the bound at K = T / 4 (``eval_step_size=4``), the spindle mean without the frame."""
    cfg = preset(["model=diffusion_bert", "schedule=spindle", "sampler=absorbing", "diffusion_steps=2048",
                  "data=tatoeba_en"], tmp_path)
    node = cfg.model
    assert (node.t_sharing, node.length_mode, node.filter_on, node.nll_step_size) == ("batch", "fixed", "posterior", 4)
    assert node.nll_steps is None and node.process.hybrid_lambda == 0.01 and node.process.loss_type == "d3pm"
    assert cfg.sampler.num_steps == 128 and cfg.sampler.spacing == "even"


def test_preset_model_uses_the_official_bound_and_batch_time(tatoeba_preset):
    cfg, dm, model = tatoeba_preset
    assert model.t_sharing == "batch" and torch.unique(model.sample_t(16)).numel() == 1
    assert model.bound_steps() == 512 == cfg.diffusion_steps // 4
    assert set(model.process.schedule.ignore_ids) == {dm.tokenizer.pad_id, dm.tokenizer.bos_id, dm.tokenizer.eos_id}
    batch = next(iter(dm.test_dataloader()))
    out = model.nll_bound({k: v[:2] for k, v in batch.items()}, num_steps=8)
    assert out["steps"].tolist() == [8.0, 8.0] and torch.isfinite(out["nll"]).all()

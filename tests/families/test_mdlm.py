"""MDLM: the loss weight and loss against the official formulas (kuleshov-group/mdlm ``noise_schedule.py``
``LogLinearNoise``, ``diffusion.py`` ``_subs_parameterization`` / ``_forward_pass_diffusion`` / ``_sample_t``), SUBS,
stratified times, the frame, the ELBO bound, sampling with the cache, and the shipped presets (the CPU ones train
two steps, sample and score; the GPU ones build with local stand-ins for the hub)."""
import math
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf, open_dict

from textdiff.core import AbsorbingProcess, LogLinearSchedule, Sampler, discretize
from textdiff.core.types import pad_sequences
from textdiff.families import MDLM, DiffusionBERT
from textdiff.nn.bert import TimeConditionedBert

V, PAD, BOS, EOS, MASK = 30, 0, 2, 3, 4
EPS = 1e-3
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 20, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _model(time_mode="none", steps=16, T=None, loss_type="weighted_ce", **kw):
    torch.manual_seed(0)
    proc = AbsorbingProcess(discretize(LogLinearSchedule(EPS), T, max_beta=1.0), mask_id=MASK, loss_type=loss_type)
    return MDLM(TimeConditionedBert(TINY, time_mode=time_mode, num_steps=1000, vocab_size=V), proc, pad_id=PAD,
                bos_id=BOS, eos_id=EOS, max_len=12, sampler=partial(Sampler, num_steps=steps, spacing="even", eta=1.0),
                **kw)


def _corpus(n=64, lengths=(3, 5, 8)):
    g = torch.Generator().manual_seed(1)
    return [[BOS, *torch.randint(5, V, (lengths[i % len(lengths)],), generator=g).tolist(), EOS] for i in range(n)]


def _batch(seqs):
    ids, mask = pad_sequences(seqs, PAD, 12)
    return {"ids": ids, "mask": mask}


# ----- the official formulas, restated from kuleshov-group/mdlm (read, not copied) -----
def official_sigma(t):
    """``LogLinearNoise.total_noise``: sigma(t) = -log(1 - (1 - eps) t)."""
    return -torch.log1p(-(1 - EPS) * t)


def official_dsigma(t):
    """``LogLinearNoise.rate_noise``: sigma'(t) = (1 - eps) / (1 - (1 - eps) t)."""
    return (1 - EPS) / (1 - (1 - EPS) * t)


def official_loss(logits, x0, xt, t, attention_mask):
    """``_subs_parameterization`` then the continuous-time branch of ``_forward_pass_diffusion``, summed over the
    attention mask (``_loss``): -log p_subs(x0 | x_t) * dsigma / expm1(sigma). Returns the per-sequence sums (B,)."""
    logits = logits.clone().double()
    logits[:, :, MASK] += -1e6
    logits = logits - torch.logsumexp(logits, -1, keepdim=True)
    unmasked = xt != MASK
    logits[unmasked] = -1e6
    logits[unmasked, xt[unmasked]] = 0.0
    logp = logits.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    t = t.double()
    return (-logp * (official_dsigma(t) / torch.expm1(official_sigma(t)))[:, None] * attention_mask).sum(-1)


# ----- schedule and loss -----
def test_loss_weight_is_the_official_one():
    """MDLM eq. 10's weight -abar'/(1 - abar) of the log-linear schedule is the official dsigma / expm1(sigma), which
    is exactly 1/t (not the rate dsigma = (1 - eps)/(1 - (1 - eps) t)); the masking probability 1 - abar(t) is the
    official move_chance 1 - exp(-sigma)."""
    sched = LogLinearSchedule(EPS)
    t = torch.tensor([1e-3, 0.01, 0.1, 0.37, 0.5, 0.9, 0.999, 1.0], dtype=torch.float64)
    official = official_dsigma(t) / torch.expm1(official_sigma(t))
    torch.testing.assert_close(sched.loss_weight(t), official, rtol=1e-9, atol=0)
    torch.testing.assert_close(sched.loss_weight(t), 1 / t, rtol=1e-9, atol=0)
    # float32: 1 - abar = (1 - eps) t loses ~3e-5 relative at t = 1e-3 (the official expm1 form keeps it)
    torch.testing.assert_close(sched.loss_weight(t.float()), (1 / t).float(), rtol=1e-4, atol=0)
    assert not torch.allclose(sched.loss_weight(t), official_dsigma(t))  # the rate is not the weight
    torch.testing.assert_close(1 - sched.alpha_bar(t), 1 - torch.exp(-official_sigma(t)), rtol=1e-12, atol=1e-15)
    # the reveal probability of a step t -> s is the official ddpm_caching_update's (t - s) / t
    proc = AbsorbingProcess(sched, mask_id=MASK, loss_type="weighted_ce")
    tt, ss = torch.tensor([0.9, 0.5, 0.01]), torch.tensor([0.8, 0.25, 0.0])
    torch.testing.assert_close(proc.unmask_prob(tt, ss, torch.zeros(3, 1, dtype=torch.long)).squeeze(1),
                               (tt - ss) / tt)


def test_training_loss_is_the_official_token_mean():
    """``compute_loss`` = the official ``_loss``: sum over the batch of the SUBS CE weighted by dsigma / expm1(sigma)
    over the attention mask, divided by the number of tokens (official diffuse_padding/keep_special defaults)."""
    m = _model()
    batch = _batch(_corpus(16))
    ids = batch["ids"]
    torch.manual_seed(3)
    terms = m.compute_loss(batch)
    torch.manual_seed(3)  # the same draws again: t (sample_t), then the masks (q_sample)
    t = m.sample_t(16)
    xt = m.process.q_sample(ids, t, keep=m.noise_keep(ids))
    assert ((xt == MASK) & (ids == PAD)).any() and ((xt == MASK) & (ids == BOS)).any()  # PAD/BOS diffused too
    attention = (ids != PAD).double()
    expected = official_loss(m.network(xt, t), ids, xt, t, attention).sum() / attention.sum()
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["nll"].item() == pytest.approx(expected.item(), rel=1e-5)
    terms["loss"].backward()


def test_subs_gives_mask_zero_probability_and_carries_revealed_tokens():
    proc = _model().process
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 12, V, generator=g) * 3
    x0 = torch.randint(5, V, (4, 12), generator=g)
    xt = torch.where(torch.rand(4, 12, generator=g) < 0.5, torch.full_like(x0, MASK), x0)
    logp = proc.to_x0(logits, xt, torch.full((4,), 0.5))
    assert torch.all(logp[..., MASK] == float("-inf"))  # zero masking probability
    revealed = xt != MASK
    assert torch.equal(logp[revealed].argmax(-1), xt[revealed]) and torch.all(logp[revealed].max(-1).values == 0)
    masked = logp[~revealed].exp()
    torch.testing.assert_close(masked.sum(-1), torch.ones(masked.shape[0]))
    without_mask = logits.index_fill(-1, torch.tensor([MASK]), float("-inf")).softmax(-1)
    torch.testing.assert_close(masked, without_mask[~revealed])
    # the loss reads the masked positions only: other logits at revealed positions change nothing
    t = torch.full((4,), 0.5)
    other = logits.clone()
    other[revealed] = torch.randn(int(revealed.sum()), V, generator=g)
    assert torch.equal(proc.loss(logits, x0, xt, t)["diffusion"], proc.loss(other, x0, xt, t)["diffusion"])


def test_training_times_are_stratified_in_eps_to_one():
    m = _model()
    n = 16
    lo = EPS + (1 - EPS) * torch.arange(n) / n
    hi = EPS + (1 - EPS) * (torch.arange(n) + 1) / n
    draws = torch.stack([m.sample_t(n) for _ in range(200)])
    assert torch.all((draws >= lo) & (draws < hi))  # one t in each of the n strata of [eps, 1]
    assert draws.mean().item() == pytest.approx((1 + EPS) / 2, abs=2e-3)
    assert draws[:, 0].std() < 0.05  # stratified, not i.i.d.
    assert torch.unique(_model(t_sharing="batch").sample_t(8)).numel() == 1
    uniform = _model(time_sampling="uniform")
    iid = torch.stack([uniform.sample_t(n) for _ in range(50)])
    assert iid.min() >= EPS and iid.max() <= 1 and iid[:, 0].std() > 0.2
    grid = _model(T=100).sample_t(64)  # MDLM's discrete-time variant (official T > 0): t on {1/T, ..., 1}
    torch.testing.assert_close(grid * 100, torch.round(grid * 100))
    assert grid.min() >= 0.01


def test_frame_options():
    ids = _batch(_corpus(8))["ids"]
    ones = torch.ones(8)
    official = _model()  # keep_special=False, diffuse_padding=True
    xt = official.process.q_sample(ids, ones, keep=official.noise_keep(ids))
    assert (xt == MASK).float().mean() > 0.99  # at t = 1 every position may be masked, PAD and [CLS]/[SEP] too
    assert torch.equal(official.counted(ids), ids != PAD)
    framed = _model(keep_special=True, diffuse_padding=False)  # DiffusionBERT's frame
    keep = framed.noise_keep(ids)
    assert torch.equal(keep, (ids == PAD) | (ids == BOS) | (ids == EOS))
    xt = framed.process.q_sample(ids, ones, keep=keep)
    assert torch.equal(xt[keep], ids[keep]) and torch.all(xt[~keep] == MASK)
    assert torch.equal(framed.counted(ids), ~keep)


def test_only_the_continuous_time_elbo_is_accepted():
    with pytest.raises(ValueError, match="loss_type must be 'weighted_ce'"):
        _model(T=100, loss_type="d3pm")


# ----- the bound -----
def test_nll_bound_of_a_uniform_model_and_the_tokens_diffusion_bert_counts():
    """Constant logits predict uniformly over the V - 1 tokens that are not [MASK]: each masked token costs ln(V - 1)
    with weight 1/t, and E[# masked | t] = n (1 - eps) t, so the ELBO's expectation is n (1 - eps) ln(V - 1) at
    every t. The bound counts the tokens DiffusionBERT's does (same keep_special), so nats per token compare."""
    m = _model(keep_special=True, diffuse_padding=False)
    for p in m.network.bert.cls.parameters():
        torch.nn.init.zeros_(p)
    seqs = _corpus(64)
    batch = _batch(seqs)
    inner = torch.tensor([len(s) - 2 for s in seqs], dtype=torch.float)
    torch.manual_seed(0)  # the estimate's spread comes from the smallest t (weight 1/t): ~1.5% here (1024 x 8 draws)
    out = m.nll_bound({k: v.repeat(16, 1) for k, v in batch.items()}, num_t=8)
    assert torch.equal(out["tokens"], inner.repeat(16))
    exact = 16 * inner.sum() * (1 - EPS) * math.log(V - 1)
    assert abs(out["nll"].sum() / exact - 1) < 0.05, (out["nll"].sum(), exact)
    out = m.nll_bound(batch)
    db = DiffusionBERT(m.network, AbsorbingProcess(discretize(LogLinearSchedule(EPS), 64, max_beta=1.0), mask_id=MASK),
                       pad_id=PAD, bos_id=BOS, eos_id=EOS, max_len=12)
    assert torch.equal(db.nll_bound(batch, num_steps=2)["tokens"], out["tokens"])
    assert torch.equal(_model().nll_bound(batch)["tokens"], inner + 2)  # official: [CLS]/[SEP] are scored too

    from textdiff.run.evaluation import nll_on_split

    summary = nll_on_split(m, [batch, batch], num_batches=2, num_t=2)
    assert summary["nll"] == pytest.approx((1 - EPS) * math.log(V - 1), rel=0.15) and "nll_steps" not in summary
    assert summary["ppl"] == pytest.approx(math.exp(summary["nll"]))
    assert summary == nll_on_split(m, [batch, batch], num_batches=2, num_t=2)  # seeded: repeatable


def test_elbo_is_finite_and_falls_with_training():
    m = _model(keep_special=True, diffuse_padding=False)
    batch = _batch(_corpus(32, lengths=(4, 6)))

    def bound():
        torch.manual_seed(11)
        out = m.nll_bound(batch, num_t=8)
        return float(out["nll"].sum() / out["tokens"].sum())

    before = bound()
    assert math.isfinite(before) and before > 0
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    m.train()
    for _ in range(60):
        opt.zero_grad()
        loss = m.compute_loss(batch)["loss"]
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    after = bound()
    assert math.isfinite(after) and after < 0.85 * before, (before, after)


# ----- sampling -----
def test_generate_run_reveals_everything_with_fewer_calls_than_steps():
    m = _model(steps=64)
    run = m.generate_run(8, seed=0)
    assert run.ids.shape == (8, 12) and not (run.ids == MASK).any()
    assert ((run.ids != PAD).sum(-1) == 12).all()  # official: fixed length, every position generated
    assert run.nfe < 64 and run.nfe == run.output.row_evals / 8 and run.report()["reuse_unchanged"] is True
    assert run.sampler.timesteps().tolist() == torch.linspace(1, 0, 65, dtype=torch.float64).tolist()
    plain = m.generate_run(8, seed=0, reuse_unchanged=False)
    assert plain.nfe == 64 and not (plain.ids == MASK).any()
    assert torch.equal(run.ids, m.generate(8, seed=0))  # same seed, same samples
    timed = _model(steps=16, time_mode="layerwise").generate_run(4, seed=0)  # time-conditioned: no cache
    assert timed.nfe == 16 and timed.report()["reuse_unchanged"] is False and not (timed.ids == MASK).any()


@pytest.mark.parametrize("options", [{"eta": 0.0}, {"unmask": "confidence"}])
def test_the_cores_sampler_options_apply(options):
    m = _model(steps=8, keep_special=True, diffuse_padding=False)
    ids = m.generate(4, **options, seed=1)
    assert not (ids == MASK).any() and (ids[:, 0] == BOS).all() and (ids[:, -1] == EOS).all()


def test_sampled_lengths_and_checkpoint_round_trip():
    m = _model(length_mode="sample", keep_special=True, diffuse_padding=False)
    m.set_corpus_statistics(_corpus())
    ids = m.generate(6, seed=2)
    lengths = (ids != PAD).sum(-1)
    assert set(lengths.tolist()) <= {5, 7, 10} and not (ids == MASK).any()
    fresh = _model(length_mode="sample", keep_special=True, diffuse_padding=False)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.generate(6, seed=2), ids)


# ----- the shipped presets -----
def _compose(overrides, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from textdiff.cli.common import CONF_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


@pytest.mark.parametrize("experiment,like", [("mdlm_tatoeba_cpu", "diffusion_bert_tatoeba_cpu"),
                                             ("mdlm_e2e_cpu", "diffusion_bert_e2e_cpu")])
def test_shipped_cpu_preset_trains_two_steps_samples_and_scores(experiment, like, shared_data, tmp_path, one_thread):
    from textdiff.cli.common import build, build_datamodule
    from textdiff.run.evaluation import evaluate_unconditional

    cfg = _compose([f"experiment={experiment}", "data.max_train_examples=300", "data.max_eval_examples=64"],
                   tmp_path)
    ref = _compose([f"experiment={like}"], tmp_path)  # the budget it shares with DiffusionBERT's preset
    for key in ("data.max_len", "data.batch_size", "data.tokenizer", "data.padding", "model.network.bert",
                "model.length_mode", "model.keep_special", "model.optimizer.lr", "sampler.num_steps", "sampler.eta",
                "trainer.max_steps", "trainer.gradient_clip_val", "eval.num_samples", "eval.nll_batches"):
        assert OmegaConf.select(cfg, key) == OmegaConf.select(ref, key), key
    dm = build_datamodule(cfg, tmp_path)
    model = build(cfg, "model")
    assert isinstance(model, MDLM) and isinstance(model.process.schedule, LogLinearSchedule)
    assert model.network.time_mode == "none" and model.network.hidden_size == 128
    assert (model.time_sampling, model.time_eps, model.ema_decay) == ("antithetic", 1e-3, 0.9999)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2 and model.length_counts.sum() > 0
    sampler = model.build_sampler()
    assert sampler.num_steps == 128 and sampler.reuse_unchanged
    records, metrics = evaluate_unconditional(model, dm, num_samples=4, batch_size=4, nll_batches=1, nll_num_t=1)
    assert len(records) == 4 and math.isfinite(metrics["nll"]) and metrics["ppl"] > 1
    assert metrics["sampler"]["nfe_per_sequence"] < 128 and metrics["sampler"]["spacing"] == "even"
    run = model.generate_run(4, seed=0)
    assert not (run.ids == model.process.mask_id).any()


def _local_bert_tokenizer(root):
    from transformers import BertTokenizerFast

    words = "the a of to and is in it you that he was for on are with as i his they be at".split()
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate((root / "vocab.txt").read_text().split())})
    tok.save_pretrained(root / "tokenizer")
    return root / "tokenizer"


@pytest.mark.parametrize("experiment,max_len,padding,steps", [("mdlm_lm1b", 128, "pad", 128),
                                                              ("mdlm_owt", 1024, "block", 1000)])
def test_gpu_presets_build_with_local_stand_ins(experiment, max_len, padding, steps, tmp_path):
    """The paper-scale presets, with the hub tokenizer replaced by a local one and the network shrunk: the
    official settings are there and the model builds."""
    from textdiff.cli.common import build, build_datamodule

    cfg = _compose([f"experiment={experiment}"], tmp_path)
    assert (cfg.global_batch_size, cfg.trainer.max_steps, cfg.trainer.precision) == (512, 1_000_000, "bf16-mixed")
    assert (cfg.data.max_len, cfg.data.padding, cfg.sampler.num_steps) == (max_len, padding, steps)
    assert (cfg.model.optimizer.lr, cfg.model.lr_scheduler.warmup_steps, cfg.model.ema_decay) == (3e-4, 2500, 0.9999)
    assert (cfg.model.keep_special, cfg.model.diffuse_padding, cfg.model.length_mode) == (False, True, "fixed")
    assert cfg.model.network.bert.hidden_size == 768 and cfg.model.network.bert.num_hidden_layers == 12
    hub = OmegaConf.select(cfg, "data.tokenizer")
    assert hub == "bert-base-uncased" if experiment == "mdlm_lm1b" else hub.name_or_path == "gpt2"
    with open_dict(cfg):
        cfg.data.tokenizer = str(_local_bert_tokenizer(tmp_path / "stand_in"))
        cfg.model.network.bert.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    build_datamodule(cfg, tmp_path)
    model = build(cfg, "model")
    assert isinstance(model, MDLM) and model.max_len == max_len and model.network.max_len == max_len
    assert model.build_sampler().num_steps == steps


def test_owt_tokenizer_appends_a_mask(tmp_path):
    """The OWT preset's tokenizer spec adds [MASK] as a new id to a tokenizer that has none (GPT-2; official:
    mask id = vocab size), shown on a local GPT-2-like byte-level BPE."""
    from hydra.utils import instantiate
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    bpe.train_from_iterator(["the cat sat on the mat"] * 20, trainers.BpeTrainer(vocab_size=300,
                                                                                 special_tokens=["<|endoftext|>"]))
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(tmp_path / "gpt2like")
    spec = _compose(["experiment=mdlm_owt"], tmp_path).data.tokenizer
    with open_dict(spec):
        spec.name_or_path = str(tmp_path / "gpt2like")
    tok = instantiate(spec)
    assert tok.mask_id == tok.vocab_size - 1 and tok.mask_id not in (tok.bos_id, tok.eos_id, tok.pad_id)

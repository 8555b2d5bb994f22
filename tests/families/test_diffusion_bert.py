"""DiffusionBERT: the frame (PAD/BOS/EOS never masked), corpus statistics, sampling invariants, the
cache, the bound, checkpoints, and learning on real text (Tatoeba)."""
import math
from functools import partial
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from textdiff.core import AbsorbingProcess, DiscreteSchedule, GaussianProcess, MutualSchedule, Sampler, SpindleSchedule
from textdiff.core.schedules import SqrtSchedule, discretize
from textdiff.data import TextDataModule, build_word_tokenizer
from textdiff.core.types import pad_sequences
from textdiff.families import DiffusionBERT
from textdiff.nn.bert import TimeConditionedBert

V, PAD, BOS, EOS, MASK = 30, 0, 2, 3, 4
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 20, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _model(spindle=True, time_mode="none", T=64, steps=16, vocab=V, mask_id=MASK, **kw):
    torch.manual_seed(0)
    base = discretize(MutualSchedule(), T, max_beta=1.0)
    sched = SpindleSchedule(base, pad_id=PAD) if spindle else base
    return DiffusionBERT(TimeConditionedBert(TINY, time_mode=time_mode, num_steps=T, vocab_size=vocab),
                         AbsorbingProcess(sched, mask_id=mask_id, hybrid_lambda=0.01),
                         pad_id=PAD, bos_id=BOS, eos_id=EOS, max_len=12,
                         sampler=partial(Sampler, num_steps=steps, eta=1.0), **kw)


def _corpus(n=200, lengths=(3, 5)):
    g = torch.Generator().manual_seed(1)
    return [[BOS, *torch.randint(5, V, (lengths[i % len(lengths)],), generator=g).tolist(), EOS] for i in range(n)]


def _batch(seqs):
    ids, mask = pad_sequences(seqs, PAD, 12)
    return {"ids": ids, "mask": mask}


def test_wrong_process_or_mask_id_is_rejected():
    bb = TimeConditionedBert(TINY, vocab_size=V)
    with pytest.raises(TypeError, match="AbsorbingProcess"):
        DiffusionBERT(bb, GaussianProcess(DiscreteSchedule(SqrtSchedule(), 10)), pad_id=PAD, bos_id=BOS, eos_id=EOS)
    with pytest.raises(ValueError, match="mask_id=99"):
        _model(mask_id=99)
    with pytest.raises(ValueError, match="max_len=40"):
        DiffusionBERT(bb, AbsorbingProcess(discretize(MutualSchedule(), 8, max_beta=1.0), mask_id=MASK),
                      pad_id=PAD, bos_id=BOS, eos_id=EOS, max_len=40)


def test_corpus_statistics_and_cache(tmp_path):
    m = _model()
    seqs = _corpus()
    cache = tmp_path / "word_freq.pt"
    m.set_corpus_statistics(seqs, str(cache))
    f = m.process.schedule.token_weight
    assert f.shape == (V,) and f[PAD] == 0 and f.max() == 1.0
    assert f[BOS] == 1.0  # BOS/EOS occur in every sequence: the most frequent
    assert m.length_counts[5].item() == 100 and m.length_counts[7].item() == 100 and m.length_counts.sum() == 200
    saved = torch.load(cache, weights_only=True)
    saved["counts"] = saved["counts"] * 0 + 7  # the cache is read when it matches the corpus
    torch.save(saved, cache)
    m.set_corpus_statistics(seqs, str(cache))
    assert torch.all(m.process.schedule.token_weight[1:] == 1.0)
    m.set_corpus_statistics(seqs[:-1], str(cache))  # another corpus: recomputed
    assert m.process.schedule.token_weight[5:].min() < 1.0


def test_setup_counts_on_the_datamodules_statistics_sample(tmp_path):
    """A streamed corpus (StreamingTextDataModule) hands out a sample for the statistics: setup uses it and
    never iterates the training dataset itself."""
    class StreamLike:
        tokenizer_path = str(tmp_path)

        def statistics_sequences(self):
            return _corpus()

        def dataset(self, split):
            raise AssertionError("setup iterated the whole training stream")

    m = _model()
    m._trainer = SimpleNamespace(datamodule=StreamLike())
    m.setup("fit")
    ref = _model()
    ref.set_corpus_statistics(_corpus())
    assert torch.equal(m.length_counts, ref.length_counts) and m.length_counts.sum() == 200
    assert torch.equal(m.process.schedule.token_weight, ref.process.schedule.token_weight)
    assert (tmp_path / "word_freq.pt").is_file()


def test_loss_never_masks_the_frame_and_batch_t_is_shared():
    m = _model(t_sharing="batch")
    seqs = _corpus(8)
    m.set_corpus_statistics(seqs)
    batch = _batch(seqs)
    assert torch.unique(m.sample_t(8)).numel() == 1
    keep = m.keep_mask(batch["ids"])
    for _ in range(5):
        xt = m.process.q_sample(batch["ids"], torch.ones(8), keep=keep)
        assert torch.equal(xt[keep], batch["ids"][keep]) and (xt[~keep] == MASK).all()
    terms = m.compute_loss(batch)
    assert torch.isfinite(terms["loss"]) and terms["loss"] > 0
    terms["loss"].backward()


@pytest.mark.parametrize("time_mode", ["none", "token", "layerwise"])
def test_samples_keep_frame_lengths_and_never_remask(time_mode):
    m = _model(time_mode=time_mode, length_mode="sample")
    m.set_corpus_statistics(_corpus())
    official = _model(time_mode=time_mode)
    official.set_corpus_statistics(_corpus())
    fixed = official.generate(3, seed=3)  # the official default: every sample fills L
    assert ((fixed != PAD).sum(-1) == 12).all() and (fixed[:, 0] == BOS).all() and (fixed[:, -1] == EOS).all()
    ids = m.generate(6, seed=3)
    assert not (ids == MASK).any()
    lengths = (ids != PAD).sum(-1)
    assert set(lengths.tolist()) <= {5, 7}  # drawn from the training histogram
    assert (ids[:, 0] == BOS).all() and torch.equal(ids.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1),
                                                    torch.full((6,), EOS))
    inner = ids[:, 1:][(torch.arange(1, 12).unsqueeze(0) < (lengths - 1).unsqueeze(1))]
    assert not torch.isin(inner, torch.tensor([PAD, BOS, EOS, MASK])).any()
    assert torch.equal(ids, m.generate(6, seed=3))  # same seed, same samples
    # revealed tokens never change along the chain
    traj = m.build_sampler().sample(lambda x, t, sc: m.denoise(x, t), (4, 12),
                                    x_init=m.initial_state(torch.full((4,), 7), 12),
                                    generator=torch.Generator().manual_seed(0), keep_trajectory=True).trajectory
    for a, b in zip(traj, traj[1:]):
        revealed = a != MASK
        assert torch.equal(a[revealed], b[revealed])


def test_reuse_cache_is_exact_and_saves_calls():
    m = _model(T=64, steps=64)
    m.set_corpus_statistics(_corpus())
    run_a = m.generate_run(8, seed=0, reuse_unchanged=False)
    run_b = m.generate_run(8, seed=0)
    assert (run_a.ids == run_b.ids).float().mean() > 0.95  # sub-batch matmuls may round differently
    assert run_a.output.row_evals == 64 * 8 and run_b.output.row_evals < 64 * 8 / 4
    assert run_a.nfe == 64 and run_b.nfe == run_b.output.row_evals / 8
    assert run_b.report()["reuse_unchanged"] is True and run_a.report()["reuse_unchanged"] is False
    with pytest.raises(ValueError, match="top_k"):
        m.generate(2, top_k=0)


def test_nll_bound_of_a_uniform_model():
    """A network with constant logits predicts uniformly over the V - 1 non-[MASK] tokens, so each
    step adds w ln(V - 1) per masked token; over the chain the unmasking weights of a plain schedule
    sum to one per token in expectation, so the bound's expectation is n ln(V - 1) for any K."""
    m = _model(spindle=False, T=64)
    for p in m.network.bert.cls.parameters():
        torch.nn.init.zeros_(p)
    seqs = _corpus(64)
    batch = _batch(seqs)
    inner = torch.tensor([len(s) - 2 for s in seqs], dtype=torch.float)
    exact = inner.sum() * math.log(V - 1)
    for K, draws in ((2, 16), (16, 4)):
        out = m.nll_bound(batch, num_steps=K, num_t=draws)
        assert torch.equal(out["tokens"], inner)
        assert abs(out["nll"].sum() / exact - 1) < 0.05, (K, out["nll"].sum(), exact)


def test_kl_step_is_nonnegative_with_the_spindle():
    m = _model()
    m.set_corpus_statistics(_corpus())
    ids = _batch(_corpus(16))["ids"]
    keep = m.keep_mask(ids)
    for k in (0.9, 0.5, 0.1):
        t, s = torch.full((16,), k), torch.full((16,), k - 1 / 64)
        xt = m.process.q_sample(ids, t, keep=keep)
        logp = m.process.to_x0(torch.randn(16, 12, V) * 3, xt, t)
        assert (m.process.kl_step(logp, ids, xt, t, s, ~keep) >= -1e-5).all()


def test_state_dict_round_trip_carries_statistics():
    m = _model()
    m.set_corpus_statistics(_corpus())
    fresh = _model()  # empty token weights and length histogram
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.length_counts, m.length_counts)
    assert torch.equal(fresh.generate(5, seed=1), m.generate(5, seed=1))


def test_loss_falls_on_tatoeba_and_checkpoint_reloads(shared_data, tmp_path):
    root = shared_data / "tatoeba_en"
    dm = TextDataModule(train_path=str(root / "train.txt"), test_path=str(root / "test.txt"), max_len=16,
                        batch_size=32, max_train_examples=4000, max_eval_examples=64,
                        tokenizer=partial(build_word_tokenizer, min_count=3, add_mask_token=True),
                        tokenizer_path=str(tmp_path / "tok"), seed=0)
    tok = dm.build_tokenizer()
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))

    def make():
        torch.manual_seed(0)
        bb = TimeConditionedBert({**TINY, "hidden_size": 64, "intermediate_size": 128}, vocab_size=tok.vocab_size,
                                 num_steps=128)
        proc = AbsorbingProcess(SpindleSchedule(discretize(MutualSchedule(), 128, max_beta=1.0), pad_id=tok.pad_id),
                                mask_id=tok.mask_id, hybrid_lambda=0.01)
        return DiffusionBERT(bb, proc, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id, max_len=16,
                             sampler=partial(Sampler, num_steps=16, eta=1.0),
                             optimizer=partial(torch.optim.AdamW, lr=2e-3))

    model = make()
    model.set_corpus_statistics([item["ids"] for item in dm.dataset("train")])
    torch.manual_seed(5)
    before = model.nll_bound(batch, num_steps=16)
    trainer = pl.Trainer(accelerator="cpu", max_steps=150, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    torch.manual_seed(5)
    after = model.nll_bound(batch, num_steps=16)
    per_tok = lambda out: float(out["nll"].sum() / out["tokens"].sum())  # noqa: E731
    assert per_tok(after) < 0.8 * per_tok(before), (per_tok(before), per_tok(after))
    assert (tmp_path / "tok" / "word_freq.pt").exists() is False  # statistics were already set: no recount

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = make()
    reloaded.load_weights(str(path))
    assert torch.equal(model.generate(6, seed=7), reloaded.generate(6, seed=7))


@pytest.mark.parametrize("spindle", [True, False])
def test_continuous_time_weighted_ce_loss(spindle):
    m = _model(spindle=spindle)
    m.process.loss_type = "weighted_ce"
    seqs = _corpus(8)
    m.set_corpus_statistics(seqs)
    terms = m.compute_loss(_batch(seqs))
    assert torch.isfinite(terms["loss"]) and terms["diffusion"] > 0

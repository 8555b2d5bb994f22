"""The degenerate reference rows of the comparison tables (``DegenerateReference``), built from the shipped entrants
(conf/experiment/compare_tatoeba_reference_*_cpu.yaml) on the real Tatoeba split: "frequent" repeats the commonest
training sentences (memorisation 1.0), "unigram" draws lengths from the training lengths and tokens from the training
unigram ** (1 / T); seeded; and a textdiff-train -> last.ckpt -> textdiff-sample round trip."""
import json
from collections import Counter

import pytest
import pytorch_lightning as pl
import torch

from textdiff.families import DegenerateReference
from textdiff.families.interface import BuildsSampler, Generates, HasBound
from tests.cli.test_train_cli import _run

PAD, UNK, BOS, EOS = 0, 1, 2, 3
pytestmark = pytest.mark.filterwarnings("ignore:.*configure_optimizers.* returned .None.")  # no optimiser: meant
SMALL = ["data.max_train_examples=20000", "data.max_eval_examples=200"]


def _shipped(mode, tmp_path):
    """The shipped CPU entrant at the Tatoeba comparison's budget, on the first 20,000 training sentences."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from textdiff.cli.common import CONF_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            f"experiment=compare_tatoeba_reference_{mode}_cpu", "compare=tatoeba_cpu",
            f"compare.tokenizer={tmp_path / 'tokenizer'}", "compare.ld4lg_autoencoder=null", *SMALL])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, shared_data):
    """``mode -> (model, datamodule)``: each shipped entrant built and fitted by a Lightning Trainer (the statistics are
    counted in ``setup``; the fit stops before its first step)."""
    from textdiff.cli.common import build, build_datamodule

    tmp = tmp_path_factory.mktemp("reference")
    out = {}
    for mode in ("frequent", "unigram"):
        cfg = _shipped(mode, tmp)
        dm = build_datamodule(cfg, tmp / mode)
        model = build(cfg, "model")
        trainer = pl.Trainer(accelerator="cpu", max_steps=cfg.trainer.max_steps, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, datamodule=dm)
        assert trainer.global_step == 0 and model.fitted and not list(model.parameters())
        out[mode] = (model, dm)
    return out


def _content(row, L):
    """Tokens between BOS and the first EOS of one framed row (n,) of ids."""
    row = row.tolist()
    assert row[0] == BOS and EOS in row and all(i == PAD for i in row[row.index(EOS) + 1:])
    return row[1:row.index(EOS)]


def test_shipped_entrants_and_what_they_offer(fitted):
    freq, uni = fitted["frequent"][0], fitted["unigram"][0]
    assert (freq.mode, freq.top_n, uni.mode, uni.temperature) == ("frequent", 10, "unigram", 0.5)
    for model in (freq, uni):
        assert isinstance(model, Generates) and not model.conditional
        assert not isinstance(model, (HasBound, BuildsSampler))  # no bound, no sampler: no NLL, no K sweep


def test_frequent_mode_repeats_the_commonest_training_sentences(fitted):
    """Tatoeba's sentences are all unique: the ten commonest are the first ten without [UNK], in turn; decoded, they
    are training sentences (memorisation 1.0 through score_unconditional), with no diversity (self-BLEU 100)."""
    from textdiff.run.evaluation import evaluate_unconditional

    model, dm = fitted["frequent"]
    tok, L = dm.tokenizer, model.max_len
    texts = dm.texts("train")
    encoded = [tuple(tok.encode(t)[:L - 2]) for t in texts]
    assert Counter(e for e in encoded if UNK not in e).most_common(1)[0][1] == 1  # ties everywhere
    expected = [t for t, e in zip(texts, encoded) if UNK not in e][:10]
    run = model.generate_run(25, seed=0)
    assert run.ids.shape == (25, L) and run.details == {"mode": "frequent", "top_n": 10} and run.sampler is None
    got = [tok.decode(_content(row, L)) for row in run.ids]
    assert got == [tok.decode(tok.encode(expected[i % 10])) for i in range(25)]
    records, metrics = evaluate_unconditional(model, dm, num_samples=40, batch_size=16)
    assert [r["text"] for r in records[:10]] == got[:10]
    assert metrics["memorization"] == 1.0 and metrics["self_bleu"] == pytest.approx(100.0)
    assert "nll" not in metrics and "sampler" not in metrics


def test_frequent_ranking_ties_and_unk():
    """Counts first, then the first met; sentences with [UNK] are left out unless skip_unk=False; fewer sentences
    than top_n are cycled as they are; a shorter seq_len cuts them, EOS last."""
    a, b, c, d, e = [5, 6, 7], [8, 9], [10], [11, UNK, 12], [13, 14, 15, 16]
    seqs = [[BOS, *s, EOS] for s in [a, b, d, a, e, b, d, c, b, d, e, d, d]]  # a 2, b 3, c 1, d 5 ([UNK]), e 2
    model = DegenerateReference(vocab_size=20, max_len=8, pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK,
                                mode="frequent", top_n=3)
    model.fit_statistics(seqs)
    assert model.sentence_counts.tolist() == [3, 2, 2]
    ids = model.generate(7)
    assert [_content(r, 8) for r in ids] == [b, a, e, b, a, e, b]
    assert ids[0].tolist() == [BOS, 8, 9, EOS, PAD, PAD, PAD, PAD]
    assert model.generate(2, seq_len=4)[1].tolist() == [BOS, 5, 6, EOS]  # a, cut to two tokens
    assert model.generate(1, seq_len=10).shape == (1, 10)
    keep = DegenerateReference(vocab_size=20, max_len=8, pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK,
                               mode="frequent", top_n=10, skip_unk=False)
    keep.fit_statistics(seqs)
    assert [_content(r, 8) for r in keep.generate(5)] == [d, b, a, e, c]
    assert keep.token_counts[[PAD, BOS, EOS]].sum() == 0 and keep.token_counts[5] == 2
    assert keep.length_counts.tolist() == [0, 1, 3, 7, 2, 0, 0]  # content lengths 0 .. L - 2


def test_unigram_mode_draws_the_tempered_unigram_and_training_lengths(fitted):
    """Over 4,000 seeded samples, token frequencies match count ** (1 / T) normalised (T = 0.5, and T = 1 given to
    generate_run), and lengths match the training lengths (only lengths seen in training are drawn)."""
    model, dm = fitted["unigram"]
    tok, L = dm.tokenizer, model.max_len
    encoded = [tok.encode(t)[:L - 2] for t in dm.texts("train")]
    counts = torch.bincount(torch.tensor([i for e in encoded for i in e]), minlength=tok.vocab_size).double()
    lengths = torch.bincount(torch.tensor([len(e) for e in encoded]), minlength=L - 1).double()
    assert torch.equal(model.token_counts.double(), counts) and torch.equal(model.length_counts.double(), lengths)
    n = 4000
    for T in (0.5, 1.0):
        run = model.generate_run(n, seed=1, temperature=None if T == 0.5 else T)
        assert run.details == {"mode": "unigram", "temperature": T}
        rows = [_content(r, L) for r in run.ids]
        drawn = torch.tensor([i for r in rows for i in r])
        freq = torch.bincount(drawn, minlength=tok.vocab_size).double() / len(drawn)
        p = counts ** (1 / T) / (counts ** (1 / T)).sum()
        torch.testing.assert_close(model.unigram_probs(T), p)
        top = p.topk(50).indices  # 98% of the mass at T = 0.5, 56% at T = 1; the rest in one bin
        binned = [torch.cat([f[top], (1 - f[top].sum()).view(1)]) for f in (freq, p)]
        assert 0.5 * (binned[0] - binned[1]).abs().sum() < 0.025  # total variation: ~0.01 from sampling alone
        top = top[:20]  # the commonest tokens one by one, within 4.5 standard errors
        assert ((freq[top] - p[top]).abs() <= 4.5 * (p[top] * (1 - p[top]) / len(drawn)).sqrt()).all()
        got = torch.bincount(torch.tensor([len(r) for r in rows]), minlength=L - 1).double()
        assert (got[lengths == 0] == 0).all()
        q = lengths / lengths.sum()
        assert 0.5 * (got / n - q).abs().sum() < 0.045  # total variation: ~0.02 from sampling alone
    assert p.argmax() == tok.token_to_id["."]


@pytest.mark.parametrize("mode", ["frequent", "unigram"])
def test_same_seed_same_samples(fitted, mode):
    model = fitted[mode][0]
    run = model.generate_run(64, seed=3, batch_size=16)
    assert torch.equal(run.ids, model.generate(64, seed=3, batch_size=64))  # the batch size changes nothing
    assert torch.equal(model.generate(64, seed=4), run.ids) == (mode == "frequent")
    other = model.generate_run(8, seed=3, mode="frequent" if mode == "unigram" else "unigram")
    assert other.details["mode"] != mode  # both modes from the same statistics


def test_unfitted_model_says_so():
    model = DegenerateReference(vocab_size=20, max_len=8, pad_id=PAD, bos_id=BOS, eos_id=EOS)
    with pytest.raises(RuntimeError, match="no statistics"):
        model.generate(2)
    with pytest.raises(ValueError, match="mode"):
        DegenerateReference(vocab_size=20, max_len=8, pad_id=PAD, bos_id=BOS, eos_id=EOS, mode="bigram")


def test_train_checkpoint_reload_sample_round_trip(shared_data, tmp_path):
    """textdiff-train on the shipped entrant (the comparison's 500-step budget: the fit stops at step 0) writes
    last.ckpt with the counts; textdiff-sample reloads it and draws the same samples with the same seed, and the
    other mode from the same checkpoint."""
    run_dir = tmp_path / "run"
    out = _run("train", ["experiment=compare_tatoeba_reference_unigram_cpu", "compare=tatoeba_cpu",
                         f"compare.tokenizer={tmp_path / 'tokenizer'}", "compare.ld4lg_autoencoder=null",
                         "data.max_train_examples=3000", "data.max_eval_examples=100", "eval.num_samples=30",
                         "trainer.enable_progress_bar=false", "logger=csv", f"hydra.run.dir={run_dir}"])
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["global_step"], metrics["trainable_params"], metrics["train_examples"]) == (0, 0, 0)
    assert metrics["num_samples"] > 0 and metrics["memorization"] < 0.5 and "nll" not in metrics
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["textdiff"]["family"] == "DegenerateReference" and ckpt["state_dict"]["token_counts"].sum() > 0
    out = _run("sample", [f"run_dir={run_dir}", "num_samples=30", "suffix=_again"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "samples_again.jsonl").read_text() == (run_dir / "samples.jsonl").read_text()
    out = _run("sample", [f"run_dir={run_dir}", "num_samples=20", "+generate.mode=frequent", "suffix=_frequent"])
    assert out.returncode == 0, out.stderr[-3000:]
    again = json.loads((run_dir / "metrics_frequent.json").read_text())
    assert again["memorization"] == 1.0 and again["gen_mode"] == "frequent"

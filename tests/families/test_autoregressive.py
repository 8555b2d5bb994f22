"""Autoregressive baseline: the loss, memorising pairs, beam search against greedy and brute force,
teacher-forced scores by hand, seeded sampling, usage errors and a Lightning checkpoint round trip; decoding
with the key/value cache against the recomputing reference path (same ids), and min_len."""
import itertools

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from textdiff.families import Autoregressive
from textdiff.nn import ARTransformer

PAD, BOS, EOS = 0, 1, 2


def tiny(vocab=12, enc_depth=1, max_len=10, seed=0, dim=32, **kw):
    torch.manual_seed(seed)
    net = ARTransformer(vocab, dim=dim, enc_depth=enc_depth, dec_depth=1, heads=2, ffn_dim=64, max_len=max_len,
                        max_src_len=10, dropout=0.0)
    return Autoregressive(net, PAD, BOS, EOS, **kw)


def frame(rows, width):
    """Token lists -> BOS row EOS PAD..., (B, width) ids and mask."""
    ids = torch.full((len(rows), width), PAD)
    for i, r in enumerate(rows):
        ids[i, :len(r) + 2] = torch.tensor([BOS, *r, EOS])
    return ids, ids != PAD


SRC, SRC_MASK = frame([[3, 4, 5], [6, 7], [8, 9, 10, 11], [5, 3]], 7)
TGT, TGT_MASK = frame([[5, 4, 3], [7, 6], [11, 10, 9, 8], [3, 5]], 8)  # the reversed sources
PAIRS = {"ids": TGT, "mask": TGT_MASK, "src_ids": SRC, "src_mask": SRC_MASK}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is fastest


@pytest.fixture(scope="module")
def trained():
    """A tiny encoder-decoder after 100 Adam steps on the four pairs, with its losses before/after."""
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = model.compute_loss(PAIRS)
    for _ in range(100):
        loss = model.compute_loss(PAIRS)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.compute_loss(PAIRS)
    return model.eval(), before, after


def greedy(model, src, src_mask, max_len):
    """Greedy decoding written out: argmax (PAD/BOS excluded) until EOS, EOS forced at max_len."""
    memory = model.network.encode(src, src_mask)
    out = []
    for b in range(src.shape[0]):
        seq = [BOS]
        while seq[-1] != EOS:
            logits = model.network.decode(torch.tensor([seq]), memory[b:b + 1], src_mask[b:b + 1])[0, -1]
            logits[[PAD, BOS]] = float("-inf")
            seq.append(EOS if len(seq) == max_len - 1 else int(logits.argmax()))
        out.append(seq)
    return frame([s[1:-1] for s in out], max(len(s) for s in out))[0]


def test_loss_falls_and_nll_is_the_unsmoothed_part(trained):
    _, before, after = trained
    assert after["loss"] < 0.25 * before["loss"], (before, after)
    assert after["nll"] < 0.25 and before["nll"] > 2.0
    m = tiny(label_smoothing=0.0)
    terms = m.compute_loss(PAIRS)
    torch.testing.assert_close(terms["loss"], terms["nll"])


def test_loss_matches_torch_label_smoothing_and_ignores_padding():
    m = tiny(label_smoothing=0.1)
    logits = m.network(TGT[:, :-1], SRC, SRC_MASK)
    target = TGT[:, 1:].masked_fill(~TGT_MASK[:, 1:], -100)
    ref = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, label_smoothing=0.1)
    torch.testing.assert_close(m.compute_loss(PAIRS)["loss"], ref)
    wider = {**PAIRS, "ids": F.pad(TGT, (0, 2), value=PAD), "mask": F.pad(TGT_MASK, (0, 2), value=False)}
    torch.testing.assert_close(m.compute_loss(wider)["loss"], ref)


def test_beam_and_greedy_reproduce_the_memorised_targets(trained):
    model, _, _ = trained
    for beam in (1, 4):
        out = model.generate(SRC, SRC_MASK, beam_size=beam)
        assert torch.equal(out, TGT[:, :6]), (beam, out)  # BOS y EOS PAD..., as wide as the longest


def test_beam_size_one_is_greedy_on_an_untrained_model():
    model = tiny(seed=3).eval()
    src, src_mask = frame([[3, 4, 5, 6], [7], [8, 9, 10], [11, 3, 4, 5, 6]], 8)
    out = model.generate(src, src_mask, beam_size=1, max_len=7)
    assert torch.equal(out, greedy(model, src, src_mask, 7))
    assert out.shape[1] == 7 and torch.all(out[:, 0] == BOS)  # an untrained model runs to the cap


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_exhaustive_beam_finds_the_brute_force_optimum(alpha):
    """Vocab {PAD, BOS, EOS, a, b}, max_len 4: the 7 hypotheses are 0-2 tokens of {a, b} then EOS. A beam
    of 8 never drops a prefix, so it must return the best of the 7 by sum log p / n**alpha."""
    model = tiny(vocab=5, max_len=4, seed=0, dim=16)
    with torch.no_grad():
        model.network.embed.weight.mul_(4.0)  # peakier distributions
    src, src_mask = frame([[3], [4, 3], [3, 3, 4], [4], [4, 4, 4], [3, 4]], 5)
    hyps = [list(h) for n in range(3) for h in itertools.product([3, 4], repeat=n)]
    cand, cand_mask = frame(hyps, 4)
    B, H = src.shape[0], len(hyps)
    s = model.score(cand.repeat(B, 1), cand_mask.repeat(B, 1), src.repeat_interleave(H, 0),
                    src_mask.repeat_interleave(H, 0))
    brute = (s["logprob"] / s["tokens"] ** alpha).view(B, H)
    out, scores = model.generate(src, src_mask, beam_size=8, length_penalty=alpha, return_scores=True)
    torch.testing.assert_close(scores, brute.max(1).values)
    best = cand[brute.argmax(1)]
    assert torch.equal(F.pad(out, (0, 4 - out.shape[1]), value=PAD), best)
    greedy_scores = model.generate(src, src_mask, beam_size=1, length_penalty=alpha, return_scores=True)[1]
    assert torch.any(greedy_scores < scores - 1e-4)  # not a trivial optimum: greedy misses it somewhere


def test_returned_beam_score_is_the_normalised_score_of_the_returned_ids():
    model = tiny(seed=2)
    src, src_mask = frame([[3, 4, 5], [6, 7, 8, 9]], 6)
    for k, alpha in ((2, 1.0), (3, 0.5)):
        out, scores = model.generate(src, src_mask, beam_size=k, length_penalty=alpha, max_len=8, return_scores=True)
        s = model.score(out, out != PAD, src, src_mask)
        torch.testing.assert_close(scores, s["logprob"] / s["tokens"] ** alpha)
    wide = model.generate(src, src_mask, beam_size=6, max_len=8, return_scores=True)[1]
    narrow = model.generate(src, src_mask, beam_size=1, max_len=8, return_scores=True)[1]
    assert torch.all(wide >= narrow - 1e-6)


def test_score_is_the_sum_of_log_softmax_picks():
    model = tiny(seed=4)
    with torch.no_grad():
        memory = model.network.encode(SRC, SRC_MASK)
        logp = model.network.decode(TGT[:, :-1], memory, SRC_MASK).log_softmax(-1)
    expected = []
    for b in range(TGT.shape[0]):
        n = int(TGT_MASK[b].sum())
        expected.append(sum(float(logp[b, i, TGT[b, i + 1]]) for i in range(n - 1)))
    out = model.score(TGT, TGT_MASK, SRC, SRC_MASK)
    torch.testing.assert_close(out["logprob"], torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert out["tokens"].tolist() == [4, 3, 5, 3]  # tokens after BOS, EOS included
    bound = model.nll_bound(PAIRS, num_t=8, exact_steps=3)
    torch.testing.assert_close(bound["nll"], -out["logprob"])
    assert model.training  # score switches to eval and back


def test_language_model_sampling_is_seeded_and_well_formed():
    lm = tiny(enc_depth=0, seed=5, max_len=9)
    a = lm.generate(12, seed=11, batch_size=5, temperature=3.0)  # flattened: some rows stop early
    assert a.shape == (12, 9) and a.dtype == torch.long
    assert torch.equal(a, lm.generate(12, seed=11, batch_size=5, temperature=3.0))
    assert not torch.equal(a, lm.generate(12, seed=12, batch_size=5, temperature=3.0))
    ends = []
    for row in a.tolist():
        assert row[0] == BOS and BOS not in row[1:]
        end = row.index(EOS) if EOS in row else len(row)
        assert PAD not in row[:end] and all(t == PAD for t in row[end + 1:])
        ends.append(end)
    assert min(ends) < 8 and max(ends) == 9  # both kinds of row: EOS then PAD, and cut at seq_len
    g1 = lm.generate(4, seq_len=6, seed=1, top_k=1)
    assert torch.equal(g1, lm.generate(4, seq_len=6, seed=2, top_k=1))  # top-1 is greedy whatever the seed
    ids = [BOS]
    while len(ids) < 6 and ids[-1] != EOS:
        logits = lm.network.decode(torch.tensor([ids]))[0, -1]
        logits[[PAD, BOS]] = float("-inf")
        ids.append(int(logits.argmax()))
    assert g1[0, :len(ids)].tolist() == ids
    s = lm.nll_bound({"ids": TGT, "mask": TGT_MASK})
    assert torch.all(s["nll"] > 0) and s["tokens"].tolist() == [4, 3, 5, 3]


def test_wrong_usage_is_reported():
    s2s, lm = tiny(), tiny(enc_depth=0)
    assert s2s.conditional and not lm.conditional
    with pytest.raises(ValueError, match=r"generate\(src_ids, src_mask"):
        s2s.generate(5)
    with pytest.raises(ValueError, match=r"generate\(num_samples"):
        lm.generate(SRC, SRC_MASK)
    with pytest.raises(ValueError, match="pass src_ids"):
        s2s.score(TGT, TGT_MASK)
    with pytest.raises(ValueError, match="takes no src_ids"):
        lm.score(TGT, TGT_MASK, SRC, SRC_MASK)
    with pytest.raises(ValueError, match="max_len=11"):
        s2s.generate(SRC, SRC_MASK, max_len=11)
    with pytest.raises(ValueError, match="beam_size"):
        s2s.generate(SRC, SRC_MASK, beam_size=0)
    with pytest.raises(ValueError, match="at least one real token"):
        s2s.generate(SRC, torch.zeros_like(SRC_MASK))
    with pytest.raises(ValueError, match="label_smoothing"):
        tiny(label_smoothing=1.0)
    with pytest.raises(ValueError, match="distinct"):
        Autoregressive(s2s.network, 0, 0, 2)


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
def test_lightning_checkpoint_reloads_with_the_same_beam_output(tmp_path):
    model = tiny(seed=6, ema_decay=0.9, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    loader = torch.utils.data.DataLoader([PAIRS, PAIRS], batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    start = model.network.embed.weight.detach().clone()
    trainer.fit(model, train_dataloaders=loader)
    assert not torch.equal(start, model.network.embed.weight)
    path = tmp_path / "ar.ckpt"
    trainer.save_checkpoint(path)
    reloaded = tiny(seed=99)
    ckpt = reloaded.load_weights(str(path))
    assert ckpt["textdiff"]["family"] == "Autoregressive"
    a = model.generate(SRC, SRC_MASK, beam_size=3)
    assert torch.equal(a, reloaded.generate(SRC, SRC_MASK, beam_size=3))
    torch.testing.assert_close(model.score(TGT, TGT_MASK, SRC, SRC_MASK)["logprob"],
                               reloaded.score(TGT, TGT_MASK, SRC, SRC_MASK)["logprob"])


# ----- the key/value cache: same outputs as recomputing every prefix -----
def random_model(enc_depth=2, norm_first=False, activation="relu", seed=0, vocab=40, max_len=14):
    """A seeded random network, two layers each side, with a peaky untied output projection: a random tied one
    mostly repeats its input token and never ends; this one emits EOS at various lengths."""
    torch.manual_seed(seed)
    net = ARTransformer(vocab, dim=32, enc_depth=enc_depth, dec_depth=2, heads=4, ffn_dim=64, max_len=max_len,
                        max_src_len=12, dropout=0.1, norm_first=norm_first, activation=activation,
                        tie_embeddings=False)
    with torch.no_grad():
        net.out_proj.weight.mul_(8.0)
    return Autoregressive(net, PAD, BOS, EOS)


def random_sources(rows=6, width=9, vocab=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width - 1, (rows,), generator=gen)
    return frame([torch.randint(3, vocab, (int(n),), generator=gen).tolist() for n in lengths], width)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("beam", [1, 4])
def test_cached_beam_search_gives_the_uncached_ids(norm_first, activation, beam):
    lengths = set()
    for seed in range(3):
        model = random_model(norm_first=norm_first, activation=activation, seed=seed)
        src, src_mask = random_sources(seed=seed)
        cached, s1 = model.generate(src, src_mask, beam_size=beam, return_scores=True)
        ref, s2 = model.generate(src, src_mask, beam_size=beam, return_scores=True, use_cache=False)
        assert torch.equal(cached, ref), (seed, cached, ref)
        torch.testing.assert_close(s1, s2, rtol=0, atol=1e-4)
        lengths |= set((ref != PAD).sum(1).tolist())
    assert len(lengths) > 1  # not all hypotheses run to the cap: EOS decisions are compared too


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_cached_sampling_gives_the_uncached_samples(norm_first, activation):
    lengths = set()
    for seed in (0, 1):
        lm = random_model(enc_depth=0, norm_first=norm_first, activation=activation, seed=seed)
        for kw in ({"temperature": 1.0}, {"top_k": 5}, {"top_p": 0.9, "temperature": 0.7}, {"top_k": 1}):
            a = lm.generate(9, seed=3, batch_size=4, **kw)
            b = lm.generate(9, seed=3, batch_size=4, use_cache=False, **kw)
            assert torch.equal(a, b), (seed, kw)
            lengths |= set((a != PAD).sum(1).tolist())
    assert len(lengths) > 1  # rows of several lengths: EOS draws are compared too


def test_cached_decoding_in_generate_run_and_the_reported_settings():
    model = random_model(seed=2)
    src, src_mask = random_sources(seed=2)
    run = model.generate_run(src, src_mask, beam_size=3, use_cache=False)
    assert run.details == {"beam_size": 3, "use_cache": False}
    assert torch.equal(run.ids, model.generate_run(src, src_mask, beam_size=3).ids)


@pytest.mark.parametrize("use_cache", [True, False])
def test_min_len_bans_eos_before_it(use_cache):
    model = random_model(seed=1)
    src, src_mask = random_sources(seed=1)
    free = model.generate(src, src_mask, beam_size=2, max_len=12, use_cache=use_cache)
    assert ((free != PAD).sum(1) < 12).any()
    for beam in (1, 3):
        out = model.generate(src, src_mask, beam_size=beam, max_len=12, min_len=12, use_cache=use_cache)
        assert out.shape == (6, 12) and torch.all(out[:, -1] == EOS) and not torch.any(out[:, 1:-1] == EOS)
        out = model.generate(src, src_mask, beam_size=beam, max_len=12, min_len=7, use_cache=use_cache)
        assert torch.all((out != PAD).sum(1) >= 7)
    with pytest.raises(ValueError, match="min_len=13"):
        model.generate(src, src_mask, max_len=12, min_len=13)

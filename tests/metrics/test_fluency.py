"""LM perplexity of texts: equal to exp of the hand-computed mean NLL from ``Autoregressive.score``,
lower for in-distribution than for word-shuffled text after a short training, truncation with EOS
kept, UNK counting, empty texts, usage errors and the restored train/eval mode."""
import math
import random

import pytest
import torch

from textdiff.data import WordTokenizer
from textdiff.core.types import pad_sequences
from textdiff.families import Autoregressive
from textdiff.metrics import lm_perplexity, lm_perplexity_per_text
from textdiff.nn import ARTransformer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is fastest

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "her brother"]
VERBS = ["sat on", "looked at", "walked to", "ran past"]
OBJECTS = ["the mat .", "the door .", "a tree .", "the house ."]
CORPUS = [f"{s} {v} {o}" for s in SUBJECTS for v in VERBS for o in OBJECTS]  # 96 x 7 words


def tokenizer():
    return WordTokenizer.from_texts(CORPUS)


def tiny_lm(tok, max_len=12, enc_depth=0, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    net = ARTransformer(tok.vocab_size, dim=32, enc_depth=enc_depth, dec_depth=1, heads=2,
                        ffn_dim=64, max_len=max_len, max_src_len=12, dropout=dropout)
    return Autoregressive(net, tok.pad_id, tok.bos_id, tok.eos_id)


def hand_nll(lm, tok, texts):
    """Per-text (-sum log p, predicted tokens) from one lm.score call on [BOS] ids [EOS] rows."""
    ids, mask = pad_sequences([[tok.bos_id, *tok.encode(t), tok.eos_id] for t in texts], tok.pad_id)
    out = lm.score(ids, mask)
    return (-out["logprob"]).tolist(), out["tokens"].tolist()


def test_equals_exp_of_the_hand_computed_mean_nll():
    tok = tokenizer()
    lm = tiny_lm(tok)
    texts = ["the cat sat on the mat .", "a bird .", "", "my friend walked to the house .",
             "the dog"]
    nll, n = hand_nll(lm, tok, texts)
    assert n == [8, 4, 1, 8, 3]  # words + EOS; the empty text is [BOS][EOS]: EOS alone is predicted
    got = lm_perplexity(lm, tok, texts, batch_size=2)  # three batches, sorted by length
    assert got["lm_tokens"] == sum(n) and got["lm_num_texts"] == 5
    assert got["lm_truncated"] == 0 and got["lm_unk_rate"] == 0.0
    assert got["lm_nll"] == pytest.approx(sum(nll) / sum(n), rel=1e-5)
    assert got["lm_ppl"] == pytest.approx(math.exp(sum(nll) / sum(n)), rel=1e-5)
    per_text = lm_perplexity_per_text(lm, tok, texts, batch_size=2)
    assert per_text == pytest.approx([a / b for a, b in zip(nll, n)], rel=1e-5)
    whole = lm_perplexity(lm, tok, texts, batch_size=64)
    assert whole["lm_nll"] == pytest.approx(got["lm_nll"], rel=1e-5)


def test_whitespace_only_text_is_scored_as_bos_eos():
    tok = tokenizer()
    lm = tiny_lm(tok)
    blank = lm_perplexity_per_text(lm, tok, ["   \n"])
    assert blank == pytest.approx(lm_perplexity_per_text(lm, tok, [""]))
    assert lm_perplexity(lm, tok, ["  "])["lm_tokens"] == 1


def test_trained_lm_prefers_in_distribution_text_to_shuffled_words():
    tok = tokenizer()
    lm = tiny_lm(tok, seed=0)
    rows = [[tok.bos_id, *tok.encode(t), tok.eos_id] for t in CORPUS]
    ids, mask = pad_sequences(rows, tok.pad_id)
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    for _ in range(150):
        loss = lm.compute_loss({"ids": ids, "mask": mask})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    rng = random.Random(0)
    held = CORPUS[::8]  # in distribution (seen here; the grammar is what matters)
    shuffled = []
    for t in held:
        words = t.split()
        while words == t.split():
            rng.shuffle(words)
        shuffled.append(" ".join(words))
    good = lm_perplexity(lm, tok, held)
    bad = lm_perplexity(lm, tok, shuffled)
    assert good["lm_tokens"] == bad["lm_tokens"]  # same words, same count: only the order differs
    assert good["lm_ppl"] < 3.0, good  # near-deterministic grammar: a few choices per slot
    assert bad["lm_ppl"] > 5 * good["lm_ppl"], (good, bad)


def test_truncation_is_counted_and_keeps_eos(monkeypatch):
    tok = tokenizer()
    lm = tiny_lm(tok, max_len=8)
    seen = []
    real_score = lm.score

    def spy(ids, mask, *args, **kwargs):
        seen.append((ids.clone(), mask.clone()))
        return real_score(ids, mask, *args, **kwargs)

    monkeypatch.setattr(lm, "score", spy)
    long_text = "the cat sat on the mat . the dog sat on the mat ."  # 14 words
    got = lm_perplexity(lm, tok, [long_text, "a bird ."])  # default max_len: the network's (8)
    assert got["lm_truncated"] == 1
    assert got["lm_tokens"] == 7 + 4  # BOS + 6 words + EOS predicts 7; "a bird ." predicts 4
    ids, mask = seen[-1]
    rows = {int(m.sum()): r[m].tolist() for r, m in zip(ids, mask)}
    assert rows[8] == [tok.bos_id, *tok.encode(long_text)[:6], tok.eos_id]
    short = lm_perplexity(lm, tok, [long_text], max_len=4)
    assert short["lm_truncated"] == 1 and short["lm_tokens"] == 3
    assert seen[-1][0][0].tolist() == [tok.bos_id, *tok.encode(long_text)[:2], tok.eos_id]
    seven = lm_perplexity(lm, tok, ["the cat sat on the mat ."])  # 7 words + BOS/EOS = 9 > 8
    assert seven["lm_truncated"] == 1
    assert lm_perplexity(lm, tok, ["the cat sat on the mat"])["lm_truncated"] == 0  # exactly 8


def test_unk_rate_counts_unknown_words():
    tok = tokenizer()
    lm = tiny_lm(tok)
    got = lm_perplexity(lm, tok, ["the zebra sat on the mat .", "a unicorn flew .", ""])
    # 7 + 4 scored words (EOS and the empty text add none), of which zebra, unicorn, flew are UNK
    assert got["lm_unk_rate"] == pytest.approx(3 / 11)
    assert got["lm_tokens"] == 8 + 5 + 1
    assert lm_perplexity(lm, tok, [""])["lm_unk_rate"] == 0.0  # no words: 0, not a division by zero
    # truncated words are not scored, so they do not count
    assert lm_perplexity(lm, tok, ["the cat zebra"], max_len=4)["lm_unk_rate"] == 0.0


def test_usage_errors():
    tok = tokenizer()
    lm = tiny_lm(tok)
    with pytest.raises(ValueError, match="empty"):
        lm_perplexity(lm, tok, [])
    with pytest.raises(TypeError, match="str"):
        lm_perplexity(lm, tok, "the cat sat .")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        lm_perplexity(lm, tok, ["the cat", None])
    with pytest.raises(ValueError, match="conditional"):
        lm_perplexity(tiny_lm(tok, enc_depth=1), tok, ["the cat"])
    with pytest.raises(ValueError, match="max_len"):
        lm_perplexity(lm, tok, ["the cat"], max_len=13)
    with pytest.raises(ValueError, match="max_len"):
        lm_perplexity(lm, tok, ["the cat"], max_len=1)
    with pytest.raises(ValueError, match="batch_size"):
        lm_perplexity(lm, tok, ["the cat"], batch_size=0)
    other = WordTokenizer.from_texts(["entirely different words here"])
    with pytest.raises(ValueError, match="tokenizer does not belong"):
        lm_perplexity(lm, tok.__class__(other.tokens), ["the cat"])


def test_mode_is_restored_and_dropout_is_off():
    tok = tokenizer()
    lm = tiny_lm(tok, dropout=0.5)
    texts = CORPUS[:10]
    lm.eval()
    reference = lm_perplexity(lm, tok, texts)
    assert not lm.training
    lm.train()
    first = lm_perplexity(lm, tok, texts)
    assert lm.training and all(m.training for m in lm.modules())
    second = lm_perplexity_per_text(lm, tok, texts)
    assert lm.training
    assert first["lm_nll"] == pytest.approx(reference["lm_nll"], rel=1e-6)  # eval mode: no dropout
    assert lm_perplexity_per_text(lm.eval(), tok, texts) == pytest.approx(second, rel=1e-6)
    assert torch.is_grad_enabled()  # no_grad only inside the call

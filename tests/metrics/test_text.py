"""Text metrics against sacreBLEU / rouge-score and against hand-computed numbers."""
import math
import random
import time

import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu.metrics.bleu import BLEU

from textdiff.metrics import (
    bleu_against_set, corpus_bleu, corpus_chrf, corpus_entropy, dist_n, distinct_n, diversity, memorization, rouge,
    score_conditional, score_unconditional, self_bleu, unigram_entropy,
)

# "mat." and "river," exercise the 13a tokenizer (punctuation is split off)
WORDS = "the a cat dog sat on mat mat. river, near cheap food pub is".split()


def _sentences(rng, n, lo=0, hi=12):
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def _loo_streams(samples):
    """Reference streams where sample i's references are all the other samples."""
    per_sample = [samples[:i] + samples[i + 1:] for i in range(len(samples))]
    return [list(stream) for stream in zip(*per_sample)]


# ---------------------------------------------------------------- corpus BLEU / chrF / ROUGE

def test_corpus_bleu_matches_sacrebleu_with_variable_references():
    hyps = ["the cat sat on the mat.", "a dog is near the river"]
    refs = [["the cat sat on a mat.", "a cat sat on the mat."], ["a dog is by the river"]]
    ours = corpus_bleu(hyps, refs)
    ref = sacrebleu.corpus_bleu(hyps, [["the cat sat on a mat.", "a dog is by the river"],
                                       ["a cat sat on the mat.", None]])
    assert ours["bleu"] == pytest.approx(ref.score, abs=1e-9)
    assert ours["bp"] == pytest.approx(ref.bp)
    assert ours["precisions"] == pytest.approx(ref.precisions)
    assert (ours["sys_len"], ours["ref_len"]) == (ref.sys_len, ref.ref_len) == (13, 13)
    assert ours["signature"].startswith("nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp|version:2.")
    # the same number of references everywhere: the signature says so; lowercase shows as "lc"
    two = corpus_bleu(hyps, [refs[0], refs[1] * 2], lowercase=True)
    assert "nrefs:2|case:lc" in two["signature"]
    # padding is None, not "": an empty reference (length 0) would be the closest for "dog"
    hyps, refs = ["the cat", "dog"], [["the cat sat", "the cat"], ["a dog ran"]]
    ours = corpus_bleu(hyps, refs)
    none_padded = sacrebleu.corpus_bleu(hyps, [["the cat sat", "a dog ran"], ["the cat", None]])
    empty_padded = sacrebleu.corpus_bleu(hyps, [["the cat sat", "a dog ran"], ["the cat", ""]])
    assert ours["ref_len"] == none_padded.ref_len == 5 and empty_padded.ref_len == 2
    assert ours["bleu"] == pytest.approx(none_padded.score, abs=1e-9)


def test_identical_hypotheses_score_100():
    texts = ["the cat sat on the mat .", "a dog is near the river , eating cheap food"]
    assert corpus_bleu(texts, [[t] for t in texts])["bleu"] == pytest.approx(100.0)
    assert corpus_chrf(texts, [[t] for t in texts])["chrf"] == pytest.approx(100.0)
    assert bleu_against_set(texts, texts)["bleu"] == pytest.approx(100.0)
    assert self_bleu(texts * 2) == pytest.approx(100.0)  # every sample has a duplicate


def test_corpus_chrf_matches_sacrebleu():
    hyps = ["the cat sat on the mat.", "a dog is near the river"]
    refs = [["the cat sat on a mat.", "a cat sat on the mat."], ["a dog is by the river"]]
    ours = corpus_chrf(hyps, refs)
    ref = sacrebleu.corpus_chrf(hyps, [[refs[0][0], refs[1][0]], [refs[0][1], None]])
    assert ours["chrf"] == pytest.approx(ref.score, abs=1e-9)
    assert ours["signature"].startswith("nrefs:var|case:mixed|eff:yes|nc:6|nw:0|space:no")


def test_rouge_takes_the_best_reference_then_the_mean():
    # "the cat sat" vs "the cat sat on the mat": unigram P = 3/3, R = 3/6 -> F1 = 2/3
    one = rouge(["the cat sat"], [["dogs run fast", "the cat sat on the mat"]])
    assert one["rouge1"] == pytest.approx(200 / 3) and one["rougeL"] == pytest.approx(200 / 3)
    # bigrams: P = 2/2, R = 2/5 -> F1 = 4/7
    assert one["rouge2"] == pytest.approx(400 / 7)
    both = rouge(["the cat sat", "dogs run fast"], [["the cat sat on the mat"], ["dogs run fast"]])
    assert both["rouge1"] == pytest.approx((200 / 3 + 100) / 2)
    # ... and equals the max over rouge-score's single-reference scores
    scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=True)
    hyp, refs = "cats are sitting on mats", ["a cat sits on the mat", "cats are sitting", "x y"]
    best = max(scorer.score(r, hyp)["rouge2"].fmeasure for r in refs)
    assert rouge([hyp], [refs])["rouge2"] == pytest.approx(100 * best) and best > 0


# ---------------------------------------------------------------- set-BLEU and self-BLEU: exactness

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("tokenize,max_order", [("13a", 4), ("none", 4), ("13a", 2)])
def test_bleu_against_set_equals_sacrebleu(seed, tokenize, max_order):
    rng = random.Random(seed)
    hyps, refs = _sentences(rng, 20), _sentences(rng, 15)
    brute = BLEU(tokenize=tokenize, max_ngram_order=max_order).corpus_score(
        hyps, [[r] * len(hyps) for r in refs])
    ours = bleu_against_set(hyps, refs, tokenize=tokenize, max_order=max_order)
    assert ours["bleu"] == pytest.approx(brute.score, abs=1e-6)
    assert ours["bp"] == pytest.approx(brute.bp, abs=1e-12)
    assert f"nrefs:set-of-15|case:mixed|eff:no|tok:{tokenize}|smooth:exp" in ours["signature"]
    assert ("order:2" in ours["signature"]) == (max_order == 2)
    if (tokenize, max_order) == ("13a", 4):  # the module-level helper is the same computation
        full = sacrebleu.corpus_bleu(hyps, [[r] * len(hyps) for r in refs]).score
        assert ours["bleu"] == pytest.approx(full, abs=1e-6)


def test_closest_length_ties_go_to_the_shorter_reference():
    # hypothesis of 3 tokens, references of 2 and 4 tokens: sacreBLEU takes 2 (no brevity penalty)
    hyps, refs = ["a b c"], ["a b", "a b c d"]
    brute = sacrebleu.corpus_bleu(hyps, [[r] for r in refs])
    assert brute.ref_len == 2
    assert bleu_against_set(hyps, refs, max_order=2)["bleu"] == pytest.approx(
        BLEU(max_ngram_order=2).corpus_score(hyps, [[r] for r in refs]).score, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("tokenize,max_order", [("13a", 4), ("none", 3)])
def test_self_bleu_equals_leave_one_out_sacrebleu(seed, tokenize, max_order):
    rng = random.Random(seed)
    # duplicates exercise the second-largest count; a unique length the leave-one-out length rule
    samples = _sentences(rng, 12) + ["the cat sat on the mat."] * 2 + ["a " * 30]
    rng.shuffle(samples)
    brute = BLEU(tokenize=tokenize, max_ngram_order=max_order).corpus_score(
        samples, _loo_streams(samples)).score
    ours = self_bleu(samples, tokenize=tokenize, max_order=max_order)
    assert ours == pytest.approx(brute, abs=1e-6)


def test_self_bleu_two_samples():
    samples = ["the cat sat on the mat", "the cat sat on a mat"]
    brute = sacrebleu.corpus_bleu(samples, _loo_streams(samples)).score
    assert self_bleu(samples) == pytest.approx(brute, abs=1e-9)


def test_self_bleu_closest_length_leaves_the_sample_out():
    # lengths 6, 8, 1 (all unique): closest other lengths 8, 6, 6 -> ref_len 20 > sys_len 15, so
    # the brevity penalty is exp(1 - 20/15); using a sample's own length would give BP = 1
    samples = ["a b c d e f", "a b c d e f g h", "a"]
    brute = sacrebleu.corpus_bleu(samples, _loo_streams(samples))
    assert (brute.sys_len, brute.ref_len) == (15, 20)
    assert self_bleu(samples, max_order=1) == pytest.approx(
        BLEU(max_ngram_order=1).corpus_score(samples, _loo_streams(samples)).score, abs=1e-9)
    assert self_bleu(samples) == pytest.approx(brute.score, abs=1e-9)
    # unigram matches: 6 + 6 ("g", "h" occur nowhere else) + 1 = 13 of 15
    assert self_bleu(samples, max_order=1) == pytest.approx(100 * 13 / 15 * math.exp(1 - 20 / 15))


def test_set_and_self_bleu_at_evaluation_size():
    """500 samples against 2,500 references of ~20 words (a literal sacreBLEU call would need 2,500
    reference streams of 500 segments each)."""
    rng = random.Random(0)
    hyps, refs = _sentences(rng, 500, 15, 25), _sentences(rng, 2500, 15, 25)
    start = time.perf_counter()
    set_bleu = bleu_against_set(hyps, refs)["bleu"]
    sb = self_bleu(hyps)
    assert time.perf_counter() - start < 30  # about 0.5 s on one core; this is a sanity bound
    assert 0 < set_bleu <= 100 and 0 < sb <= 100
    # the references contain every hypothesis: BLEU against the set is then 100
    assert bleu_against_set(hyps[:50], refs + hyps[:50])["bleu"] == pytest.approx(100.0)


# ---------------------------------------------------------------- dist-n, diversity, memorisation

SAMPLES = ["a b a b", "a b c", "a b a"]
# unigrams: 10 tokens, distinct {a, b, c} -> 3/10
# bigrams:  ab ba ab | ab bc | ab ba -> 7, distinct {ab, ba, bc} -> 3/7
# trigrams: aba bab | abc | aba -> 4, distinct {aba, bab, abc} -> 3/4
# 4-grams:  abab -> 1/1


def test_dist_n_by_hand():
    assert distinct_n(SAMPLES, 1) == pytest.approx(3 / 10)
    assert distinct_n(SAMPLES, 2) == pytest.approx(3 / 7)
    expected = {"dist-1": 0.3, "dist-2": 3 / 7, "dist-3": 0.75, "dist-4": 1.0}
    assert dist_n(SAMPLES) == pytest.approx(expected)
    # 13a splits punctuation off: [a b .] [a b] -> {a, b, .} / 5; plain split: {a, b., b} / 4
    assert distinct_n(["a b.", "a b"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["a b.", "a b"], 1, tokenize="none") == pytest.approx(3 / 4)
    # samples shorter than n have no n-grams
    assert distinct_n(["a b", "c"], 3) == 0.0
    assert dist_n(["x"], ns=(2,)) == {"dist-2": 0.0}


def test_diversity_by_hand():
    assert diversity(SAMPLES) == pytest.approx(3 / 7 * 3 / 4 * 1)
    assert diversity(["a b c"]) == 0.0  # no 4-gram


def test_memorization_by_hand():
    train = ["a b a b z", "q q q q"]  # bigrams {ab, ba, bz, qq}; trigrams {aba, bab, abz, qqq}
    assert memorization(SAMPLES, train, n=2) == pytest.approx(6 / 7)  # all but "b c"
    assert memorization(SAMPLES, train, n=3) == pytest.approx(3 / 4)  # all but "a b c"
    assert memorization(SAMPLES, train, n=4) == pytest.approx(1.0)  # "a b a b"
    assert memorization(["x y"], train, n=4) == 0.0  # no 4-grams at all
    assert memorization(["z q q q"], train, n=2) == pytest.approx(2 / 3)  # "z q" is not in train


def test_memorization_with_a_large_training_set():
    rng = random.Random(0)
    train = _sentences(rng, 50_000, 10, 30)
    samples = train[:100] + _sentences(random.Random(1), 100, 10, 30)
    start = time.perf_counter()
    mem = memorization(samples, train)
    assert time.perf_counter() - start < 30  # about 3 s on one core
    assert 0.5 <= mem <= 1.0


def test_unigram_entropy_by_hand():
    assert unigram_entropy(["a a b b"]) == pytest.approx(math.log(2))
    assert unigram_entropy(["a a a"]) == 0.0 and unigram_entropy([""]) == 0.0
    assert unigram_entropy(["the cat sat ."]) == pytest.approx(math.log(4))  # 4 distinct tokens
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2; averaged with an empty sample (0) and "a a b b" (ln 2)
    assert unigram_entropy(["x y x z"]) == pytest.approx(1.5 * math.log(2))
    assert unigram_entropy(["x y x z", "", "a a b b"]) == pytest.approx((1.5 + 0 + 1) * math.log(2) / 3)
    # 13a splits "mat." into "mat" "." (two tokens); "none" keeps one
    assert unigram_entropy(["mat."]) == pytest.approx(math.log(2))
    assert unigram_entropy(["mat."], tokenize="none") == 0.0
    # per sample, then the mean: not the entropy of the pooled tokens (which would be ln 2 here)
    assert unigram_entropy(["a a", "b b"]) == 0.0


def test_corpus_entropy_pools_the_samples():
    assert corpus_entropy(["a a", "b b"]) == pytest.approx(math.log(2))  # where unigram_entropy says 0
    assert corpus_entropy(["x y x z"]) == pytest.approx(1.5 * math.log(2))
    assert corpus_entropy(["", ""]) == 0.0 and corpus_entropy(["a", "a a"]) == 0.0
    # counts a:3 b:1 (c / N = 3/4, 1/4)
    assert corpus_entropy(["a b", "a a"]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    with pytest.raises(ValueError):
        corpus_entropy([])


# ---------------------------------------------------------------- summaries and errors

def test_score_unconditional_collects_the_metrics():
    rng = random.Random(0)
    samples, refs, train = _sentences(rng, 10, 1), _sentences(rng, 10), _sentences(rng, 30)
    s = score_unconditional(samples, reference_set=refs, train_texts=train)
    assert s["bleu"] == pytest.approx(bleu_against_set(samples, refs)["bleu"])
    assert s["bleu_signature"] == bleu_against_set(samples, refs)["signature"]
    assert s["self_bleu"] == pytest.approx(self_bleu(samples))
    assert s["diversity"] == pytest.approx(diversity(samples))
    assert s["entropy"] == pytest.approx(unigram_entropy(samples))
    assert s["corpus_entropy"] == pytest.approx(corpus_entropy(samples))
    assert s["memorization"] == pytest.approx(memorization(samples, train))
    assert {k: s[k] for k in dist_n(samples)} == pytest.approx(dist_n(samples))
    assert s["num_samples"] == 10
    assert s["mean_length"] == pytest.approx(sum(len(x.split()) for x in samples) / 10)
    short = score_unconditional(["a b c.", "d e"])
    assert short["mean_length"] == pytest.approx(2.5)  # whitespace tokens of the raw text
    assert "bleu" not in short and "memorization" not in short
    assert math.isnan(score_unconditional(["one sample"])["self_bleu"])
    assert short["entropy"] == pytest.approx((math.log(4) + math.log(2)) / 2)  # "a b c ." and "d e"


def test_score_conditional_collects_the_metrics():
    hyps = ["the cat sat", "a dog ran"]
    refs = [["the cat sat on the mat"], ["a dog ran", "dogs run"]]
    c = score_conditional(hyps, refs)
    assert c["bleu"] == pytest.approx(corpus_bleu(hyps, refs)["bleu"])
    assert c["chrf"] == pytest.approx(corpus_chrf(hyps, refs)["chrf"])
    assert c["rouge1"] == pytest.approx(rouge(hyps, refs)["rouge1"])
    assert c["bleu_signature"].startswith("nrefs:var") and "chrF" not in c["bleu_signature"]
    assert c["chrf_signature"].startswith("nrefs:var") and c["num_samples"] == 2


@pytest.mark.parametrize("call", [
    lambda: corpus_bleu([], []),
    lambda: corpus_chrf([], []),
    lambda: rouge([], []),
    lambda: bleu_against_set([], ["a"]),
    lambda: bleu_against_set(["a"], []),
    lambda: self_bleu([]),
    lambda: distinct_n([], 1),
    lambda: dist_n([]),
    lambda: diversity([]),
    lambda: unigram_entropy([]),
    lambda: memorization([], ["a b c d"]),
    lambda: memorization(["a b c d"], []),
    lambda: score_unconditional([]),
    lambda: score_conditional([], []),
])
def test_empty_inputs_raise(call):
    with pytest.raises(ValueError, match="empty"):
        call()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="at least 2 samples"):
        self_bleu(["one"])
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference lists"):
        score_conditional(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"references\[1\].*empty"):
        corpus_bleu(["a", "b"], [["a"], []])
    with pytest.raises(TypeError, match="list of references"):
        corpus_bleu(["a", "b"], ["a", "b"])
    with pytest.raises(TypeError, match="expected str"):
        bleu_against_set(["a", None], ["a"])
    with pytest.raises(ValueError, match="n must be >= 1"):
        distinct_n(["a b"], 0)
    with pytest.raises(ValueError, match="max_order"):
        self_bleu(["a", "b"], max_order=0)


def test_importing_the_metrics_is_light():
    import subprocess
    import sys

    code = ("import sys, textdiff.metrics; heavy = ('torch', 'pytorch_lightning', 'transformers', "
            "'nltk', 'rouge_score', 'hydra'); print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

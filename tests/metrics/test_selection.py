"""MBR and score-based candidate selection."""
import pytest
import sacrebleu
import torch

from textdiff.metrics.selection import best_by_score, mbr_scores, mbr_select


def test_mbr_scores_equal_averaged_sacrebleu_sentence_bleu():
    """Official ``bleu_rerank``: candidate i's score is mean_j sentence_bleu(s_j, [s_i]) (i as the reference);
    ``as_reference=False`` is the other direction. BLEU is asymmetric, so they differ."""
    cands = ["a man rides a horse .", "a man is riding a horse .", "two dogs play in the snow .",
             "a man rides a brown horse ."]
    official = mbr_scores(cands, tokenize="13a")
    textbook = mbr_scores(cands, tokenize="13a", as_reference=False)
    for i, c in enumerate(cands):
        want = sum(sacrebleu.sentence_bleu(o, [c]).score for j, o in enumerate(cands) if j != i) / 3
        assert official[i] == pytest.approx(want, abs=1e-9)
        want = sum(sacrebleu.sentence_bleu(c, [o]).score for j, o in enumerate(cands) if j != i) / 3
        assert textbook[i] == pytest.approx(want, abs=1e-9)
    assert official != textbook
    # the longer consensus candidate is the better reference (the brevity penalty follows the reference),
    # the shorter one the better hypothesis: the two directions choose differently
    group = [[5, 6, 7, 8], [5, 6, 7, 9], [1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert mbr_select([group]) == [3] and mbr_select([group], as_reference=False) == [0]
    empty = mbr_scores(["", "a b c d", "a b c e"], tokenize="13a")
    assert empty[0] == float("-inf") and min(empty[1:]) > 0


def test_mbr_picks_the_consensus_and_works_on_token_ids():
    groups = [[[5, 6, 7, 8], [5, 6, 7, 9], [1, 2, 3, 4], [5, 6, 7, 8, 9]], [[3, 3, 3]]]
    assert mbr_select(groups) == [3, 0]  # never the outlier [1, 2, 3, 4]
    assert mbr_scores([[1, 2]]) == [0.0]
    with pytest.raises(ValueError, match="tokenize='none'"):
        mbr_scores([[1, 2], [1, 2]], tokenize="13a")
    with pytest.raises(ValueError, match="at least one"):
        mbr_scores([])


def test_best_by_score_takes_the_first_maximum():
    assert best_by_score(torch.tensor([[0.1, 0.3, 0.3], [-1.0, -2.0, -0.5]])).tolist() == [1, 2]

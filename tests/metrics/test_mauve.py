"""MAUVE's featurisation (always) and score (when mauve-text is installed) on a tiny local GPT-2."""
import importlib.util

import pytest
import torch

from textdiff.metrics.mauve import featurize_texts, mauve_score

TEXTS = ["the cat sat on the mat .", "a dog ran in the park .", "the bird sang a song .", "it rained all day ."]


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A tiny GPT-2 and a BPE tokenizer saved locally (standing in for gpt2-large)."""
    from transformers import GPT2Config, GPT2Model

    from textdiff.data.tokenizers import build_bpe_tokenizer

    root = tmp_path_factory.mktemp("gpt2")
    tok = build_bpe_tokenizer(TEXTS * 20, vocab_size=300)
    tok.save(root)
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2,
                         n_positions=64)).save_pretrained(root)
    return root


def test_features_are_the_last_real_tokens_final_state(tiny_gpt2):
    from transformers import AutoModel, AutoTokenizer

    tok, net = AutoTokenizer.from_pretrained(tiny_gpt2), AutoModel.from_pretrained(tiny_gpt2)
    feats = featurize_texts(TEXTS, net, tok, batch_size=3)
    assert feats.shape == (4, 32)
    for i, text in enumerate(TEXTS):  # one text alone, no padding: the same vector
        ids = torch.tensor([tok.encode(text)])
        alone = net(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
        assert torch.allclose(feats[i], alone, atol=1e-5)
    short = featurize_texts(["the cat sat on the mat ."], net, tok, max_len=3)
    ids = torch.tensor([tok.encode("the cat sat on the mat .")[:3]])
    assert torch.allclose(short[0], net(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1], atol=1e-5)
    assert featurize_texts([""], net, tok).shape == (1, 32)  # an empty sample still gets a feature
    with pytest.raises(ValueError, match="no texts"):
        featurize_texts([], net, tok)


@pytest.mark.skipif(importlib.util.find_spec("mauve") is not None, reason="mauve-text is installed")
def test_missing_package_says_how_to_install(tiny_gpt2):
    with pytest.raises(ImportError, match=r"textdiff\[mauve\]"):
        mauve_score(TEXTS, TEXTS, model=str(tiny_gpt2))


@pytest.mark.skipif(importlib.util.find_spec("mauve") is None,
                    reason="needs mauve-text (pip install 'textdiff[mauve]')")
def test_identical_sets_score_higher_than_different_ones(tiny_gpt2):
    import itertools

    words = (["the cat", "a dog", "the bird", "my friend", "it"], ["sat on", "ran in", "saw", "sang in"],
             ["the mat", "the park", "a song", "the rain"])
    texts = [" ".join(t) + " ." for t in itertools.product(*words)]  # 80 distinct sentences
    same = mauve_score(texts, list(texts), model=str(tiny_gpt2), num_buckets=4)
    other = mauve_score(texts, ["zz qq " * (1 + i % 5) for i in range(80)], model=str(tiny_gpt2), num_buckets=4)
    assert same["mauve"] > 0.99 and other["mauve"] < 0.5 and same["mauve_num_buckets"] == 4

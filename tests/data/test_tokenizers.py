"""Tokenizers: word vocabulary ids, round trips, save/load, the HF wrapper and the BPE builder."""
from __future__ import annotations

import subprocess
import sys

import pytest

from textdiff.data.tokenizers import (
    HFTokenizer,
    TokenizerError,
    WordTokenizer,
    build_bpe_tokenizer,
    build_word_tokenizer,
    load_tokenizer,
)

CORPUS = ["the cat sat .", "the dog sat !", "the cat ran", "a bird"]
# counts: the 3, cat 2, sat 2, then count 1 sorted by string: ! . a bird dog ran
EXPECTED = ["[PAD]", "[UNK]", "[START]", "[END]", "the", "cat", "sat",
            "!", ".", "a", "bird", "dog", "ran"]


def _train_lines(n: int = 300) -> list[str]:
    import random

    from textdiff.data.synthetic import make_sentence

    rng = random.Random(1)
    return [make_sentence(rng) for _ in range(n)]


# ----------------------------------------------------------------------------- WordTokenizer
def test_word_vocab_ids_and_specials():
    tok = WordTokenizer.from_texts(CORPUS)
    assert tok.tokens == EXPECTED
    assert tok.vocab_size == 13
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, None)
    assert tok.encode("the cat sat .") == [4, 5, 6, 8]


def test_word_vocab_min_count_max_size_mask_lowercase():
    assert WordTokenizer.from_texts(CORPUS, min_count=2).tokens == EXPECTED[:7]
    assert WordTokenizer.from_texts(CORPUS, max_size=6).tokens == EXPECTED[:6]
    masked = WordTokenizer.from_texts(CORPUS, min_count=2, add_mask_token=True)
    assert masked.tokens == EXPECTED[:4] + ["[MASK]"] + EXPECTED[4:7]
    assert masked.mask_id == 4 and masked.vocab_size == 8
    lower = WordTokenizer.from_texts(["The cat", "the CAT", "THE dog"], lowercase=True)
    assert lower.tokens[4:] == ["the", "cat", "dog"]
    assert lower.encode("THE Cat") == [4, 5]
    with pytest.raises(TokenizerError, match="max_size"):
        WordTokenizer.from_texts(CORPUS, max_size=4)


def test_word_vocab_is_deterministic_and_order_independent():
    a = WordTokenizer.from_texts(CORPUS)
    b = build_word_tokenizer(list(reversed(CORPUS)))
    assert a.tokens == b.tokens


def test_word_split_keeps_contractions_and_hyphens():
    tok = WordTokenizer.from_texts(["x"])
    assert tok.split("It's a kid-friendly place, isn't it? (Yes) 50%") == [
        "It's", "a", "kid-friendly", "place", ",", "isn't", "it", "?",
        "(", "Yes", ")", "50", "%",
    ]


def test_word_round_trip_and_unk():
    text = "It's a kid-friendly place, isn't it? (Yes) 50%!"
    tok = WordTokenizer.from_texts([text, "the cat"])
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text
    assert tok.encode("the zebra") == [tok.token_to_id["the"], tok.unk_id]
    assert tok.decode(tok.encode("the zebra")) == "the [UNK]"


def test_word_decode_specials():
    tok = WordTokenizer.from_texts(CORPUS, add_mask_token=True)
    the, cat = tok.token_to_id["the"], tok.token_to_id["cat"]
    ids = [tok.bos_id, the, tok.mask_id, cat, tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(ids) == "the cat"
    assert tok.decode(ids, skip_special=False) == "[START] the [MASK] cat [END]"
    assert tok.convert_ids_to_tokens([2, the, 0]) == ["[START]", "the", "[PAD]"]


def test_word_save_load_round_trip(tmp_path):
    tok = WordTokenizer.from_texts(_train_lines(), min_count=2, lowercase=True, add_mask_token=True)
    tok.save(tmp_path / "tok")
    assert (tmp_path / "tok" / "vocab.json").is_file()
    back = load_tokenizer(tmp_path / "tok")
    assert isinstance(back, WordTokenizer)
    assert back.tokens == tok.tokens and back.lowercase and back.mask_id == tok.mask_id
    texts = _train_lines(50)
    assert back.encode_batch(texts) == tok.encode_batch(texts)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="empty"):
        load_tokenizer(tmp_path / "empty")


def test_tokenizers_module_imports_without_lightning():
    code = (
        "import sys, textdiff.data, textdiff.data.tokenizers, textdiff.data.sources\n"
        "heavy = [m for m in ('pytorch_lightning', 'lightning', 'transformers', 'datasets') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- HFTokenizer
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny WordPiece tokenizer trained here, saved with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    rust = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    rust.normalizer = normalizers.Lowercase()
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    rust.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials,
                                        show_progress=False)
    rust.train_from_iterator(_train_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=rust, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    path = tmp_path_factory.mktemp("hf_wordpiece")
    fast.save_pretrained(str(path))
    return path


def test_hf_tokenizer_from_trained_files(hf_dir):
    tok = HFTokenizer(str(hf_dir))
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == len(tok.hf) <= 300
    text = "the golden palace is a cheap italian restaurant near the river."
    ids = tok.encode(text)
    assert ids and not set(ids) & {0, 2, 3, 4}  # no specials added
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "zizzi"]) == [ids, tok.encode("zizzi")]
    framed = [tok.bos_id, *ids, tok.eos_id, tok.pad_id]
    assert tok.decode(framed) == text
    assert tok.decode(framed, skip_special=False) == f"[CLS] {text} [SEP]"
    assert tok.convert_ids_to_tokens([2, 3]) == ["[CLS]", "[SEP]"]
    assert tok.decode(tok.encode("the qqq")) == "the [UNK]"  # UNK is kept


def test_hf_save_load_round_trip(hf_dir, tmp_path):
    tok = HFTokenizer(hf_dir)
    tok.save(tmp_path / "saved")
    back = load_tokenizer(tmp_path / "saved")
    assert isinstance(back, HFTokenizer)
    texts = _train_lines(40)
    assert back.encode_batch(texts) == tok.encode_batch(texts)
    assert back.hf.get_vocab() == tok.hf.get_vocab()
    assert (back.bos_id, back.eos_id, back.pad_id, back.mask_id) == (2, 3, 0, 4)


def test_hf_tokenizer_error_names_path(tmp_path):
    missing = str(tmp_path / "no_such_tokenizer")
    with pytest.raises(TokenizerError, match="no_such_tokenizer") as err:
        HFTokenizer(missing)
    assert "offline" in str(err.value)  # conftest sets HF_HUB_OFFLINE=1


# ----------------------------------------------------------------------------- BPE builder
def test_bpe_builder_deterministic_and_lossless(tmp_path):
    texts = _train_lines(400)
    a = build_bpe_tokenizer(texts, vocab_size=400)
    b = build_bpe_tokenizer(texts, vocab_size=400)
    assert a.hf.get_vocab() == b.hf.get_vocab()
    assert a.vocab_size == b.vocab_size <= 400
    assert (a.pad_id, a.unk_id, a.bos_id, a.eos_id, a.mask_id) == (0, 1, 2, 3, 4)
    text = "Café Rouge is a £20-25 place, near   the river."  # unseen chars: byte-level copes
    assert a.decode(a.encode(text)) == text
    assert a.encode_batch(texts[:20]) == b.encode_batch(texts[:20])
    a.save(tmp_path / "bpe")
    back = load_tokenizer(tmp_path / "bpe")
    assert back.encode_batch(texts[:20]) == a.encode_batch(texts[:20])
    lower = build_bpe_tokenizer(texts, vocab_size=300, lowercase=True)
    assert lower.encode("THE RIVER") == lower.encode("the river")
    with pytest.raises(TokenizerError, match="vocab_size"):
        build_bpe_tokenizer(texts, vocab_size=100)


class _Ids:
    """decode_ids needs bos_id, eos_id and decode: ids joined by spaces."""

    def __init__(self, bos, eos):
        self.bos_id, self.eos_id = bos, eos

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_decode_ids_blocks_with_one_separator_token_and_partial_sentences():
    from textdiff.data.tokenizers import decode_ids

    framed = _Ids(bos=1, eos=2)  # BERT/word tokenizers: [CLS]/[START] ... [SEP]/[END]
    row = [5, 2, 1, 6, 7, 2, 3, 1, 8]
    assert decode_ids([row], framed, block=True) == [["6 7"]]
    assert decode_ids([row], framed, block=True, partial=True) == [["5", "6 7", "8"]]
    assert decode_ids([[1, 6, 7, 2, 0, 0]], framed) == [["6 7"]]  # "pad" rows: one sentence
    gpt2 = _Ids(bos=9, eos=9)  # GPT-2: <|endoftext|> frames both ends (every sentence was lost before)
    row = [5, 9, 6, 7, 9, 9, 8, 9, 4]
    assert decode_ids([row], gpt2, block=True) == [["6 7", "8"]]
    assert decode_ids([row], gpt2, block=True, partial=True) == [["5", "6 7", "8", "4"]]
    assert decode_ids([[5, 4]], gpt2, block=True) == [[]] and decode_ids([[5, 4]], gpt2, block=True,
                                                                          partial=True) == [["5 4"]]

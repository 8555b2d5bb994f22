"""Local stand-ins for what ``make test-presets`` (``benchmarks/presets.py``) cannot download: hub models,
their tokenizers and hub datasets, each of the same architecture, vocabulary size or format as the original.

- **Hub models** (``HUB_MODELS``): the architecture class of the hub model (``BertForMaskedLM``,
  ``BartForConditionalGeneration``, ``GPT2LMHeadModel``) built from its configuration values (hidden size, layers,
  heads, FFN width, positions, vocabulary, special-token ids), with *random* weights, written with
  ``save_pretrained`` together with a tokenizer of the same class, vocabulary size and special-token ids
  (WordPiece for BERT, byte-level BPE for BART and GPT-2). The tokenizer's entries are learned from real text of
  ``../shared/data`` as far as that text goes, then filled with synthetic entries (``standin00017``) up to
  the hub vocabulary size, so that the embedding tables have the hub model's shape.
- **Hub datasets** (``HUB_DATASETS``, keyed by the ``conf/data`` file): a folder with ``train.jsonl``,
  ``validation.jsonl`` and ``test.jsonl`` that ``datasets.load_dataset(<folder>)`` reads with the hub
  dataset's column names and nesting (``translation.de``, an integer ``label``...), so the DataModule reads
  it through the same ``load_hf_split`` path as the hub name; a few hundred rows of real text. A hub dataset a
  preset names over its ``conf/data`` file's (``PRESET_DATASETS``, keyed by hub name: OpenWebText) likewise,
  with the hub dataset's splits (OpenWebText: ``train`` only, more rows than the preset holds out).
- **Files a user must supply** (``FILE_DATASETS``): ROCStories, which is not on the hub (one story per line).
- ``pad_vocabulary``: a trained BPE tokenizer filled up to an exact vocabulary size (a preset's BPE is
  trained on the full hub corpus and reaches its ``vocab_size``; a few hundred lines would not).

Nothing here touches the network. The functions write into the directory they are given and return it.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

FILLER = "standin{:05d}"
"""Synthetic vocabulary entries that fill a stand-in tokenizer up to the hub vocabulary size."""


class StandInError(RuntimeError):
    """A stand-in cannot be built (the message names the stand-in and what is missing)."""


# ----------------------------------------------------------------------------------------------------------
# real text from ../shared/data
# ----------------------------------------------------------------------------------------------------------
def _lines(path: Path, limit: Optional[int] = None) -> list[str]:
    if not path.is_file():
        raise StandInError(f"{path} is missing: the stand-ins are made of the real text in ../shared/data "
                           "(set TEXTDIFF_SHARED_DATA to the folder that holds e2e/, multi30k/, tatoeba_en/, scitldr/)")
    out = [s for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    return out[:limit] if limit else out


def _jsonl(path: Path, limit: Optional[int] = None) -> list[dict]:
    return [json.loads(s) for s in _lines(path, limit)]


def english_text(shared: Path, limit: int = 20000) -> list[str]:
    """Real English sentences (Tatoeba, then E2E references): ``limit`` lines, for training tokenizers."""
    tatoeba = _lines(shared / "tatoeba_en" / "train.txt", limit)
    e2e = [r["ref"] for r in _jsonl(shared / "e2e" / "train.jsonl", max(limit // 4, 1))]
    return tatoeba + e2e


# ----------------------------------------------------------------------------------------------------------
# hub models and their tokenizers
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubModel:
    """A hub model's architecture class, configuration values and tokenizer layout.

    ``config`` holds the values of the hub's ``config.json`` that fix the network's shape and behaviour;
    ``generation`` its generation defaults (``generation_config``); ``specials`` maps each special token to its id
    in the hub vocabulary."""

    name: str
    architecture: str
    config: dict[str, Any]
    tokenizer: str  # "wordpiece" (BERT) | "byte_bpe" (BART/RoBERTa, GPT-2)
    specials: dict[str, int]
    tokenizer_class: str = "BertTokenizer"
    generation: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])


HUB_MODELS: dict[str, HubModel] = {
    # https://huggingface.co/bert-base-uncased/blob/main/config.json
    "bert-base-uncased": HubModel(
        name="bert-base-uncased", architecture="BertForMaskedLM",
        config=dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
                    attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
                    initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0),
        tokenizer="wordpiece",
        specials={"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}),
    # https://huggingface.co/facebook/bart-base/blob/main/config.json
    "facebook/bart-base": HubModel(
        name="facebook/bart-base", architecture="BartForConditionalGeneration",
        config=dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                    decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                    max_position_embeddings=1024, activation_function="gelu", dropout=0.1, attention_dropout=0.1,
                    activation_dropout=0.1, init_std=0.02, scale_embedding=False, encoder_layerdrop=0.0,
                    decoder_layerdrop=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                    decoder_start_token_id=2, forced_eos_token_id=2),
        tokenizer="byte_bpe",
        specials={"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 50264}, tokenizer_class="BartTokenizer",
        generation=dict(forced_bos_token_id=0, forced_eos_token_id=2, num_beams=4, no_repeat_ngram_size=3,
                        early_stopping=True)),
    # https://huggingface.co/gpt2/blob/main/config.json (no pad token: <|endoftext|> is BOS, EOS and UNK)
    "gpt2": HubModel(
        name="gpt2", architecture="GPT2LMHeadModel",
        config=dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                    activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
                    layer_norm_epsilon=1e-5, initializer_range=0.02, bos_token_id=50256, eos_token_id=50256),
        tokenizer="byte_bpe", specials={"<|endoftext|>": 50256}, tokenizer_class="GPT2Tokenizer"),
}


def _fill(tokens: list[str], vocab_size: int, taken: set[str]) -> list[str]:
    """``tokens`` followed by synthetic ``FILLER`` entries up to ``vocab_size`` entries in all."""
    out, k = list(tokens), 0
    while len(out) < vocab_size:
        name = FILLER.format(k)
        k += 1
        if name not in taken:
            out.append(name)
    return out[:vocab_size]


def wordpiece_tokenizer(texts: list[str], model: HubModel) -> Any:
    """A ``BertTokenizer`` (uncased WordPiece) with ``model.vocab_size`` entries and BERT's special ids.

    Word pieces are learned from ``texts`` (``tokenizers``' WordPiece trainer); BERT's layout is kept:
    ``[PAD]`` 0, ``[unused0..98]`` 1-99, ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102, ``[MASK]`` 103, then the
    learned pieces, then fillers."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    specials = sorted(model.specials, key=model.specials.get)
    trainer = trainers.WordPieceTrainer(vocab_size=model.vocab_size, special_tokens=specials, show_progress=False)
    rust = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    rust.normalizer = normalizers.BertNormalizer(lowercase=True)
    rust.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    rust.train_from_iterator(texts, trainer=trainer)
    learned = [t for t, _ in sorted(rust.get_vocab().items(), key=lambda kv: kv[1]) if t not in model.specials]
    head: list[str] = [""] * (max(model.specials.values()) + 1)
    for tok, i in model.specials.items():
        head[i] = tok
    unused = iter(f"[unused{k}]" for k in range(10_000))
    head = [t or next(unused) for t in head]
    vocab = _fill(head + learned, model.vocab_size, set(head) | set(learned))
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    _check_tokenizer(tok, model)
    return tok


def byte_bpe_tokenizer(texts: list[str], model: HubModel) -> Any:
    """A byte-level BPE tokenizer (``model.tokenizer_class``: ``BartTokenizer`` or ``GPT2Tokenizer``) with
    ``model.vocab_size`` entries in the hub layout: the specials that open the vocabulary (BART: ``<s>`` 0,
    ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3), the 256 byte symbols and the merges learned from ``texts``, fillers,
    and the specials that close it (BART: ``<mask>`` 50264; GPT-2: ``<|endoftext|>`` 50256)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    ordered = [t for t, _ in sorted(model.specials.items(), key=lambda kv: kv[1])]
    first = [t for i, t in enumerate(ordered) if model.specials[t] == i]
    last = [t for t in ordered if t not in first]
    if [model.specials[t] for t in last] != list(range(model.vocab_size - len(last), model.vocab_size)):
        raise StandInError(f"{model.name}: specials {model.specials} neither open nor close the vocabulary")
    rust = Tokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=model.vocab_size - len(last), special_tokens=first,
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rust.train_from_iterator(texts, trainer=trainer)
    spec = json.loads(rust.to_str())["model"]
    learned = [t for t, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1])]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    vocab = _fill(learned, model.vocab_size - len(last), set(learned)) + last
    tok = getattr(transformers, model.tokenizer_class)(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)
    _check_tokenizer(tok, model)
    return tok


def _check_tokenizer(tok: Any, model: HubModel) -> None:
    if len(tok) != model.vocab_size:
        raise StandInError(f"stand-in tokenizer for {model.name} has {len(tok)} entries, expected {model.vocab_size}")
    ids = {t: tok.convert_tokens_to_ids(t) for t in model.specials}
    if ids != model.specials:
        raise StandInError(f"stand-in tokenizer for {model.name}: special ids {ids}, expected {model.specials}")


def build_hub_model(name: str, out_dir: Path, texts: list[str],
                    config_overrides: Optional[dict[str, Any]] = None) -> Path:
    """Write the stand-in of hub model ``name`` into ``out_dir``: its architecture class built from
    ``HUB_MODELS[name].config`` (random weights, seed 0; ``config_overrides`` only for the harness's unit test)
    with the hub's generation defaults, and its tokenizer (``wordpiece_tokenizer`` / ``byte_bpe_tokenizer`` over
    ``texts``), both written with ``save_pretrained`` into one directory (like a hub repository). Returns
    ``out_dir``."""
    import torch
    import transformers

    if name not in HUB_MODELS:
        raise StandInError(f"no stand-in for hub model {name!r}; known: {sorted(HUB_MODELS)}")
    model = HUB_MODELS[name]
    tok = (wordpiece_tokenizer if model.tokenizer == "wordpiece" else byte_bpe_tokenizer)(texts, model)
    arch = getattr(transformers, model.architecture)
    config_cls = arch.config_class
    torch.manual_seed(0)
    net = arch(config_cls(**{**model.config, **(config_overrides or {})}))
    for key, value in model.generation.items():
        setattr(net.generation_config, key, value)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir


def pad_vocabulary(tokenizer: Any, vocab_size: int) -> Any:
    """A copy of a textdiff BPE ``HFTokenizer`` (``textdiff.data.build_bpe_tokenizer``) whose vocabulary is
    filled with synthetic entries up to exactly ``vocab_size`` (same merges, specials and ids; the fillers are
    never produced by encoding). Raises StandInError when it already has more entries."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from textdiff.data.tokenizers import HFTokenizer

    have = tokenizer.vocab_size
    if have > vocab_size:
        raise StandInError(f"the tokenizer has {have} entries, more than the {vocab_size} to pad to")
    spec = json.loads(tokenizer.hf.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    taken = set(vocab) | {a["content"] for a in spec.get("added_tokens", [])}
    start = max(max(vocab.values()), *(a["id"] for a in spec.get("added_tokens", []))) + 1
    for i, name in enumerate(_fill([], vocab_size - start, taken)):
        vocab[name] = start + i
    hf = tokenizer.hf
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   **{k: getattr(hf, k) for k in ("pad_token", "unk_token", "cls_token", "sep_token",
                                                                   "mask_token", "bos_token", "eos_token")
                                      if getattr(hf, k, None) is not None})
    out = HFTokenizer.from_transformers(fast, name_or_path=f"{tokenizer.name_or_path} padded to {vocab_size}")
    if out.vocab_size != vocab_size:
        raise StandInError(f"padded tokenizer has {out.vocab_size} entries, expected {vocab_size}")
    for role in ("pad_id", "unk_id", "bos_id", "eos_id", "mask_id"):
        if getattr(out, role) != getattr(tokenizer, role):
            raise StandInError(f"padding changed {role}: {getattr(tokenizer, role)} -> {getattr(out, role)}")
    return out


# ----------------------------------------------------------------------------------------------------------
# hub datasets and user-supplied corpora
# ----------------------------------------------------------------------------------------------------------
SPLIT_SIZES = {"train": 400, "validation": 100, "test": 100}
"""Rows per split of a dataset stand-in (the point is the shapes, not the amount of data)."""


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]


def _multi30k(shared: Path, split: str, n: int) -> list[tuple[str, str]]:
    name = {"train": "train", "validation": "valid", "test": "test"}[split]
    de = _lines(shared / "multi30k" / "raw" / f"{name}.de", n)
    en = _lines(shared / "multi30k" / "raw" / f"{name}.en", n)
    return list(zip(de, en))


def _scitldr(shared: Path, split: str, n: int) -> list[dict]:
    name = {"train": "train", "validation": "valid", "test": "test"}[split]
    return _jsonl(shared / "scitldr" / f"{name}.jsonl", n)


def _lm1b_rows(shared: Path, split: str, n: int) -> list[dict]:
    name = {"train": "train", "validation": "valid", "test": "test"}[split]
    return [{"text": s} for s in _lines(shared / "tatoeba_en" / f"{name}.txt", n)]


def _ag_news_rows(shared: Path, split: str, n: int) -> list[dict]:
    name = {"train": "train", "validation": "valid", "test": "test"}[split]
    refs = [r["ref"] for r in _jsonl(shared / "e2e" / f"{name}.jsonl", n)]
    return [{"text": s, "label": i % 4} for i, s in enumerate(refs)]  # 4 classes, assigned in turn


def _xsum_rows(shared: Path, split: str, n: int) -> list[dict]:
    return [{"document": " ".join(r["source"]), "summary": r["target"][0], "id": str(i)}
            for i, r in enumerate(_scitldr(shared, split, n))]


def _gigaword_rows(shared: Path, split: str, n: int) -> list[dict]:
    return [{"document": _first_sentence(r["source"][0]), "summary": r["target"][0]}
            for r in _scitldr(shared, split, n)]


def _translation_rows(src: str, tgt: str, text_of: dict[str, str]) -> Callable[[Path, str, int], list[dict]]:
    def rows(shared: Path, split: str, n: int) -> list[dict]:
        return [{"translation": {src: pair[0], tgt: pair[1]}} for pair in _multi30k(shared, split, n)]

    rows.__doc__ = f"translation.{src} <- {text_of[src]}, translation.{tgt} <- {text_of[tgt]}"
    return rows


@dataclass(frozen=True)
class HubDataset:
    """A hub dataset of a ``conf/data`` file and how its stand-in rows are made (``rows(shared, split, n)``)."""

    hub: str
    columns: str
    source: str
    rows: Callable[[Path, str, int], list[dict]] = field(repr=False)
    splits: dict[str, int] = field(default_factory=lambda: dict(SPLIT_SIZES))
    """Rows per split file (the hub dataset's splits)."""


_DE_EN = {"de": "Multi30k German", "en": "Multi30k English"}
HUB_DATASETS: dict[str, HubDataset] = {
    "lm1b": HubDataset("lm1b", "text", "Tatoeba English sentences", _lm1b_rows),
    "ag_news": HubDataset("fancyzhx/ag_news", "text, label (int 0-3)",
                          "E2E references; labels 0-3 assigned in turn (not meaningful)", _ag_news_rows),
    "xsum": HubDataset("EdinburghNLP/xsum", "document, summary, id", "SciTLDR abstracts -> first TLDR", _xsum_rows),
    "gigaword": HubDataset("Harvard/gigaword", "document, summary",
                           "SciTLDR first abstract sentence -> first TLDR", _gigaword_rows),
    "iwslt14_de_en": HubDataset("bbaaaa/iwslt14-de-en", "translation.de, translation.en", "Multi30k de-en pairs",
                                _translation_rows("de", "en", _DE_EN)),
    "wmt14_en_de": HubDataset("wmt/wmt14 (de-en)", "translation.de, translation.en", "Multi30k de-en pairs",
                              _translation_rows("de", "en", _DE_EN)),
    "wmt16_en_ro": HubDataset("wmt/wmt16 (ro-en)", "translation.ro, translation.en",
                              "Multi30k pairs, the German side standing in for Romanian (no Romanian in shared/data)",
                              _translation_rows("ro", "en", {"ro": "Multi30k German", "en": "Multi30k English"})),
}


def _openwebtext_rows(shared: Path, split: str, n: int) -> list[dict]:
    sentences = _lines(shared / "tatoeba_en" / "train.txt")
    per = OPENWEBTEXT_SENTENCES
    return [{"text": " ".join(sentences[(per * i + k) % len(sentences)] for k in range(per))} for i in range(n)]


OPENWEBTEXT_SENTENCES = 5
"""Sentences per stand-in OpenWebText document."""

PRESET_DATASETS: dict[str, HubDataset] = {
    # OpenWebText has one split; mdlm_owt holds out its last 100k documents (``train[-100000:]``), so the
    # stand-in has more than that many rows and the preset's split strings run unchanged.
    "Skylion007/openwebtext": HubDataset(
        "Skylion007/openwebtext", "text (train split only)",
        f"documents of {OPENWEBTEXT_SENTENCES} consecutive Tatoeba English sentences, cycling through them",
        _openwebtext_rows, splits={"train": 100_400}),
}
"""Hub datasets a preset names in place of its ``conf/data`` file's, by hub name (``data.hf_dataset``)."""


def dataset_spec(key: str) -> HubDataset:
    """The stand-in of a ``conf/data`` group (``HUB_DATASETS``) or of a hub name (``PRESET_DATASETS``); raises
    StandInError naming both catalogues when there is none."""
    spec = HUB_DATASETS.get(key) or PRESET_DATASETS.get(key)
    if spec is None:
        raise StandInError(f"no stand-in for the hub dataset {key!r}; known: data groups {sorted(HUB_DATASETS)}, "
                           f"hub names {sorted(PRESET_DATASETS)} (benchmarks/standins.py)")
    return spec


def build_hub_dataset(key: str, out_dir: Path, shared: Path, sizes: Optional[dict[str, int]] = None) -> Path:
    """Write the stand-in of a hub dataset into ``out_dir``: one ``<split>.jsonl`` per split of the hub dataset
    (``{train,validation,test}``, or ``HubDataset.splits``), with its columns, read by
    ``datasets.load_dataset(out_dir)``. ``key`` is a ``conf/data`` group (``HUB_DATASETS``) or a hub name
    (``PRESET_DATASETS``); ``sizes`` overrides the rows of some splits (the harness's unit test). Returns
    ``out_dir``."""
    spec = dataset_spec(key)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, n in {s: (sizes or {}).get(s, n) for s, n in spec.splits.items()}.items():
        rows = spec.rows(shared, split, n)
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out_dir / "STANDIN.md").write_text(f"Stand-in for the hub dataset {spec.hub} ({key}): columns "
                                        f"{spec.columns}; rows from ../shared/data: {spec.source}.\n", encoding="utf-8")
    return out_dir


def build_rocstories(out_dir: Path, shared: Path, sizes: Optional[dict[str, int]] = None,
                     sentences: int = 5) -> dict[str, Path]:
    """ROCStories-shaped files (``train.txt``, ``valid.txt``, ``test.txt``: one five-sentence story per line,
    made of consecutive Tatoeba sentences). Returns ``{"train": path, "valid": path, "test": path}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in {**SPLIT_SIZES, **(sizes or {})}.items():
        name = {"train": "train", "validation": "valid", "test": "test"}[split]
        lines = _lines(shared / "tatoeba_en" / f"{name}.txt", n * sentences)
        random.Random(0).shuffle(lines)
        stories = [" ".join(lines[i:i + sentences]) for i in range(0, len(lines) - sentences + 1, sentences)]
        paths[name] = out_dir / f"{name}.txt"
        paths[name].write_text("\n".join(stories) + "\n", encoding="utf-8")
    return paths


FILE_DATASETS = {"rocstories": "ROCStories (distributed on request, not on the hub): five Tatoeba sentences a line"}
"""``conf/data`` files whose corpus the user supplies as files (``train_path: ???``), and their stand-ins."""

"""``make test-presets`` (benchmarks/presets.py, benchmarks/standins.py, benchmarks/preset_probe.py) kept from
rotting: its stand-ins have the hub layouts, its catalogue covers every hub name, hub dataset and user-supplied
corpus in conf/, its probe measures what it says, and the driver runs one preset end to end (at a reduced size:
``--override``, allowed only with another ``--out``)."""
import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from benchmarks import presets, standins
from benchmarks.preset_probe import StepProbe, module_bytes

CONF = Path(presets.CONF_DIR)


# ----- stand-ins ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", [("bert-base-uncased", 109_514_298), ("facebook/bart-base", 139_420_416),
                                         ("gpt2", 124_439_808)])
def test_hub_configs_give_the_hub_architectures(name, params):
    """The configuration values reproduce the hub model exactly (its published parameter count)."""
    import transformers

    hub = standins.HUB_MODELS[name]
    arch = getattr(transformers, hub.architecture)
    with torch.device("meta"):
        net = arch(arch.config_class(**hub.config))
    assert sum(p.numel() for p in net.parameters()) == params


@pytest.mark.parametrize("name", sorted(standins.HUB_MODELS))
def test_hub_model_standin_loads_like_the_hub(name, tmp_path, shared_data):
    """A (shrunk) stand-in directory loads through the project's own paths: the architecture class, the
    tokenizer with the hub vocabulary size and special ids, the hub's other configuration values."""
    import transformers

    from textdiff.data.tokenizers import load_tokenizer
    from textdiff.nn.hf import build_hf_model

    hub = standins.HUB_MODELS[name]
    small = {"BertForMaskedLM": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                 "intermediate_size": 32},
             "BartForConditionalGeneration": {"d_model": 16, "encoder_layers": 1, "decoder_layers": 1,
                                              "encoder_attention_heads": 2, "decoder_attention_heads": 2,
                                              "encoder_ffn_dim": 32, "decoder_ffn_dim": 32},
             "GPT2LMHeadModel": {"n_embd": 16, "n_layer": 1, "n_head": 2}}[hub.architecture]
    texts = standins.english_text(shared_data, 300)
    out = standins.build_hub_model(name, tmp_path / "hub", texts, small)
    arch = getattr(transformers, hub.architecture)
    model = build_hf_model(str(out), arch, arch.config_class, vocab_size=hub.vocab_size)
    assert type(model) is arch
    for key, value in hub.config.items():
        if key not in small:
            assert getattr(model.config, key) == value, key
    for key, value in hub.generation.items():
        assert getattr(model.generation_config, key) == value, key
    tok = load_tokenizer(out)
    assert tok.vocab_size == hub.vocab_size
    assert {t: tok.hf.convert_tokens_to_ids(t) for t in hub.specials} == hub.specials
    ids = tok.encode("The restaurant is near the river.")
    assert ids and max(ids) < hub.vocab_size and tok.unk_id not in ids
    assert tok.decode(ids).lower().replace(" ", "") == "therestaurantisneartheriver."


def test_pad_vocabulary_keeps_the_encoding(shared_data):
    from textdiff.data.tokenizers import build_bpe_tokenizer

    texts = standins.english_text(shared_data, 200)
    tok = build_bpe_tokenizer(texts, vocab_size=400)
    padded = standins.pad_vocabulary(tok, 1000)
    assert padded.vocab_size == 1000
    assert [padded.encode(t) for t in texts[:20]] == [tok.encode(t) for t in texts[:20]]
    assert (padded.pad_id, padded.bos_id, padded.eos_id, padded.mask_id) == (tok.pad_id, tok.bos_id, tok.eos_id,
                                                                              tok.mask_id)
    with pytest.raises(standins.StandInError, match="more than"):
        standins.pad_vocabulary(tok, 100)


def _fields(group):
    data = OmegaConf.load(CONF / "data" / f"{group}.yaml")
    names = [data.get(k) for k in ("field", "label_field", "src_field", "tgt_field")]
    return [n for n in names if n], dict(data.get("hf_splits") or {"train": "train", "valid": "validation",
                                                                     "test": "test"}), data.get("label_field")


@pytest.mark.parametrize("group", sorted(standins.HUB_DATASETS))
def test_dataset_standin_has_the_hub_columns(group, tmp_path, shared_data):
    """Every split file holds the columns the data config reads (nested ``translation.xx`` included)."""
    from textdiff.data.sources import _get_field

    folder = standins.build_hub_dataset(group, tmp_path / group, shared_data, {"train": 5, "validation": 3, "test": 3})
    fields, splits, label = _fields(group)
    for split in ("train", "validation", "test"):
        rows = [json.loads(s) for s in (folder / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == {"train": 5}.get(split, 3)
        for row in rows:
            for f in fields:
                _get_field(row, f, f"{group}/{split}", int_fields=[label] if label else [])
    assert all(s.split("[")[0] in ("train", "validation", "test") for s in splits.values())


def test_dataset_standin_loads_through_load_hf_split(tmp_path, shared_data, monkeypatch):
    """The DataModules' hub path reads a stand-in folder: split slicing, nested fields and integer labels."""
    from textdiff.data.sources import load_hf_split

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    news = standins.build_hub_dataset("ag_news", tmp_path / "ag", shared_data, {"train": 8, "validation": 4,
                                                                               "test": 6})
    rows = load_hf_split(str(news), "test[:4]", ["text", "label"], int_fields=["label"])
    assert len(rows) == 4 and [r[1] for r in rows] == ["0", "1", "2", "3"]
    mt = standins.build_hub_dataset("iwslt14_de_en", tmp_path / "mt", shared_data, {"train": 4, "validation": 2,
                                                                                   "test": 2})
    pairs = load_hf_split(str(mt), "train", ["translation.de", "translation.en"])
    assert len(pairs) == 4 and all(de and en and de != en for de, en in pairs)


def test_openwebtext_standin_runs_the_presets_split_strings(tmp_path, shared_data, monkeypatch):
    """OpenWebText has one split; mdlm_owt holds out its last 100k documents. The stand-in has more rows than
    that (so ``train[:-100000]`` is not empty), and a small one reads through the same slicing."""
    from textdiff.data.sources import load_hf_split

    cfg, _ = presets.compose(["experiment=mdlm_owt"])
    spec = standins.PRESET_DATASETS[cfg.data.hf_dataset]
    held_out = int(re.fullmatch(r"train\[-(\d+):\]", cfg.data.hf_splits.valid).group(1))
    assert cfg.data.hf_splits.train == f"train[:-{held_out}]" and spec.splits["train"] > held_out
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    folder = standins.build_hub_dataset(cfg.data.hf_dataset, tmp_path / "owt", shared_data, {"train": 12})
    assert sorted(p.name for p in folder.glob("*.jsonl")) == ["train.jsonl"]
    train, valid = (load_hf_split(str(folder), s, [cfg.data.field]) for s in ("train[:-5]", "train[-5:]"))
    assert len(train) == 7 and len(valid) == 5
    sentences = [s for (text,) in train for s in re.split(r"(?<=[.!?])\s", text)]
    assert len(sentences) >= 7 * standins.OPENWEBTEXT_SENTENCES  # multi-sentence documents


def test_rocstories_standin_is_five_sentences_a_line(tmp_path, shared_data):
    paths = standins.build_rocstories(tmp_path, shared_data, {"train": 10, "validation": 5, "test": 5})
    lines = paths["train"].read_text().splitlines()
    assert len(lines) == 10 and set(paths) == {"train", "valid", "test"}


# ----- the catalogue covers conf/ ----------------------------------------------------------------------------
def test_every_hub_dataset_and_user_corpus_has_a_standin():
    for path in sorted((CONF / "data").glob("*.yaml")):
        data = OmegaConf.load(path)
        if data.get("hf_dataset"):
            assert path.stem in standins.HUB_DATASETS, f"{path.name}: hub dataset {data.hf_dataset} has no stand-in"
        if "train_path" in data and OmegaConf.is_missing(data, "train_path"):
            assert path.stem in standins.FILE_DATASETS, f"{path.name}: user-supplied corpus without a stand-in"


def test_every_hub_dataset_a_preset_names_has_a_standin():
    """Presets that set ``data.hf_dataset`` over their data group's (mdlm_owt) find a stand-in by that name."""
    groups = {OmegaConf.load(p).get("hf_dataset") for p in (CONF / "data").glob("*.yaml")}
    named = {OmegaConf.select(OmegaConf.load(p), "data.hf_dataset") for p in (CONF / "experiment").glob("*.yaml")}
    named -= groups | {None}
    assert named and named <= set(standins.PRESET_DATASETS), named - set(standins.PRESET_DATASETS)


def test_every_hub_model_name_in_conf_has_a_standin():
    """Strings that name a hub model (org/name or *-base-*) in the keys that take one have stand-ins."""
    keys = {"tokenizer", "name_or_path", "bert", "bart_path"}
    found = set()
    for path in CONF.rglob("*.yaml"):
        def walk(node):
            if isinstance(node, dict):
                for k, v in node.items():
                    if k in keys and isinstance(v, str) and not v.startswith(("$", "/", ".", "?")):
                        found.add(v)
                    walk(v)
        walk(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    assert found and found <= set(standins.HUB_MODELS), found - set(standins.HUB_MODELS)


def test_plans_name_existing_presets():
    names = set(presets.experiments())
    assert set(presets.PLANS) <= names
    for chain in presets.CHAINS.values():
        assert chain.stage1 in names and (chain.stage0 in names or chain.stage0 in standins.HUB_MODELS)
        assert chain.tokenizer is None or chain.tokenizer in presets.COMPARE_TOKENIZERS
    for plan in presets.PLANS.values():
        assert all(c is None or c in presets.CHAINS for c in (plan.chain, plan.bart_of))
    compare = presets.plan_for("compare_e2e_ld4lg_seq2seq_gpu")
    assert compare.chain == "compare_e2e_gpu" and compare.compare_tokenizer == "e2e"
    assert "compare=e2e_gpu" in compare.overrides
    assert presets.plan_for("compare_tatoeba_ar_lm_cpu").chain is None
    assert presets.plan_for("difformer_wmt14") == presets.Plan()


def test_select_and_the_not_on_cpu_marker():
    assert presets.select("ld4lg_ae_*,ar_multi30k") == ["ar_multi30k", "ld4lg_ae_e2e_cpu", "ld4lg_ae_rocstories",
                                                          "ld4lg_ae_tatoeba_cpu"]
    with pytest.raises(ValueError, match="no preset"):
        presets.select("nope_*")
    text = "# @package _global_\n# test-presets: not on CPU: needs 80 GB for one step\ndefaults: []\n"
    assert presets.NOT_ON_CPU.search(text).group(1) == "needs 80 GB for one step"
    assert presets.run_batch(64, "cpu", "32-true") == 64
    assert presets.run_batch(256, "gpu", "bf16-mixed") == presets.BF16_BATCH
    assert presets.run_batch(64, "gpu", "32-true") == presets.GPU_BATCH


def test_plan_puts_the_standins_in_place(tmp_path, shared_data, monkeypatch):
    """A hub-data preset plans onto its local stand-in and a BPE of the preset's vocabulary size; the composed
    config keeps the preset's network and lengths."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    store = presets.StandIns(tmp_path / "standins", shared_data, data_sizes={"train": 30, "validation": 5, "test": 5})
    spec = presets.plan_run("difformer_iwslt14", store, tmp_path / "run")
    overrides = spec["overrides"]
    assert overrides[0] == "experiment=difformer_iwslt14"
    assert f"data.hf_dataset={tmp_path / 'standins' / 'data' / 'iwslt14_de_en'}" in overrides
    tok_dir = tmp_path / "standins" / "tokenizers" / "iwslt14_de_en_bpe10000"
    assert f"data.tokenizer_path={tok_dir}" in overrides
    from textdiff.data.tokenizers import load_tokenizer

    assert load_tokenizer(tok_dir).vocab_size == 10000
    assert (spec["batch"], spec["precision"], spec["max_len"], spec["max_src_len"]) == (
        {"preset": 128, "run": presets.BF16_BATCH}, "bf16-mixed", 128, 128)
    cfg, _ = presets.compose([*overrides, *spec["run_overrides"]])
    assert (cfg.model.network.dim, cfg.model.network.enc_depth, cfg.trainer.max_steps) == (512, 6, presets.STEPS)
    assert cfg.data.pad_to_max and cfg.callbacks.preset_probe._target_.endswith("StepProbe")
    assert all(cfg.callbacks[k] is None for k in cfg.callbacks if k != "preset_probe")


def test_run_shape_has_no_gradient_accumulation(tmp_path):
    """MDLM's GPU presets fill a global batch of 512 by accumulation; at the run's batch of 2 a "step" was 256
    micro-batches (the probe saw 400 batches for 2 steps): the run shape turns accumulation off."""
    cfg, _ = presets.compose(["experiment=mdlm_lm1b"])
    assert cfg.global_batch_size == 512
    cfg, _ = presets.compose(["experiment=mdlm_lm1b", *presets.run_shape_overrides(cfg, 2, tmp_path)])
    assert cfg.global_batch_size is None and cfg.data.batch_size == 2 and cfg.trainer.max_steps == presets.STEPS


# ----- the probe -----------------------------------------------------------------------------------------------
class _Tiny(__import__("pytorch_lightning").LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

    def compute_loss(self, batch):
        return {"loss": self.net(batch["x"]).pow(2).mean()}

    def training_step(self, batch, batch_idx):
        return self.compute_loss(batch)["loss"]

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_step_probe_measures_the_terms(one_thread):
    import pytorch_lightning as pl

    rows = 8
    data = [{"ids": torch.zeros(rows, 4), "x": torch.randn(rows, 16)} for _ in range(2)]
    model, probe = _Tiny(), StepProbe()
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[probe])
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    assert len(probe.steps) == 2 and all(s["cpu_seconds"] >= 0 and s["rows"] == rows for s in probe.steps)
    n_params = sum(p.numel() for p in model.parameters())
    m = probe.memory
    assert m["weights"] == module_bytes(model) == 4 * n_params and m["gradients"] == 4 * n_params
    assert 8 * n_params <= m["optimizer"] <= 8 * n_params + 64 * 4  # AdamW: two fp32 states + a step per tensor
    # saved for backward, per row: the input (16) of the first Linear, the ReLU output (32, also the second
    # Linear's input) and the prediction (1) of pow, in fp32
    assert m["activations"] == rows * (16 + 32 + 1) * 4 and m["half_activations"] == rows // 2 * (16 + 32 + 1) * 4
    assert probe.activation_fit() == {"fixed": 0.0, "per_row": (16 + 32 + 1) * 4}
    est = probe.estimate(100)
    assert est["activations"] == 100 * 49 * 4
    assert est["total"] == est["weights"] + est["gradients"] + est["optimizer"] + est["activations"] + est["ema"]


# ----- the driver, end to end on one preset ----------------------------------------------------------------------
def test_driver_runs_one_preset_and_writes_json_and_table(tmp_path, shared_data):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{presets.TABLE_BEGIN}\nold\n{presets.TABLE_END}\nafter\n")
    out = tmp_path / "presets.json"
    shrink = ["model.network.dim=32", "model.network.depth=1", "model.network.heads=2",
              "data.max_train_examples=300", "data.max_eval_examples=50", "sampler.num_steps=5"]
    code = presets.main(["--only", "diffusion_lm_e2e_cpu", "--out", str(out), "--readme", str(readme),
                         "--workdir", str(tmp_path / "work"), "--batch", "8", *(f"--override={o}" for o in shrink)])
    doc = json.loads(out.read_text())
    entry = doc["presets"]["diffusion_lm_e2e_cpu"]
    assert code == 0, entry.get("traceback") or entry.get("log_tail")
    assert entry["status"] == "ok" and entry["global_step"] == 2 and len(entry["steps"]) == 2
    assert entry["batch"] == {"preset": 64, "run": 8} and entry["max_len"] == 32
    assert entry["memory"]["batch_shape"]["ids"] == [8, 32]  # padded to the preset's L
    assert entry["evaluation"]["num_sequences"] == 2
    assert entry["estimate"]["batch"] == 64 and entry["estimate"]["total"] > entry["estimate_at_run_batch"]["total"]
    assert entry["extra_overrides"] == shrink and entry["machine"]["cpus"] >= 1
    assert entry["command"] == doc["last_invocation"]["command"] and "--only diffusion_lm_e2e_cpu" in entry["command"]
    text = readme.read_text()
    assert "old" not in text and text.endswith("after\n")
    run_row = r"\| `diffusion_lm_e2e_cpu` \| [\d.]+M \| 32 \| fp32 \| 8 / 64 \| [\d.]+ \([\d.]+\) \| [\d.]+ \| ok \|"
    assert re.search(run_row, text)  # the run table
    assert re.search(r"\| `diffusion_lm_e2e_cpu` \| 64 \|( [\d.]+ \|){5} \*\*[\d.]+\*\* \|", text)  # the GPU estimate
    with pytest.raises(SystemExit):  # shrunk runs never overwrite the shipped results
        presets.main(["--only", "diffusion_lm_e2e_cpu", "--override=seed=1"])

"""Every config composes; models, data and trainers instantiate; bad keys and bad combinations fail
at start with a message that names the key."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from textdiff.cli.common import CONF_DIR, ConfigError, build, build_datamodule, register_resolvers

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
register_resolvers()


def _compose(overrides, tmp_path=None):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    if tmp_path is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
    return cfg


TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 160}


@pytest.fixture(scope="module")
def local_bert(tmp_path_factory):
    """A BERT tokenizer and a tiny BertForMaskedLM saved locally, standing in for hub names offline."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    root = tmp_path_factory.mktemp("bert")
    words = "the a of to and is in it you that he was for on are with as i his they be at".split()
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate((root / "vocab.txt").read_text().split())})
    tok.save_pretrained(root / "tokenizer")
    BertForMaskedLM(BertConfig(vocab_size=len(tok), **TINY_BERT)).save_pretrained(root / "model")
    return root


@pytest.fixture(scope="module")
def ld4lg_assets(tmp_path_factory, shared_data):
    """Stand-ins for LD4LG's stage-0 export and stage-1 checkpoint (the presets take them as ??? keys)."""
    from tests.helpers import save_ld4lg_assets

    texts = (shared_data / "tatoeba_en" / "train.txt").read_text(encoding="utf-8").splitlines()[:300]
    return save_ld4lg_assets(tmp_path_factory.mktemp("ld4lg"), texts)


@pytest.fixture(scope="module")
def dlm_run(tmp_path_factory, shared_data):
    """An untrained Diffusion-LM run directory of the E2E CPU preset (config.yaml, tokenizer/, last.ckpt): the
    stand-in for the control preset's ``model.diffusion.checkpoint``."""
    import pytorch_lightning as pl

    run_dir = tmp_path_factory.mktemp("dlm")
    cfg = _compose(["experiment=diffusion_lm_e2e_cpu", "data.max_train_examples=300", "data.max_eval_examples=50",
                    "model.network.dim=32", "model.network.depth=1", "model.network.heads=2"], run_dir)
    build_datamodule(cfg, run_dir)
    model = build(cfg, "model")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    trainer = pl.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_builds(experiment, shared_data, tmp_path, local_bert, ld4lg_assets, dlm_run):
    overrides = ([f"model.diffusion.checkpoint={dlm_run}"] if experiment.endswith(("_control_cpu", "_length_cpu"))
                 else [])
    if experiment.startswith("compare_"):  # the comparison's shared tokenizer and LD4LG autoencoder
        ae_ckpt = Path(ld4lg_assets[1])  # <run>/checkpoints/last.ckpt; LD4LG needs its BART's tokenizer <run>/tokenizer
        tok = ae_ckpt.parent.parent / "tokenizer" if "ld4lg" in experiment else tmp_path / "tokenizer"
        table, scale = experiment.split("_")[1], experiment.rsplit("_", 1)[1]
        overrides += [f"compare={table}_{scale}", f"compare.tokenizer={tok}", f"compare.ld4lg_autoencoder={ae_ckpt}"]
        overrides += ["model.network.latent_dim=8", "model.network.max_len=4"] if "ld4lg" in experiment else []
        overrides += ["model.network.context_dim=32"] if "seq2seq" in experiment else []  # the stand-in's d_model
    cfg = _compose([f"experiment={experiment}", "data.max_train_examples=300", "data.max_eval_examples=50",
                    *overrides], tmp_path)
    bart_dir, ae_ckpt = ld4lg_assets
    with open_dict(cfg):  # LD4LG: stand-ins for the stage-0 export / hub BART and the stage-1 checkpoint
        for key, value in (("bart_path", bart_dir), ("autoencoder_path", ae_ckpt)):
            if key in cfg.model.keys() and (OmegaConf.is_missing(cfg.model, key)
                                            or cfg.model[key] == "facebook/bart-base"):
                cfg.model[key] = str(value)  # (`key in cfg` is False for ??? values, hence keys())
                if "latent_dim" in cfg.model.get("network", {}):  # LD4LG stage 2's latent network
                    cfg.model.network.update(latent_dim=8, max_len=4)
                    if cfg.model.network.context_dim:
                        cfg.model.network.context_dim = 32  # the stand-in BART's d_model
        if OmegaConf.select(cfg, "data.tokenizer") == "facebook/bart-base":
            cfg.data.tokenizer = str(bart_dir)
        if "train_path" in cfg.data.keys() and OmegaConf.is_missing(cfg.data, "train_path"):  # ROCStories: files
            cfg.data.update({f"{s}_path": str(shared_data / "tatoeba_en" / f"{s}.txt")
                             for s in ("train", "valid", "test")})
        if OmegaConf.select(cfg, "data.hf_dataset") and OmegaConf.select(cfg, "data.label_field"):  # AG News
            cfg.data.update(hf_dataset=None, hf_config=None, field="ref", label_field="mr", label_slot="eatType",
                            **{f"{s}_path": str(shared_data / "e2e" / f"{s}.jsonl")
                               for s in ("train", "valid", "test")})
    hub_bert = isinstance(OmegaConf.select(cfg, "model.network.bert"), str)
    tok = OmegaConf.select(cfg, "data.tokenizer")
    hub_tok = ((isinstance(tok, str) and not Path(tok).exists())  # a hub name, or an HFTokenizer of one (MDLM's OWT)
               or (isinstance(tok, DictConfig) and str(tok.get("_target_", "")).endswith("HFTokenizer")))
    if hub_bert or hub_tok:  # a hub-named preset: the same loading path, from local directories
        with open_dict(cfg):
            cfg.data.tokenizer = str(local_bert / "tokenizer")
            if hub_bert:
                cfg.model.network.bert = str(local_bert / "model")
    if OmegaConf.select(cfg, "data.hf_dataset") and OmegaConf.select(cfg, "data.src_field"):
        with open_dict(cfg):  # a hub-named seq2seq preset: the same datamodule on local Multi30k files
            cfg.data.update(hf_dataset=None, hf_config=None, src_field=None, tgt_field=None, src_suffix="de",
                            tgt_suffix="en", **{f"{s}_path": str(shared_data / "multi30k" / "raw" / n)
                                                for s, n in (("train", "train"), ("valid", "valid"), ("test", "test"))})
    dm = build_datamodule(cfg, tmp_path)
    assert cfg.data.vocab_size == dm.vocab_size > 10
    from textdiff.run.evaluation import text_layout  # OpenWebText's samples cut documents: every part is scored

    assert text_layout(dm)["partial"] == (experiment == "mdlm_owt")
    with open_dict(cfg):  # shrink the network so that paper-scale configs instantiate quickly
        if "depth" in cfg.model.get("network", {}):  # Diffusion-LM, LD4LG
            cfg.model.network.update(dim=32, depth=1, heads=2)
        if "network" in cfg.model and "enc_depth" in cfg.model.network:  # Difformer, AR (enc_depth 0 = LM)
            cfg.model.network.update(dim=32, enc_depth=min(1, cfg.model.network.enc_depth), dec_depth=1, heads=2,
                                     ffn_dim=64)
        if "bert" in cfg.model.get("network", {}) and not hub_bert:  # DiffusionBERT
            cfg.model.network.bert.update(TINY_BERT, max_position_embeddings=max(  # MDLM's OWT: max_len 1024
                TINY_BERT["max_position_embeddings"], int(cfg.data.max_len) + 1))
    model = build(cfg, "model")
    vocab = model.vocab_size if hasattr(model, "vocab_size") else model.network.vocab_size
    assert vocab == dm.vocab_size
    if hasattr(model, "build_sampler"):  # diffusion families (not the AR baseline)
        assert model.build_sampler().num_steps == cfg.sampler.num_steps
    with open_dict(cfg):
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.precision = "32-true"
    trainer = build(cfg, "trainer", logger=False)
    assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("schedule", ["sqrt", "cosine", "cosine_squared", "ddpm_linear", "vp_linear"])
def test_gaussian_schedules_compose(schedule, tmp_path):
    cfg = _compose([f"schedule={schedule}"], tmp_path)
    sched = build(cfg, "schedule")
    assert sched.num_steps == 2000  # discretised to diffusion_steps
    cont = build(_compose([f"schedule={schedule}", "diffusion_steps=null"] if schedule != "ddpm_linear"
                          else ["schedule=cosine", "diffusion_steps=null"], tmp_path), "schedule")
    assert not hasattr(cont, "num_steps") or schedule == "ddpm_linear"


def test_absorbing_schedules_end_at_zero(tmp_path):
    import torch

    for name in ("mutual", "loglinear"):
        sched = build(_compose([f"schedule={name}"], tmp_path), "schedule")
        assert sched.alpha_bar(torch.tensor([1.0])).item() < 2e-3


def test_spindle_on_a_gaussian_family_names_the_key(tmp_path):
    cfg = _compose(["schedule=spindle"], tmp_path)
    with open_dict(cfg):
        cfg.data.vocab_size = 50
    with pytest.raises(ConfigError, match=r"`model\.process`.*SpindleSchedule is token-dependent"):
        build(cfg, "model")


def test_unknown_key_is_rejected_with_its_name():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        _compose(["model.no_such_key=1"])


def test_vocab_size_mismatch_names_the_key(shared_data, tmp_path):
    cfg = _compose(["data=e2e", "data.max_train_examples=200", "data.vocab_size=7"], tmp_path)
    with pytest.raises(ConfigError, match=r"data\.vocab_size=7"):
        build_datamodule(cfg, tmp_path)


def test_slurm_launcher_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert OmegaConf.select(cfg, "trainer.devices") == 4 and OmegaConf.select(cfg, "trainer.strategy") == "ddp"


def test_parallel_launcher_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=parallel", "hydra.launcher.n_jobs=3"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 3


def test_every_group_file_parses():
    for path in Path(CONF_DIR).rglob("*.yaml"):
        OmegaConf.load(path)


@pytest.mark.parametrize("variant", sorted(p.stem for p in (CONF_DIR / "variant").glob("difformer_*.yaml")))
def test_difformer_variants_build(variant, shared_data, tmp_path):
    cfg = _compose(["experiment=difformer_multi30k_cpu", f"variant={variant}", "data.max_train_examples=200",
                    "data.max_eval_examples=20", "model.network.dim=32", "model.network.enc_depth=1",
                    "model.network.dec_depth=1", "model.network.heads=2", "model.network.ffn_dim=64"], tmp_path)
    build_datamodule(cfg, tmp_path)
    model = build(cfg, "model")
    assert model.process.noise_factor == (1.0 if "noise_factor" in variant or "dlm" in variant else 4.0)
    assert model.network.embedding.weight.requires_grad == ("fixed" not in variant)
    assert (model.network.embed_norm is None) == ("embed_norm" in variant or "dlm" in variant)
    assert model.token_loss == {"no_anchor": "none", "dlm": "rounding"}.get(
        next((k for k in ("no_anchor", "dlm") if k in variant), ""), "anchor")


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
@pytest.mark.parametrize("table,families", [
    ("tatoeba", {"Autoregressive", "DiffusionLM", "DiffusionBERT", "LD4LG", "MDLM", "DegenerateReference"}),
    ("e2e", {"Autoregressive", "DiffusionLM", "DiffusionBERT", "LD4LG", "Difformer", "MDLM", "DegenerateReference"}),
])
def test_comparison_entrants_share_one_budget(table, families, scale):
    """Every entrant of a cross-family comparison table trains and is scored under the same budget: data,
    tokenizer, optimizer steps x batch, learning-rate warm-up, evaluation and judge; only the model (and, on E2E,
    whether the MR is given) differs. One multirun (ablation=compare_<table>_<scale>) runs them all."""
    entrants = sorted(p.stem for p in (CONF_DIR / "experiment").glob(f"compare_{table}_*_{scale}.yaml"))
    keys = ("data.train_path", "data.max_len", "data.batch_size", "data.tokenizer_path", "data.tokenizer.min_count",
            "data.tokenizer.add_mask_token", "trainer.max_steps", "trainer.accumulate_grad_batches", "eval.split",
            "eval.num_samples", "eval.seed", "eval.lm", "seed", "trainer.accelerator", "trainer.precision",
            "model.lr_scheduler.warmup_steps")
    seen, found = {}, set()
    for name in entrants:
        cfg = _compose([f"experiment={name}", f"compare={table}_{scale}", "compare.judge=/judge",
                        "compare.tokenizer=/cmp/tokenizer", "compare.ld4lg_autoencoder=/cmp/ae/checkpoints/last.ckpt"])
        seen[name] = tuple(OmegaConf.select(cfg, k) for k in keys)
        found.add(cfg.model._target_.split(".")[-1])
        assert cfg.task_name == name
    assert found == families
    assert len(set(seen.values())) == 1, seen
    assert dict(zip(keys, next(iter(seen.values()))))["eval.lm"] == "/judge"
    # the multirun: its config is first composed without the swept experiment, so compare.* must exist there;
    # then each job adds one entrant, and the ablation's budget agrees with the entrant's
    # the warm-up follows the steps (a fifth, td.div) unless it is set
    sweep = [f"ablation=compare_{table}_{scale}", "compare.steps=12", "compare.judge=/judge",
             "compare.tokenizer=/cmp/tokenizer"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=sweep, return_hydra_config=True)
    assert cfg.hydra.sweeper.params.experiment == f"glob(compare_{table}_*_{scale})" and cfg.trainer.max_steps == 12
    for name in entrants:
        cfg = _compose([*sweep, f"experiment={name}", "compare.ld4lg_autoencoder=/cmp/ae/checkpoints/last.ckpt"])
        assert (cfg.trainer.max_steps, cfg.model.lr_scheduler.warmup_steps) == (12, 2)
        assert (cfg.data.tokenizer_path, cfg.eval.lm) == ("/cmp/tokenizer", "/judge")
        assert cfg.task_name == name
        override = _compose([*sweep, "compare.warmup_steps=5", f"experiment={name}",
                             "compare.ld4lg_autoencoder=/cmp/ae/checkpoints/last.ckpt"])
        assert override.model.lr_scheduler.warmup_steps == 5

"""Rebuilding saved runs (``textdiff.cli.runs``): a run saved before classes moved still loads, and a config
hands a model another trained model, built (the NoisyClassifier's diffusion model)."""
from __future__ import annotations

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from textdiff.cli.common import CONF_DIR, build, build_datamodule, register_resolvers
from textdiff.cli.runs import MOVED_TARGETS, load_model, load_run, upgrade_config

register_resolvers()


def _saved_run(tmp_path, overrides=()):
    """A run directory as textdiff-train leaves it: resolved config.yaml, tokenizer/, a checkpoint of the
    (untrained, seeded) model with its family tag."""
    run_dir = tmp_path / "run"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=toy", f"paths.output_dir={run_dir}", *overrides])
    build_datamodule(cfg, run_dir)
    torch.manual_seed(0)
    model = build(cfg, "model")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    (run_dir / "checkpoints").mkdir()
    torch.save({"state_dict": model.state_dict(), "textdiff": {"family": type(model).__name__}},
               run_dir / "checkpoints" / "last.ckpt")
    return run_dir, model


def test_a_run_saved_with_the_old_module_paths_still_loads(tmp_path):
    run_dir, model = _saved_run(tmp_path)
    text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    old = text
    for before, after in MOVED_TARGETS.items():
        old = old.replace(after, before)
    assert "textdiff.optim." in old and "textdiff.callbacks." in old and old != text
    (run_dir / "config.yaml").write_text(old, encoding="utf-8")
    loaded, dm, cfg, path = load_run(run_dir, "last")
    assert cfg.model.lr_scheduler._target_.startswith("textdiff.families.optim.")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert loaded.lr_scheduler_factory.func.__module__ == "textdiff.families.optim"  # the moved factory was built


def test_upgrade_config_turns_a_diffusion_path_into_a_built_model_node():
    cfg = OmegaConf.create({"model": {"_target_": "textdiff.families.NoisyClassifier",
                                      "diffusion_path": "r/checkpoints/last.ckpt",
                                      "tokenizer": "${td.run_dir_of:r/checkpoints/last.ckpt}"},
                            "trainer": {"plugins": [{"_target_": "textdiff.checkpoint.AtomicCheckpointIO"}]}})
    upgrade_config(cfg)
    assert "diffusion_path" not in cfg.model
    assert OmegaConf.to_container(cfg.model.diffusion) == {"_target_": "textdiff.cli.runs.load_model",
                                                           "checkpoint": "r/checkpoints/last.ckpt"}
    assert cfg.trainer.plugins[0]._target_ == "textdiff.run.checkpoint.AtomicCheckpointIO"
    assert OmegaConf.is_interpolation(cfg.model, "tokenizer")  # nothing was resolved on the way


def test_load_model_rebuilds_the_model_of_a_checkpoint(tmp_path):
    run_dir, model = _saved_run(tmp_path)
    loaded = load_model(str(run_dir / "checkpoints" / "last.ckpt"))
    assert type(loaded) is type(model) and not loaded.training
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def _to_old_names(run_dir, model_key, weight_prefix):
    """Rewrite a saved run as textdiff saved it before every family's network was called ``network``."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg.model[model_key] = cfg.model.network
    cfg.model.pop("network")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=False)
    old = {weight_prefix + k[len("network."):] if k.startswith("network.") else k: v
           for k, v in ckpt["state_dict"].items()}
    ckpt["state_dict"], ckpt["current_model_state"] = old, dict(old)  # with EMA, the raw weights are saved too
    torch.save(ckpt, path)
    return ckpt


def test_a_run_saved_with_the_old_network_names_still_loads(tmp_path):
    run_dir, model = _saved_run(tmp_path)  # Diffusion-LM (data=toy's default model): model.denoiser, denoiser.*
    ckpt = _to_old_names(run_dir, "denoiser", "denoiser.")
    assert any(k.startswith("denoiser.") for k in ckpt["state_dict"])
    loaded, _, cfg, _ = load_run(run_dir, "last")
    assert "denoiser" not in cfg.model and cfg.model.network._target_ == "textdiff.nn.TransformerDenoiser"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    # what Lightning hands on_load_checkpoint when it resumes: both copies of the weights are renamed
    loaded.on_load_checkpoint(ckpt)
    assert set(ckpt["state_dict"]) == set(ckpt["current_model_state"]) == set(model.state_dict())


def test_upgrade_weights_renames_inside_a_wrapped_family():
    from textdiff.families.base import TextModule

    class Old(TextModule):
        renamed_weights = {"backbone.": "network."}

        def __init__(self):
            super().__init__()
            self.network = torch.nn.Linear(2, 2)

        def compute_loss(self, batch):
            return {}

    class Wrapper(TextModule):
        def __init__(self):
            super().__init__()
            self.diffusion, self.backbone = Old(), torch.nn.Linear(2, 2)

        def compute_loss(self, batch):
            return {}

    state = {"diffusion.backbone.weight": 1, "diffusion.backbone.bias": 2, "backbone.weight": 3}
    assert Wrapper().upgrade_weights(state) == 2
    assert state == {"diffusion.network.weight": 1, "diffusion.network.bias": 2, "backbone.weight": 3}

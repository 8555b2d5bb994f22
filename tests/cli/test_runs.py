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

"""``trainer=fsdp``: the config composes and its FSDPStrategy instantiates with the settings docs/scale.md
promises (full-state checkpoints, original parameters, one FSDP unit per Transformer block of each family).
FSDP itself cannot run here: Lightning refuses it without a GPU (checked below, so a Lightning that lifts the
limit shows up and a CPU ``fsdp_sim`` can then be added next to ``ddp_sim``)."""
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from textdiff.cli.common import CONF_DIR, ConfigError, build, register_resolvers

register_resolvers()


def _compose(overrides, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["trainer=fsdp", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


def test_fsdp_strategy_settings(tmp_path):
    from pytorch_lightning.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    cfg = _compose([], tmp_path)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.use_distributed_sampler
    strategy = build(cfg, "trainer.strategy")  # built, not started: no process group, no device
    assert type(strategy) is FSDPStrategy
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy._state_dict_type == "full"  # one checkpoint file that one process reloads
    assert strategy.kwargs["use_orig_params"] is True  # frozen + trainable in a unit; parameter groups
    assert strategy.mixed_precision is None  # left to trainer.precision
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)

    # which modules become FSDP units: LD4LG's denoiser layers and its frozen BART's layers, nothing above them
    from tests.families.test_ld4lg import _ld4lg
    from textdiff.nn import TransformerDenoiser

    model = _ld4lg()
    units = {name for name, m in model.named_modules() if policy(m, recurse=False)}
    assert units == {"network.layers.0", "network.layers.1", "autoencoder.bart.model.encoder.layers.0",
                     "autoencoder.bart.model.decoder.layers.0"}
    net = TransformerDenoiser(in_dim=8, dim=16, depth=2, heads=2)  # Diffusion-LM's network
    assert {name for name, m in net.named_modules() if policy(m, recurse=False)} == {"layers.0", "layers.1"}


def test_the_readme_overrides_for_rank_zero_work_compose(tmp_path):
    cfg = _compose(["callbacks.sample_and_score=null", "evaluate=false"], tmp_path)
    assert cfg.callbacks.sample_and_score is None and cfg.evaluate is False  # textdiff-train skips null callbacks


def test_fsdp_needs_a_gpu(tmp_path):
    cfg = _compose(["trainer.accelerator=cpu", "trainer.devices=2"], tmp_path)
    with pytest.raises(ConfigError, match="requires a GPU accelerator"):
        build(cfg, "trainer", logger=False)
    if not torch.cuda.is_available():  # the GPU preset as it is: no GPU here
        with pytest.raises(ConfigError, match="trainer"):
            build(_compose([], tmp_path), "trainer", logger=False)

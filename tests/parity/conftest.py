"""Shared pieces of the parity suite: compose a shipped preset as ``textdiff-train`` does."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from textdiff.cli.common import CONF_DIR, register_resolvers

register_resolvers()


def compose_preset(overrides, output_dir=None):
    """The config ``textdiff-train <overrides>`` runs (``conf/train.yaml`` and the given overrides)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def preset():
    return compose_preset

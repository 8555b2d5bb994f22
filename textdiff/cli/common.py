"""What both CLI entry points share: resolvers, config-error reporting, building runs from a config.

This package is the only place that imports Hydra/OmegaConf (DECISIONS.md item 9).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("textdiff")

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class ConfigError(ValueError):
    """A configuration problem, with the config key (and group choice) that caused it."""


def register_resolvers() -> None:
    """``${td.shared_data:}`` -> the shared corpora folder; ``${td.toy_corpus:train}`` -> a split of the
    synthetic corpus (created on first use)."""
    from textdiff.data.paths import shared_data_dir

    def toy(split: str) -> str:
        from textdiff.data.synthetic import toy_corpus_dir

        return str(toy_corpus_dir() / f"{split}.txt")

    OmegaConf.register_new_resolver("td.shared_data", lambda: str(shared_data_dir()), replace=True)
    OmegaConf.register_new_resolver("td.toy_corpus", toy, replace=True)


def _choices() -> dict[str, str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    except Exception:  # noqa: BLE001 - no Hydra context (tests, Python use)
        return {}


def build(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg[key])`` with errors that name the key and the group choices."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node = OmegaConf.select(cfg, key)
    if node is None:
        raise ConfigError(f"config has no `{key}` (is the `{key.split('.')[0]}` group selected?)")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        chosen = ", ".join(f"{g}={c}" for g, c in _choices().items() if g.split("/")[0] in (
            "model", "schedule", "sampler", "data", "trainer", "experiment")) or "defaults"
        cause = err.__cause__ or err
        found = re.search(r"full_key: (\S+)", str(err))
        full_key = found.group(1) if found else key
        raise ConfigError(f"cannot build `{full_key}` ({chosen}): {type(cause).__name__}: {cause}") from err
    except Exception as err:  # interpolation/missing-value errors from OmegaConf
        raise ConfigError(f"cannot build `{key}`: {type(err).__name__}: {err}") from err


def build_datamodule(cfg: DictConfig, run_dir: Optional[Path]) -> Any:
    """Build the DataModule and its tokenizer; fill ``data.vocab_size`` (checking a set value) and
    ``tokens.*`` (the special-token ids)."""
    kwargs = {}
    if run_dir is not None and not OmegaConf.select(cfg, "data.tokenizer_path"):
        kwargs["tokenizer_path"] = str(run_dir / "tokenizer")
    dm = build(cfg, "data", **kwargs)
    tokenizer = dm.build_tokenizer()
    set_size = OmegaConf.select(cfg, "data.vocab_size")
    if set_size is not None and int(set_size) != tokenizer.vocab_size:
        raise ConfigError(
            f"data.vocab_size={set_size} but the tokenizer has {tokenizer.vocab_size} tokens; "
            "remove data.vocab_size (it is filled in) or fix it"
        )
    with open_dict(cfg):
        cfg.data.vocab_size = tokenizer.vocab_size
        cfg.tokens = {k: getattr(tokenizer, k, None) for k in ("pad_id", "bos_id", "eos_id", "unk_id", "mask_id")}
        if "tokenizer_path" in kwargs:
            cfg.data.tokenizer_path = kwargs["tokenizer_path"]
    return dm


def configure_logging() -> None:
    """Readable INFO logs for textdiff; quiet the noisy libraries."""
    logging.getLogger("textdiff").setLevel(logging.INFO)
    for noisy in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def resolve_device(name: str) -> str:
    """"auto" -> "cuda" when available, else "cpu"."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name

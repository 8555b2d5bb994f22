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
    synthetic corpus (created on first use); ``${td.run_dir_of:<run>/checkpoints/x.ckpt}`` -> ``<run>`` (the run
    directory that holds a checkpoint, e.g. to reuse its tokenizer)."""
    from textdiff.data.paths import shared_data_dir

    def toy(split: str) -> str:
        from textdiff.data.synthetic import toy_corpus_dir

        return str(toy_corpus_dir() / f"{split}.txt")

    OmegaConf.register_new_resolver("td.shared_data", lambda: str(shared_data_dir()), replace=True)
    OmegaConf.register_new_resolver("td.toy_corpus", toy, replace=True)
    OmegaConf.register_new_resolver("td.run_dir_of", run_dir_of, replace=True)


def run_dir_of(checkpoint: str) -> str:
    """The run directory of a checkpoint path: ``<run>/checkpoints/last.ckpt`` -> ``<run>``."""
    path = Path(str(checkpoint))
    if path.parent.name != "checkpoints":
        raise ConfigError(f"{checkpoint} is not inside a run's checkpoints/ directory (expected "
                          "<run_dir>/checkpoints/<name>.ckpt)")
    return str(path.parent.parent)


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
    """Build the DataModule and its tokenizer; fill ``data.vocab_size`` (checking a set value),
    ``data.num_classes`` (the number of label classes, 0 for unlabelled data; a set value is checked) and
    ``tokens.*`` (the special-token ids). ``data.num_classes`` is a filled-in value, not a DataModule
    argument: it is held out of the DataModule's arguments (so a saved config.yaml rebuilds any DataModule)."""
    kwargs = {}
    if run_dir is not None and not OmegaConf.select(cfg, "data.tokenizer_path"):
        kwargs["tokenizer_path"] = str(run_dir / "tokenizer")
    data_node = OmegaConf.select(cfg, "data")
    has_classes = isinstance(data_node, DictConfig) and "num_classes" in data_node
    set_classes = OmegaConf.select(cfg, "data.num_classes") if has_classes else None
    if has_classes:
        with open_dict(cfg):
            cfg.data.pop("num_classes")
    try:
        dm = build(cfg, "data", **kwargs)
    finally:
        if has_classes:
            with open_dict(cfg):
                cfg.data.num_classes = set_classes
    tokenizer = dm.build_tokenizer()
    if run_dir is not None and "tokenizer_path" not in kwargs and not (run_dir / "tokenizer").exists():
        from textdiff.data.datamodule import save_tokenizer

        save_tokenizer(tokenizer, run_dir / "tokenizer")  # every run directory holds the tokenizer it used
    set_size = OmegaConf.select(cfg, "data.vocab_size")
    if set_size is not None and int(set_size) != tokenizer.vocab_size:
        raise ConfigError(
            f"data.vocab_size={set_size} but the tokenizer has {tokenizer.vocab_size} tokens; "
            "remove data.vocab_size (it is filled in) or fix it"
        )
    num_classes = int(getattr(dm, "num_classes", 0) or 0)  # reads the training labels when there are any
    if set_classes is not None and int(set_classes) != num_classes:
        found = f"{num_classes} classes {dm.classes}" if num_classes else "no labels (data.label_field is unset)"
        raise ConfigError(f"data.num_classes={set_classes} but the data has {found}; remove data.num_classes "
                          "(it is filled in) or fix it")
    with open_dict(cfg):
        cfg.data.vocab_size = tokenizer.vocab_size
        cfg.data.num_classes = num_classes
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


def find_checkpoint(run_dir: Path, which: str) -> Path:
    """"best" (ModelCheckpoint's best-*.ckpt, newest if several), "last", or a path."""
    ckpt_dir = run_dir / "checkpoints"
    if which == "last":
        path = ckpt_dir / "last.ckpt"
    elif which == "best":
        best = sorted(ckpt_dir.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
        path = best[-1] if best else ckpt_dir / "last.ckpt"
    else:
        path = Path(which)
    if not path.exists():
        raise ConfigError(f"no checkpoint {path} (ckpt={which!r}; the run directory must hold checkpoints/)")
    return path


def load_run(run_dir: Path, ckpt: str = "best", device: str = "cpu") -> tuple[Any, Any, DictConfig, Path]:
    """Rebuild a run's model and datamodule from ``<run_dir>/config.yaml`` and load its checkpoint.

    Returns (model in eval mode, datamodule with its tokenizer, config, checkpoint path).
    """
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise ConfigError(f"{run_dir} has no config.yaml: is it a textdiff-train run directory?")
    cfg = OmegaConf.load(cfg_path)
    dm = build_datamodule(cfg, None)  # the resolved config points at <run_dir>/tokenizer
    model = build(cfg, "model")
    path = find_checkpoint(run_dir, ckpt)
    model.load_weights(str(path))
    model.to(device).eval()
    return model, dm, cfg, path


def load_judges(lm_run: Optional[str], classifier_run: Optional[str], device: str = "cpu",
                mauve: Optional[Any] = None) -> dict[str, Any]:
    """The judges of ``textdiff.evaluation.score_with_judges``: from their run directories (best checkpoints),
    an autoregressive language model and a ``TextClassifier``, each with its own tokenizer; ``mauve`` = the
    options of ``textdiff.metrics.mauve.mauve_score`` (e.g. ``{"model": "gpt2-large"}``) or None."""
    judges: dict[str, Any] = {}
    if mauve:
        judges["mauve"] = OmegaConf.to_container(mauve, resolve=True) if isinstance(mauve, DictConfig) else dict(mauve)
    for key, run in (("lm", lm_run), ("classifier", classifier_run)):
        if run:
            model, dm, _, _ = load_run(Path(run), "best", device)
            judges[key] = (model, dm.tokenizer)
    if "lm" in judges and getattr(judges["lm"][0], "conditional", False):
        raise ConfigError(f"the language model in {lm_run} is an encoder-decoder; train a decoder-only LM "
                          "(model.network.enc_depth=0, e.g. experiment=ar_lm_tatoeba_cpu)")
    if "classifier" in judges and not hasattr(judges["classifier"][0], "classify_texts"):
        raise ConfigError(f"{classifier_run} does not hold a TextClassifier run")
    return judges


def attach_reranker(model: Any, run_dir: Optional[str], tokenizer: Any) -> None:
    """Give ``model`` (``set_reranker``) the autoregressive model of the run in ``run_dir`` (its best
    checkpoint); nothing when ``run_dir`` is empty. Both runs must share one vocabulary (train the
    reranker with ``data.tokenizer_path=<this run>/tokenizer``): checked token by token."""
    if not run_dir:
        return
    if not hasattr(model, "set_reranker"):
        raise ConfigError(f"a reranker was given but {type(model).__name__} does not rerank candidates")
    first = next(model.parameters(), None)
    ranker, dm, _, _ = load_run(Path(run_dir), "best", str(first.device) if first is not None else "cpu")
    mine, theirs = tokenizer.vocab_size, dm.tokenizer.vocab_size
    if mine != theirs or tokenizer.convert_ids_to_tokens(range(mine)) != dm.tokenizer.convert_ids_to_tokens(range(theirs)):
        raise ConfigError(f"the reranker in {run_dir} has another vocabulary ({theirs} tokens vs {mine}); "
                          "train it with data.tokenizer_path=<this run's tokenizer directory>")
    model.set_reranker(ranker)

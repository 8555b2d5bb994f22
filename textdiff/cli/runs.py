"""Rebuilding a saved run from its directory: ``<run>/config.yaml`` (instantiated through Hydra) and a checkpoint.

Everything that needs a trained model by its run directory goes through :func:`load_run`: ``textdiff-sample``,
the judges of the evaluation, a reranker, a classifier for control, and configs that need another trained model
built (``_target_: textdiff.cli.runs.load_model``, e.g. the NoisyClassifier's diffusion model).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from textdiff.cli.common import (
    RENAMED_MODEL_KEYS, ConfigError, build, build_datamodule, check_checkpoint_family,
    checkpoint_errors_as_config_errors, run_dir_of,
)
from textdiff.families.interface import ClassifiesTexts, Reranks
from textdiff.run.checkpoint import find_checkpoint

#: ``_target_`` prefixes of classes and functions that moved, old -> new: a run saved before the move
#: (its config.yaml names the old path) still rebuilds.
MOVED_TARGETS = {
    "textdiff.optim.": "textdiff.families.optim.",
    "textdiff.checkpoint.": "textdiff.run.checkpoint.",
    "textdiff.callbacks.": "textdiff.run.callbacks.",
}


def _rewrite_targets(node: Any) -> None:
    """Replace the moved ``_target_`` prefixes of :data:`MOVED_TARGETS` in ``node`` and below (nodes, not values:
    nothing is resolved)."""
    if isinstance(node, ListConfig):
        for i in range(len(node)):
            _rewrite_targets(node._get_node(i))
    elif isinstance(node, DictConfig):
        for key in list(node.keys()):
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                _rewrite_targets(child)
            elif key == "_target_" and isinstance(child._value(), str):
                old = next((o for o in MOVED_TARGETS if child._value().startswith(o)), None)
                if old:
                    node[key] = MOVED_TARGETS[old] + child._value()[len(old):]


def upgrade_config(cfg: Any) -> Any:
    """Rewrite, in place, what a run saved by an older textdiff names differently today: the moved ``_target_``
    paths of :data:`MOVED_TARGETS`, the model keys of :data:`RENAMED_MODEL_KEYS` (``model.denoiser`` is now
    ``model.network``), and a NoisyClassifier's ``model.diffusion_path: <ckpt>`` (now
    ``model.diffusion: {_target_: textdiff.cli.runs.load_model, checkpoint: <ckpt>}``). Returns ``cfg``."""
    _rewrite_targets(cfg)
    model = cfg._get_node("model") if isinstance(cfg, DictConfig) and "model" in cfg else None
    target = model._get_node("_target_") if isinstance(model, DictConfig) and "_target_" in model else None
    old, new = RENAMED_MODEL_KEYS.get(str(target._value()).rsplit(".", 1)[-1], (None, None)) if target else (None, None)
    if old and old in model and new not in model:
        model[new] = model._get_node(old)
        model.pop(old)
    if isinstance(model, DictConfig) and "diffusion_path" in model and "diffusion" not in model:
        model["diffusion"] = {"_target_": "textdiff.cli.runs.load_model",
                              "checkpoint": model._get_node("diffusion_path")._value()}
        model.pop("diffusion_path")
    return cfg


def load_model(checkpoint: str, device: str = "cpu") -> Any:
    """The trained model of a ``textdiff-train`` checkpoint (``<run>/checkpoints/<name>.ckpt``; the run directory's
    config.yaml rebuilds it), in eval mode. For configs: ``{_target_: textdiff.cli.runs.load_model, checkpoint: ...}``
    hands a model another trained model, built (e.g. ``model.diffusion`` of ``conf/model/noisy_classifier.yaml``)."""
    model, _, _, _ = load_run(Path(run_dir_of(str(checkpoint))), str(checkpoint), device)
    return model


def load_run(run_dir: Path, ckpt: str = "best", device: str = "cpu") -> tuple[Any, Any, DictConfig, Path]:
    """Rebuild a run's model and datamodule from ``<run_dir>/config.yaml`` and load its checkpoint.

    Returns (model in eval mode, datamodule with its tokenizer, config, checkpoint path). Raises ConfigError
    (before anything is built) when the directory has no config.yaml or no such checkpoint, or when the
    checkpoint belongs to another model family than the config's.
    """
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml: is it a textdiff-train run directory?")
    try:
        cfg = OmegaConf.load(cfg_path)
    except Exception as err:  # noqa: BLE001 - YAML / OmegaConf parse errors
        raise ConfigError(f"cannot parse {cfg_path}: {type(err).__name__}: {err}") from None
    upgrade_config(cfg)
    with checkpoint_errors_as_config_errors():
        path = find_checkpoint(run_dir, ckpt)
    check_checkpoint_family(path, cfg, str(cfg_path))
    dm = build_datamodule(cfg, None)  # the resolved config points at <run_dir>/tokenizer
    model = build(cfg, "model")
    model.load_weights(str(path))
    model.to(device).eval()
    return model, dm, cfg, path


def load_judges(lm_run: Optional[str], classifier_run: Optional[str], device: str = "cpu",
                mauve: Optional[Any] = None) -> dict[str, Any]:
    """The judges of ``textdiff.run.evaluation.score_with_judges``: from their run directories (best checkpoints),
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
    if "classifier" in judges and not isinstance(judges["classifier"][0], ClassifiesTexts):
        raise ConfigError(f"{classifier_run} does not hold a TextClassifier run")
    return judges


def attach_reranker(model: Any, run_dir: Optional[str], tokenizer: Any) -> None:
    """Give ``model`` (``set_reranker``) the autoregressive model of the run in ``run_dir`` (its best
    checkpoint); nothing when ``run_dir`` is empty. Both runs must share one vocabulary (train the
    reranker with ``data.tokenizer_path=<this run>/tokenizer``): checked token by token."""
    if not run_dir:
        return
    if not isinstance(model, Reranks):
        raise ConfigError(f"a reranker was given but {type(model).__name__} does not rerank candidates")
    first = next(model.parameters(), None)
    ranker, dm, _, _ = load_run(Path(run_dir), "best", str(first.device) if first is not None else "cpu")
    mine, theirs = tokenizer.vocab_size, dm.tokenizer.vocab_size
    if (mine != theirs
        or tokenizer.convert_ids_to_tokens(range(mine)) != dm.tokenizer.convert_ids_to_tokens(range(theirs))):
        raise ConfigError(f"the reranker in {run_dir} has another vocabulary ({theirs} tokens vs {mine}); "
                          "train it with data.tokenizer_path=<this run's tokenizer directory>")
    model.set_reranker(ranker)

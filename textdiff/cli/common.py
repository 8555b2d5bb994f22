"""What every CLI entry point shares: resolvers, config-error reporting, building a run's pieces from a config
(rebuilding a *saved* run is :mod:`textdiff.cli.runs`).

This package is the only place that imports Hydra/OmegaConf (DECISIONS.md item 9).
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import typing
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from textdiff.data.sources import DataError

log = logging.getLogger("textdiff")

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class ConfigError(ValueError):
    """A configuration problem, with the config key (and group choice) that caused it."""


class RunDataError(ConfigError, DataError):
    """Bad input data met while building a run's DataModule (the message names the file and line): a
    ``ConfigError`` for the command-line tools, a ``DataError`` for Python callers."""


def register_resolvers() -> None:
    """``${td.shared_data:}`` -> the shared corpora folder; ``${td.toy_corpus:train}`` -> a split of the
    synthetic corpus (created on first use); ``${td.run_dir_of:<run>/checkpoints/x.ckpt}`` -> ``<run>`` (the run
    directory that holds a checkpoint, e.g. to reuse its tokenizer); ``${td.div:${compare.steps},5}`` -> the integer
    quotient (floor), for a count that follows another (e.g. a warm-up that is a fifth of the steps)."""
    from textdiff.data.paths import shared_data_dir

    def toy(split: str) -> str:
        from textdiff.data.synthetic import toy_corpus_dir

        return str(toy_corpus_dir() / f"{split}.txt")

    OmegaConf.register_new_resolver("td.shared_data", lambda: str(shared_data_dir()), replace=True)
    OmegaConf.register_new_resolver("td.toy_corpus", toy, replace=True)
    OmegaConf.register_new_resolver("td.run_dir_of", run_dir_of, replace=True)
    OmegaConf.register_new_resolver("td.div", int_div, replace=True)


def int_div(numerator, denominator) -> int:
    """``numerator // denominator`` for two integers (config values may arrive as strings of digits)."""
    try:
        a, b = int(str(numerator)), int(str(denominator))
    except ValueError:
        raise ConfigError(f"td.div takes two integers, got {numerator!r} and {denominator!r}") from None
    if b <= 0:
        raise ConfigError(f"td.div: the divisor must be a positive integer, got {denominator!r}")
    return a // b


@contextlib.contextmanager
def checkpoint_errors_as_config_errors() -> Iterator[None]:
    """Re-raise the run layer's ``CheckpointError`` (a bad checkpoint or run directory, named in the message) as
    a ``ConfigError``, the error every CLI entry point reports without a traceback."""
    from textdiff.run.checkpoint import CheckpointError  # loads Lightning: only when a checkpoint is touched

    try:
        yield
    except CheckpointError as err:
        raise ConfigError(str(err)) from None


#: model config keys renamed since runs were first saved, per model class: every family's trained network is
#: ``network`` (the weights are renamed on load by ``TextModule.renamed_weights``)
RENAMED_MODEL_KEYS = {"DiffusionLM": ("denoiser", "network"), "LD4LG": ("denoiser", "network"),
                      "DiffusionBERT": ("backbone", "network")}
#: the same renames as command-line keys: saved runs are upgraded on load (``textdiff.cli.runs.upgrade_config``),
#: command lines are told (``check_renamed_overrides``)
RENAMED_OVERRIDES = {f"model.{old}": f"model.{new}" for old, new in RENAMED_MODEL_KEYS.values()}


def check_renamed_overrides(args: Sequence[str], program: str) -> None:
    """Exit with the new name when a command-line override uses a renamed key (``model.denoiser.dim=32``), before
    Hydra answers with "Key 'denoiser' is not in struct"."""
    for arg in args:
        key = arg.lstrip("+~").split("=", 1)[0]
        for old, new in RENAMED_OVERRIDES.items():
            if key == old or key.startswith(old + "."):
                fixed = arg.replace(old, new, 1)
                raise SystemExit(f"{program}: `{old}` is now `{new}` (every family calls its network `network`): "
                                 f"write {fixed}")


def run_dir_of(checkpoint: str) -> str:
    """The run directory of a checkpoint path (``textdiff.run.checkpoint.run_dir_of``), a ConfigError if none."""
    from textdiff.run.checkpoint import run_dir_of as _run_dir_of

    with checkpoint_errors_as_config_errors():
        return _run_dir_of(checkpoint)


def _choices() -> dict[str, str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    except Exception:  # noqa: BLE001 - no Hydra context (tests, Python use)
        return {}


def _chosen() -> str:
    """The group choices that shape a run, for messages: " (model=difformer, data=multi30k, ...)"; "" outside
    a Hydra run."""
    chosen = ", ".join(f"{g}={c}" for g, c in _choices().items() if g.split("/")[0] in (
        "model", "schedule", "sampler", "data", "trainer", "experiment"))
    return f" ({chosen})" if chosen else ""


def build(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg[key])`` with errors that name the key and the group choices: a missing
    ``_target_`` (at ``key`` or in a sub-config its class takes as an object), an unknown key, an argument
    the class rejects, and (for a diffusion model) a sampler that does not fit its process."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf.errors import InterpolationKeyError

    node = OmegaConf.select(cfg, key)
    if node is None:
        raise ConfigError(f"config has no `{key}` (is the `{key.split('.')[0]}` group selected?)")
    chosen = _chosen()
    missing = _missing_target(node, key)
    if missing:
        raise ConfigError(missing + chosen)
    try:
        obj = instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        found = re.search(r"full_key: (\S+)", str(err))
        full_key = found.group(1) if found else key
        raise ConfigError(_unknown_key(cfg, full_key, cause, chosen)
                          or f"cannot build `{full_key}`{chosen}: {type(cause).__name__}: {cause}") from err
    except InterpolationKeyError as err:  # e.g. a conditional model's ${data.max_src_len} with unconditional data
        raise ConfigError(f"cannot build `{key}`{chosen}: {err}; the chosen config groups do not fit together "
                          "(one refers to a key that the others lack)") from err
    except Exception as err:  # other interpolation/missing-value errors from OmegaConf
        raise ConfigError(f"cannot build `{key}`{chosen}: {type(err).__name__}: {err}") from err
    from textdiff.families.interface import BuildsSampler  # loads Lightning: only once something is built

    if isinstance(obj, BuildsSampler):  # a diffusion model: its sampler must fit its process now, not mid-run
        try:
            obj.build_sampler()
        except (TypeError, ValueError) as err:
            raise ConfigError(_unknown_key(cfg, f"{key}.sampler", err, chosen) or (
                f"the sampler `{key}.sampler` does not fit the {type(obj.process).__name__} of `{key}.process`"
                f"{chosen}: {type(err).__name__}: {err}")) from err
    return obj


def _unknown_key(cfg: DictConfig, full_key: str, cause: BaseException, chosen: str) -> Optional[str]:
    """The message for a class that rejected a keyword (an unknown key under ``full_key``), else None."""
    unknown = re.search(r"unexpected keyword argument '(\w+)'", str(cause))
    if not (isinstance(cause, TypeError) and unknown):
        return None
    target = OmegaConf.select(cfg, f"{full_key}._target_", default=None)
    known = ", ".join(_params(target)) or "?"
    return (f"unknown key `{full_key}.{unknown.group(1)}`{chosen}: {target} takes no argument "
            f"{unknown.group(1)!r} (its arguments: {known})")


def _params(target: Any) -> dict[str, Any]:
    """``{argument name: type hint or None}`` of the class or function named by ``target``; {} if unknown."""
    from hydra.utils import get_object

    try:
        obj = get_object(str(target))
        params = inspect.signature(obj).parameters.values()
        names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except Exception:  # noqa: BLE001 - not importable / no signature: nothing to check
        return {}
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # noqa: BLE001 - unresolvable annotations: names only
        hints = {}
    return {n: hints.get(n) for n in names}


_MAPPING_HINT = re.compile(r"\b(dict|Dict|Mapping|MutableMapping|Any|DictConfig|object)\b")


def _missing_target(node: Any, key: str) -> Optional[str]:
    """Why the config ``node`` at ``key`` cannot be built for lack of a ``_target_`` (None when it can):
    the node has none, or a sub-config has Hydra keys (``_partial_``...) or feeds an argument whose type
    is not a mapping (e.g. ``model.network``) but has no ``_target_``."""
    if not OmegaConf.is_dict(node):
        return None
    if "_target_" not in node:
        return f"`{key}` has no `_target_` (the class or function to build: `_target_: package.module.Name`)"
    for name, hint in _params(node._target_).items():
        try:
            child = node[name] if name in node else None
        except Exception:  # noqa: BLE001 - an interpolation error: instantiate() reports it
            continue
        if not OmegaConf.is_dict(child):
            continue
        sub = f"{key}.{name}"
        if "_target_" in child:
            found = _missing_target(child, sub)
            if found:
                return found
        elif any(k in child for k in ("_partial_", "_args_", "_recursive_", "_convert_")) or (
                hint is not None and not _MAPPING_HINT.search(repr(hint))):
            return f"`{sub}` has no `_target_`: {node._target_} takes `{name}` as {_hint_name(hint)}, not a mapping"
    return None


def _hint_name(hint: Any) -> str:
    """``TransformerDenoiser``, ``Optional[Callable[..., Sampler]]``: a type hint without module paths."""
    if hint is None:
        return "an object"
    return hint.__name__ if isinstance(hint, type) else re.sub(r"[\w.]+\.(\w+)", r"\1", str(hint))


def build_datamodule(cfg: DictConfig, run_dir: Optional[Path]) -> Any:
    """Build the DataModule and its tokenizer; fill ``data.vocab_size`` (checking a set value),
    ``data.num_classes`` (the number of label classes, 0 for unlabelled data; a set value is checked) and
    ``tokens.*`` (the special-token ids). ``data.num_classes`` is a filled-in value, not a DataModule
    argument: it is held out of the DataModule's arguments (so a saved config.yaml rebuilds any DataModule).

    With ``run_dir`` (training) every local split is read first, so bad data fails before anything is written;
    bad data raises ``RunDataError`` (both a ``ConfigError`` and a ``DataError``) naming the file and line."""
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
    try:
        if run_dir is not None:  # training: check the data before the run directory is written
            _read_local_splits(dm)
        tokenizer = dm.build_tokenizer()
        num_classes = int(getattr(dm, "num_classes", 0) or 0)  # reads the training labels when there are any
    except DataError as err:
        raise RunDataError(f"cannot read the data of `data`{_chosen()}: {err}") from err
    if run_dir is not None and "tokenizer_path" not in kwargs and not (run_dir / "tokenizer").exists():
        from textdiff.data.datamodule import save_tokenizer

        save_tokenizer(tokenizer, run_dir / "tokenizer")  # every run directory holds the tokenizer it used
    set_size = OmegaConf.select(cfg, "data.vocab_size")
    if set_size is not None and int(set_size) != tokenizer.vocab_size:
        raise ConfigError(
            f"data.vocab_size={set_size} but the tokenizer has {tokenizer.vocab_size} tokens; "
            "remove data.vocab_size (it is filled in) or fix it"
        )
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


def _read_local_splits(dm: Any) -> None:
    """Read (and so check) every split of a textdiff DataModule that comes from local files, so that an empty,
    misaligned or undecodable file fails at start rather than mid-run; Hugging Face datasets load when used."""
    if not hasattr(dm, "raw") or getattr(dm, "hf_dataset", None):
        return
    for split in ("train", "valid", "test"):
        if dm.has_split(split):
            dm.raw(split)


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


def check_checkpoint_family(path: Path, cfg: DictConfig, where: str = "the config") -> None:
    """Raise ConfigError when the checkpoint at ``path`` was saved by another family than the one that
    ``cfg``'s ``model._target_`` builds (``where`` names the config in the message, e.g. its file)."""
    from textdiff.run.checkpoint import checkpoint_family

    target = str(OmegaConf.select(cfg, "model._target_", default=""))
    with checkpoint_errors_as_config_errors():
        family = checkpoint_family(path)
    expected = target.rsplit(".", 1)[-1]
    if target and family and family != expected:
        raise ConfigError(f"checkpoint {path} holds a {family} model but {where} builds a {expected} "
                          f"(model._target_={target}): give a {expected} checkpoint, or the run directory "
                          f"of the {family} run")

"""Building Hugging Face models from a hub name, a local ``save_pretrained`` directory, a config
mapping (random init: tests and CPU presets) or an existing model — one loader for BERT and BART."""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union


def looks_local(name: Union[str, os.PathLike]) -> bool:
    """True for a PathLike, an existing path, or a string that cannot be a hub id ("org/name")."""
    s = os.fspath(name)
    return (not isinstance(name, str) or os.path.exists(s) or s.startswith(("/", ".", "~"))
            or s.count("/") > 1 or "\\" in s)


def build_hf_model(spec: Any, model_cls: type, config_cls: type, vocab_size: Optional[int] = None,
                   config_overrides: Optional[Mapping[str, Any]] = None, what: str = "model") -> Any:
    """Build a ``model_cls`` (e.g. ``BertForMaskedLM``) from ``spec``.

    Args:
        spec: a hub name or local directory (``from_pretrained``), a mapping (dict, DictConfig) of
            ``config_cls`` fields or a ``config_cls`` (random init), or a ``model_cls`` instance.
        vocab_size: the data tokenizer's vocabulary size V. Set on a mapping/config before building;
            for a pre-trained/loaded model a different ``config.vocab_size`` raises ValueError.
        config_overrides: fields set on a mapping/config before building (e.g. special-token ids);
            ignored for pre-trained models, whose config is theirs.
        what: the model's name in error messages ("BERT", "BART").

    Raises:
        FileNotFoundError: a local path that does not exist; ValueError: a directory without
        ``config.json``, a vocabulary mismatch, or an unsupported ``spec`` type.
    """
    if isinstance(spec, (Mapping, config_cls)):  # Mapping: a dict or a Hydra DictConfig
        config = config_cls(**dict(spec)) if isinstance(spec, Mapping) else copy.deepcopy(spec)
        for key, value in (config_overrides or {}).items():
            setattr(config, key, value)
        if vocab_size is not None:
            config.vocab_size = vocab_size
        return model_cls(config)
    if isinstance(spec, (str, os.PathLike)):
        path = Path(os.fspath(spec)).expanduser()
        if looks_local(spec):
            if not path.is_dir():
                raise FileNotFoundError(f"{what} checkpoint directory '{path}' does not exist")
            if not (path / "config.json").is_file():
                raise ValueError(f"'{path}' has no config.json: not a save_pretrained directory")
            spec = model_cls.from_pretrained(str(path))
        else:
            spec = model_cls.from_pretrained(os.fspath(spec))
    if not isinstance(spec, model_cls):
        raise ValueError(f"{what} must be a name/path, dict, {config_cls.__name__} or {model_cls.__name__}, "
                         f"got {type(spec).__name__}")
    if vocab_size is not None and vocab_size != spec.config.vocab_size:
        raise ValueError(f"vocab_size mismatch: the tokenizer has {vocab_size} tokens but the {what} "
                         f"model has config.vocab_size={spec.config.vocab_size}")
    return spec

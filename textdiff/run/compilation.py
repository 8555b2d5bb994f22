"""``torch.compile`` for the families' networks (the top-level ``compile`` key of ``textdiff-train``).

Each network module is compiled in place with ``nn.Module.compile(**options)``: its ``__call__`` runs
the compiled forward, while the module, its ``state_dict`` keys (no ``_orig_mod.`` prefix), its
checkpoints, EMA copies and the family's ``generate`` stay as they are. Compiling the LightningModule
itself (``torch.compile(model)``, Lightning's recipe) would compile only ``forward`` and the ``*_step``
methods: the families never call ``forward``, their ``training_step`` logs and checks the loss (graph
breaks), and sampling would stay eager. Compiling the networks speeds training and sampling alike.

The first call of each compiled module (and of each new input shape, train/eval mode or dtype) is slow:
compilation happens then, not here.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

log = logging.getLogger("textdiff")

#: the network modules compiled per family (attribute paths; a ModuleList compiles each of its layers).
#: A family's hot path must go through the module's ``forward`` (``__call__``), which is why the
#: autoregressive baseline (``network.encode``/``network.decode``) and Difformer's encoder
#: (``network.encode``) compile their Transformer layers, not the network.
COMPILE_TARGETS: dict[str, tuple[str, ...]] = {
    "DiffusionLM": ("network",),
    "LD4LG": ("network",),  # the frozen stage-1 autoencoder stays eager
    "DiffusionBERT": ("network",),
    "Difformer": ("network", "network.encoder"),
    "Autoregressive": ("network.encoder", "network.decoder"),
    "TextClassifier": ("network",),
    "BartDenoiser": ("bart",),
    "LatentAutoencoder": ("compressor", "reconstructor"),
}
#: tried in this order for a model class not in ``COMPILE_TARGETS`` (the first one found is compiled)
FALLBACK_TARGETS = ("network", "net", "denoiser", "backbone")

CompileSpec = Union[None, bool, Mapping[str, Any]]


def compile_options(spec: CompileSpec) -> Optional[dict[str, Any]]:
    """The keyword arguments of ``torch.compile`` for a ``compile`` config value, or None (off).

    ``None``/``False`` -> None; ``True`` -> ``{}`` (torch.compile's defaults); a mapping -> its items,
    which must be arguments of ``torch.compile`` (``mode``, ``dynamic``, ``fullgraph``, ``backend``,
    ``options``, ``disable``). Raises ValueError naming a wrong value or key."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"compile={spec!r}: expected false/null (off), true, or a mapping of torch.compile "
                         "arguments such as {mode: reduce-overhead}")
    known = [p for p in inspect.signature(torch.compile).parameters if p != "model"]
    unknown = [k for k in spec if k not in known]
    if unknown:
        raise ValueError(f"compile.{unknown[0]} is not an argument of torch.compile (its arguments: "
                         f"{', '.join(known)})")
    return dict(spec)


def compile_targets(model: nn.Module) -> list[str]:
    """Attribute paths of the network modules of ``model`` that ``compile_networks`` compiles, e.g.
    ``["network"]`` or ``["network.encoder.0", ...]`` (ModuleLists expanded to their layers).
    Raises ValueError for a model with none of the known networks."""
    paths: Optional[tuple[str, ...]] = None
    for cls in type(model).__mro__:
        if cls.__name__ in COMPILE_TARGETS:
            paths = COMPILE_TARGETS[cls.__name__]
            break
    if paths is None:
        found = next((name for name in FALLBACK_TARGETS if isinstance(getattr(model, name, None), nn.Module)), None)
        if found is None:
            raise ValueError(f"compile: {type(model).__name__} has none of the networks "
                             f"{', '.join(FALLBACK_TARGETS)} to compile")
        paths = (found,)
    out = []
    for path in paths:
        module = model.get_submodule(path)
        if isinstance(module, nn.ModuleList):
            out += [f"{path}.{i}" for i in range(len(module))]
        else:
            out.append(path)
    return out


def compile_networks(model: nn.Module, spec: CompileSpec) -> list[str]:
    """Compile the network modules of ``model`` in place (``nn.Module.compile(**compile_options(spec))``)
    and return their attribute paths ([] when ``spec`` is off). Compilation itself happens at the first
    call of each module. Raises ValueError for a bad ``spec`` or a model without a known network."""
    options = compile_options(spec)
    if options is None:
        return []
    paths = compile_targets(model)
    for path in paths:
        model.get_submodule(path).compile(**options)
    log.info("torch.compile(%s) on %s: %s", ", ".join(f"{k}={v!r}" for k, v in options.items()) or "defaults",
             type(model).__name__, ", ".join(paths))
    return paths


def compiled(module: nn.Module) -> bool:
    """Whether ``module`` was compiled in place by ``nn.Module.compile``."""
    return getattr(module, "_compiled_call_impl", None) is not None

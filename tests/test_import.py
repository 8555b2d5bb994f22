"""`import textdiff` stays light: no Hydra/OmegaConf, and no network access."""
import importlib
import inspect
import subprocess
import sys

import pytest

CODE = r"""
import socket, sys
def refuse(*a, **k):
    raise RuntimeError("network access during import: %r" % (a,))
socket.socket.connect = refuse
socket.create_connection = refuse
import textdiff
import textdiff.core, textdiff.nn, textdiff.data, textdiff.metrics, textdiff.families
import textdiff.run, textdiff.run.evaluation, textdiff.run.callbacks, textdiff.run.checkpoint, textdiff.families.optim
from textdiff.data import tokenizers, sources, datamodule
from textdiff.metrics import text, likelihood
assert textdiff.DiffusionLM.__name__ == "DiffusionLM"
assert textdiff.GaussianProcess.__name__ == "GaussianProcess"
assert textdiff.DiffusionBERT.__name__ == "DiffusionBERT"  # transformers, still no hydra
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf"))
assert not bad, bad
print("ok")
"""


def test_import_has_no_hydra_and_no_network():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_bare_import_is_lazy():
    code = ("import sys, textdiff; print(sorted(m for m in ('torch', 'pytorch_lightning', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


PACKAGES = ["textdiff", "textdiff.core", "textdiff.nn", "textdiff.data", "textdiff.metrics", "textdiff.families",
            "textdiff.run", "textdiff.analysis"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package):
    """Every name in a package's ``__all__`` (the lazy exports included) resolves, and a class or function
    export is the object of that name: a lazy export pointing at a module that no longer defines it fails here."""
    mod = importlib.import_module(package)
    missing = []
    for name in mod.__all__:
        if name == "__version__":
            continue
        try:
            obj = getattr(mod, name)
        except AttributeError as err:
            missing.append(f"{name}: {err}")
            continue
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__name__ != name:
            missing.append(f"{name} resolves to {obj!r}")
    assert not missing, missing
    assert sorted(mod.__all__) == sorted(set(mod.__all__)), "duplicate names in __all__"


def test_seq2seq_datamodule_is_public():
    import textdiff

    assert textdiff.Seq2SeqDataModule.__module__ == "textdiff.data.seq2seq"

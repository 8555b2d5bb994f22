"""`import textdiff` stays light: no Hydra/OmegaConf, and no network access."""
import subprocess
import sys

CODE = r"""
import socket, sys
def refuse(*a, **k):
    raise RuntimeError("network access during import: %r" % (a,))
socket.socket.connect = refuse
socket.create_connection = refuse
import textdiff
import textdiff.core, textdiff.nn, textdiff.data, textdiff.metrics, textdiff.families
import textdiff.evaluation, textdiff.callbacks, textdiff.optim
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
    code = "import sys, textdiff; print(sorted(m for m in ('torch', 'pytorch_lightning', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

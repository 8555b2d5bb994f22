"""``make bench`` (benchmarks/run.py, benchmarks/families.py) in its --quick mode, and the ``compile`` option of
textdiff-train (textdiff/compilation.py) without compiling anything in the fast tests."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import run as bench_run
from benchmarks.families import FAMILIES
from textdiff.run.compilation import compile_networks, compile_options, compile_targets, compiled

REPO = Path(__file__).resolve().parents[1]


def _positive(x):
    return isinstance(x, (int, float)) and x > 0


def _check_entry(entry, family, ks):
    assert "error" not in entry, entry
    tr = entry["training"]
    assert "error" not in tr, tr
    for key in ("tokens_per_second", "seconds_per_step", "tokens_per_step", "peak_rss_mb"):
        assert _positive(tr[key]), (key, tr)
    sa = entry["sampling"]
    assert "error" not in sa, sa
    expected = ["beam"] if family == "ar" else [f"K={k}" for k in ks]
    assert list(sa["by_steps"]) == expected
    assert all(_positive(v["sentences_per_second"]) for v in sa["by_steps"].values())
    assert _positive(sa["peak_rss_mb"])
    ov = entry["sampler_overhead"]
    if family == "ar":
        assert "not_applicable" in ov
    else:
        assert "error" not in ov, ov
        assert _positive(ov["overhead_ratio"]) and _positive(ov["denoiser_calls"])
        assert len(ov["bare_seconds"]) == len(ov["sampler_seconds"]) >= 1


def _check_doc(doc, family, compile_entry=False):
    assert doc["family"] == family and doc["quick"] is True
    assert doc["machine"]["device"] == "cpu" and doc["date"]
    preset = doc["preset"]
    assert preset["experiment"] == FAMILIES[family].experiment
    assert preset["batch_size"] > 0 and preset["max_len"] > 0 and preset["vocab_size"] == FAMILIES[family].vocab_size
    assert _positive(preset["trainable_parameters"])
    assert set(doc["entries"]) == {"eager", "bf16_autocast", "compile"}
    for kind in ("eager", "bf16_autocast"):
        _check_entry(doc["entries"][kind], family, doc["settings"]["ks"])
    if not compile_entry:
        assert doc["entries"]["compile"]["skipped"] == "--no-compile"


def test_quick_bench_writes_a_family_json(tmp_path):
    """One small family through `python -m benchmarks.run` (its family run is a subprocess)."""
    code = bench_run.main(["--quick", "--device", "cpu", "--families", "diffusion_lm", "--no-compile",
                           "--no-comparison", "--out", str(tmp_path)])
    assert code == 0
    assert [p.name for p in tmp_path.iterdir()] == ["diffusion_lm_cpu_quick.json"]
    doc = json.loads((tmp_path / "diffusion_lm_cpu_quick.json").read_text())
    _check_doc(doc, "diffusion_lm")
    assert doc["entries"]["eager"]["sampler_overhead"]["denoiser_calls"] == 10  # K = 10 calls, no early stop
    assert "lightning_vs_plain" not in doc


def test_families_option():
    assert bench_run.parse_families("all") == list(FAMILIES) == ["diffusion_lm", "difformer", "diffusion_bert",
                                                                "ld4lg", "ar"]
    assert bench_run.parse_families("ar, diffusion_lm") == ["diffusion_lm", "ar"]
    with pytest.raises(Exception, match="unknown family 'nope'"):
        bench_run.parse_families("difformer,nope")


def test_repeats_stop_at_the_budget():
    from benchmarks.families import _within

    assert _within([1.0], limit=3, budget=60) and not _within([1.0, 1.0, 1.0], limit=3, budget=60)
    assert not _within([40.0], limit=3, budget=60) and not _within([0.1], limit=3, budget=0)


@pytest.mark.slow
def test_quick_bench_every_family_and_the_comparison(tmp_path):
    code = bench_run.main(["--quick", "--device", "cpu", "--no-compile", "--out", str(tmp_path)])
    assert code == 0
    for family in FAMILIES:
        _check_doc(json.loads((tmp_path / f"{family}_cpu_quick.json").read_text()), family)
    comparison = json.loads((tmp_path / "diffusion_lm_cpu_quick.json").read_text())["lightning_vs_plain"]
    assert _positive(comparison["training"]["throughput_ratio"]) and _positive(comparison["sampler"]["overhead_ratio"])


@pytest.mark.slow
def test_quick_bench_compile_entry(tmp_path):
    """The torch.compile entry (minutes of compilation on CPU): figures and compile times, or the error."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.families", "--family", "diffusion_lm", "--quick",
                          "--device", "cpu", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((tmp_path / "diffusion_lm_cpu_quick.json").read_text())
    _check_doc(doc, "diffusion_lm", compile_entry=True)
    entry = doc["entries"]["compile"]
    assert entry["compiled_modules"] == ["network"]
    if "error" in entry["training"]:  # a torch build that cannot compile here: the error is recorded
        assert isinstance(entry["training"]["error"], str)
    else:
        _check_entry(entry, "diffusion_lm", doc["settings"]["ks"])
        assert entry["compile_seconds"]["training"] > 0


# ----- the compile option of textdiff-train -----
def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from textdiff.cli.common import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_compile_key_composes():
    from omegaconf import OmegaConf

    assert _compose([]).compile is False
    assert _compose(["compile=true"]).compile is True
    cfg = _compose(["compile={mode: reduce-overhead, dynamic: false}"])
    assert OmegaConf.to_container(cfg.compile) == {"mode": "reduce-overhead", "dynamic": False}


def test_compile_options():
    assert compile_options(None) is None and compile_options(False) is None
    assert compile_options(True) == {}
    assert compile_options({"mode": "max-autotune", "fullgraph": True}) == {"mode": "max-autotune", "fullgraph": True}
    with pytest.raises(ValueError, match=r"compile\.modee is not an argument of torch.compile"):
        compile_options({"modee": "default"})
    with pytest.raises(ValueError, match="compile='yes'"):
        compile_options("yes")


def _tiny_diffusion_lm():
    from functools import partial

    from textdiff.core import DiscreteSchedule, GaussianProcess, Sampler, SqrtSchedule
    from textdiff.families import DiffusionLM
    from textdiff.nn import TransformerDenoiser

    return DiffusionLM(TransformerDenoiser(8, dim=16, depth=1, heads=2, max_len=8),
                       GaussianProcess(DiscreteSchedule(SqrtSchedule(), 100)), vocab_size=20, embed_dim=8,
                       sampler=partial(Sampler, num_steps=5))


def test_compile_networks_compiles_the_denoiser_in_place():
    """What textdiff-train does with compile=true: the network is compiled in place (no wrapper module, same
    state_dict keys); nothing is compiled until the first call, which this test does not make."""
    model = _tiny_diffusion_lm()
    denoiser, keys = model.network, list(model.state_dict())
    assert compile_networks(model, None) == [] and not compiled(model.network)
    assert compile_networks(model, {"mode": "default"}) == ["network"]
    assert model.network is denoiser and compiled(model.network)
    assert list(model.state_dict()) == keys
    with pytest.raises(ValueError, match="compile.bogus"):
        compile_networks(_tiny_diffusion_lm(), {"bogus": 1})


def test_compile_targets_of_the_seq2seq_networks():
    from textdiff.families import Autoregressive, Difformer
    from textdiff.core import DiscreteSchedule, GaussianProcess, SqrtSchedule
    from textdiff.nn import ARTransformer, DifformerNet

    ar = Autoregressive(ARTransformer(30, dim=16, enc_depth=2, dec_depth=1, heads=2, ffn_dim=32, max_len=8,
                                      max_src_len=8), pad_id=0, bos_id=2, eos_id=3)
    assert compile_targets(ar) == ["network.encoder.0", "network.encoder.1", "network.decoder.0"]
    dif = Difformer(DifformerNet(30, latent_dim=8, dim=16, enc_depth=1, dec_depth=1, heads=2, ffn_dim=32, max_len=8,
                                 max_src_len=8), GaussianProcess(DiscreteSchedule(SqrtSchedule(), 100)), 0, 2, 3)
    assert compile_networks(dif, True) == ["network", "network.encoder.0"]
    assert compiled(dif.network) and compiled(dif.network.encoder[0]) and not compiled(dif.network.decoder[0])
    with pytest.raises(ValueError, match="none of the networks"):
        compile_targets(torch.nn.Linear(2, 2))


class PrecisionProbe:
    """A callback (for textdiff-train's ``+callbacks.probe``) that writes the dtype of the denoiser's output
    during training steps, and the trainer's precision, to ``path`` (JSON)."""

    def __new__(cls, path):
        import pytorch_lightning as pl

        class _Probe(pl.Callback):
            def on_train_start(self, trainer, module):
                self.record = {"precision": str(trainer.precision)}

                def hook(mod, args, output):
                    self.record["denoiser_output_dtype"] = str(output.dtype)
                module.network.register_forward_hook(hook)

            def on_train_end(self, trainer, module):
                Path(path).write_text(json.dumps(self.record))

        return _Probe()


def _train(args, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-c", "import sys; from textdiff.cli.train import main; sys.argv[0]='train'; main()",
           *args, f"hydra.run.dir={tmp_path / 'run'}"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=1200)


def test_bad_compile_value_is_a_config_error(tmp_path):
    out = _train(["data=toy", "compile={modee: default}"], tmp_path)
    assert out.returncode != 0
    assert "config error: compile.modee is not an argument of torch.compile" in out.stderr + out.stdout
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow
def test_train_with_compile_and_bf16_mixed(shared_data, tmp_path):
    """compile=true and trainer.precision=bf16-mixed through textdiff-train: a few steps train and checkpoint."""
    out = _train(["experiment=diffusion_lm_e2e_cpu", "data.max_train_examples=256", "data.max_eval_examples=32",
                  "data.batch_size=8", "data.max_len=16", "model.network.dim=32", "model.network.depth=1",
                  "model.network.heads=2", "diffusion_steps=100", "sampler.num_steps=5", "trainer.max_steps=3",
                  "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "evaluate=false",
                  "compile=true", "trainer.precision=bf16-mixed",
                  "+callbacks.probe._target_=tests.test_bench.PrecisionProbe",
                  f"+callbacks.probe.path={tmp_path / 'probe.json'}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch.compile(defaults) on DiffusionLM: network" in out.stderr + out.stdout
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe == {"precision": "bf16-mixed", "denoiser_output_dtype": "torch.bfloat16"}  # autocast in the steps
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])


def test_no_bf16_skips_that_entry_only():
    from benchmarks import families

    doc = families.run_family("diffusion_lm", "cpu", quick=True, with_compile=False, with_bf16=False)
    assert doc["entries"]["bf16_autocast"] == {"kind": "bf16_autocast", "skipped": "--no-bf16"}
    _check_entry(doc["entries"]["eager"], "diffusion_lm", doc["settings"]["ks"])

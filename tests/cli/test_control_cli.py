"""Infilling through ``textdiff-sample infill=<templates>`` on a Diffusion-LM run."""
import json

import pytest

from textdiff.data import load_tokenizer
from tests.cli.test_train_cli import TINY, _run


def test_sample_infill_fills_blanks_around_the_fixed_words(shared_data, tmp_path):
    run_dir = tmp_path / "run"
    out = _run("train", [*TINY, "trainer.max_steps=6", "evaluate=false", f"hydra.run.dir={run_dir}"])
    assert out.returncode == 0, out.stderr[-3000:]
    templates = tmp_path / "templates.txt"
    templates.write_text("The _ _ is a restaurant near the _\n_ is a coffee shop in the city centre\n")
    out = _run("sample", [f"run_dir={run_dir}", f"infill={templates}", "ckpt=last", "sampler.num_steps=5",
                          "suffix=_t"])
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "infill_t.jsonl").read_text().splitlines()]
    assert [r["template"] for r in rows] == templates.read_text().splitlines()
    tok = load_tokenizer(run_dir / "tokenizer")
    # every fixed word is kept (as the vocabulary has it), in order; the tiny model's words are not judged
    for row in rows:
        words = row["text"].split()
        fixed = [tok.decode(tok.encode(w)) for w in row["template"].split() if w != "_"]
        it = iter(words)
        assert all(w in it for w in fixed), (row, words)
    bad = tmp_path / "bad.txt"
    bad.write_text("no blank here\n")
    out = _run("sample", [f"run_dir={run_dir}", f"infill={bad}", "ckpt=last"])
    assert out.returncode != 0 and "no blank" in out.stderr + out.stdout


def test_guided_sampling_with_a_noisy_classifier_run(shared_data, tmp_path):
    """Diffusion-LM run -> NoisyClassifier on its latents (experiment=diffusion_lm_e2e_control_cpu) -> a clean-text
    judge -> textdiff-sample control.*: the chain runs and reports the control success rate and settings."""
    dlm, noisy, judge = tmp_path / "dlm", tmp_path / "noisy", tmp_path / "judge"
    out = _run("train", [*TINY, "trainer.max_steps=6", "evaluate=false", f"hydra.run.dir={dlm}"])
    assert out.returncode == 0, out.stderr[-3000:]
    small = ["data.max_train_examples=3000", "data.max_eval_examples=1000", "trainer.max_steps=6",
             "trainer.val_check_interval=6", "model.network.dim=32", "model.network.depth=1", "model.network.heads=2",
             "trainer.enable_progress_bar=false", "eval.num_samples=32"]
    out = _run("train", ["experiment=diffusion_lm_e2e_control_cpu",
                         f"model.diffusion.checkpoint={dlm}/checkpoints/last.ckpt",
                         "data.max_len=24", "diffusion_steps=100", *small, f"hydra.run.dir={noisy}"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((noisy / "metrics.json").read_text())["num_examples"] > 0
    out = _run("train", ["experiment=classifier_e2e_cpu", "data.label_slot=food", *small, f"hydra.run.dir={judge}"])
    assert out.returncode == 0, out.stderr[-3000:]
    common = [f"run_dir={dlm}", "ckpt=last", f"control.classifier={noisy}", "num_samples=8", "sampler.num_steps=10",
              "nll_batches=0"]
    out = _run("sample", [*common, "control.label=Italian", f"classifier={judge}", "suffix=_ctl"])
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((dlm / "metrics_ctl.json").read_text())
    assert 0.0 <= m["class_accuracy"] <= 1.0 and m["control_label"] == "Italian"
    assert m["control_grad_steps"] == 3 * 9  # 3 per step that starts at t >= t_min (9 of the 10 here)
    rows = [json.loads(line) for line in (dlm / "samples_ctl.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["class"] == "Italian" and "classified_as" in r for r in rows)
    out = _run("sample", [*common, "control.label=Klingon"])
    assert out.returncode != 0 and "Italian" in out.stderr + out.stdout  # the message lists the classes


@pytest.mark.slow  # 30 s; the guided-sampling test covers the control path in `make test`
def test_length_control_reports_exact_length_match(shared_data, tmp_path):
    dlm, length = tmp_path / "dlm", tmp_path / "length"
    out = _run("train", [*TINY, "trainer.max_steps=6", "evaluate=false", f"hydra.run.dir={dlm}"])
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run("train", ["experiment=diffusion_lm_e2e_length_cpu",
                         f"model.diffusion.checkpoint={dlm}/checkpoints/last.ckpt",
                         "data.max_len=24", "model.network.num_classes=23", "diffusion_steps=100",
                         "data.max_train_examples=1000", "data.max_eval_examples=64", "trainer.max_steps=6",
                         "trainer.val_check_interval=6", "model.network.dim=32", "model.network.depth=1",
                         "model.network.heads=2", "trainer.enable_progress_bar=false", f"hydra.run.dir={length}"])
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((length / "metrics.json").read_text())
    assert m["num_examples"] == 64 and 0.0 <= m["accuracy"] <= 1.0 and m["mean_abs_error"] >= 0
    out = _run("sample", [f"run_dir={dlm}", "ckpt=last", f"control.classifier={length}", "control.label=12",
                          "num_samples=6", "sampler.num_steps=5", "nll_batches=0", "suffix=_len"])
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((dlm / "metrics_len.json").read_text())
    rows = [json.loads(line) for line in (dlm / "samples_len.jsonl").read_text().splitlines()]
    assert all(r["target_length"] == 12 for r in rows)
    assert m["length_match"] == sum(r["length"] == 12 for r in rows) / 6
    assert m["length_mae"] == sum(abs(r["length"] - 12) for r in rows) / 6

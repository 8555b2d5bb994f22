"""End to end through the real entry points: textdiff-train writes a complete run directory that
textdiff-sample reloads; resume continues at the right step with the saved optimizer state."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TINY = [
    "experiment=diffusion_lm_e2e_cpu", "data.max_train_examples=512", "data.max_eval_examples=64",
    "data.batch_size=16", "data.max_len=24", "model.network.dim=32", "model.network.depth=1",
    "model.network.heads=2", "diffusion_steps=100", "sampler.num_steps=10", "trainer.val_check_interval=10",
    "trainer.limit_val_batches=2", "trainer.log_every_n_steps=5", "callbacks.sample_and_score.num_samples=4",
    "callbacks.sample_and_score.num_steps=5", "eval.num_samples=8", "eval.nll_batches=1", "eval.nll_num_t=2",
    "trainer.enable_progress_bar=false",
]


REPO = Path(__file__).resolve().parents[2]


def _run(entry, args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-c", f"import sys; from textdiff.cli.{entry} import main; sys.argv[0]='{entry}'; main()",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def test_train_then_sample(shared_data, tmp_path):
    run_dir = tmp_path / "run"
    out = _run("train", [*TINY, "trainer.max_steps=20", f"hydra.run.dir={run_dir}"])
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("config.yaml", "samples.jsonl", "metrics.json", "checkpoints/last.ckpt", "tokenizer"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert (run_dir / "csv" / "metrics.csv").exists() and any((run_dir / "tensorboard").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 20 and "bleu" in metrics and "nll" in metrics
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8

    out = _run("sample", [f"run_dir={run_dir}", "num_samples=6", "sampler.num_steps=5", "suffix=_k5",
                          "nll_batches=0"])
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((run_dir / "metrics_k5.json").read_text())
    assert m["sampler"]["num_steps"] == 5 and "bleu" in m and m["num_sequences"] == 6
    assert len((run_dir / "samples_k5.jsonl").read_text().splitlines()) == 6


def test_config_errors_name_the_key(tmp_path):
    out = _run("train", ["schedule=spindle", f"hydra.run.dir={tmp_path / 'r'}", "data=toy"])
    assert out.returncode != 0
    assert "model.process" in out.stderr + out.stdout and "spindle" in out.stderr + out.stdout
    out = _run("train", ["model.network.widht=3", f"hydra.run.dir={tmp_path / 'r2'}"])
    assert out.returncode != 0 and "widht" in out.stderr + out.stdout
    out = _run("sample", [f"run_dir={tmp_path}"])
    assert out.returncode != 0 and "config.yaml" in out.stderr + out.stdout


def test_resume_continues_at_the_right_step_with_the_same_optimizer_state(shared_data, tmp_path):
    run_dir = tmp_path / "run"
    common = [*TINY, "evaluate=false", f"hydra.run.dir={run_dir}"]
    out = _run("train", [*common, "trainer.max_steps=10"])
    assert out.returncode == 0, out.stderr[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 10
    probe = tmp_path / "probe.json"
    out = _run("train", [*common, "trainer.max_steps=20", "resume=true",
                         "+callbacks.probe._target_=tests.cli.probe.OptimizerProbe", f"+callbacks.probe.path={probe}"])
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(probe.read_text())
    assert seen["start_step"] == 10 and seen["end_step"] == 20
    state = saved["optimizer_states"][0]["state"]
    expected = sum(float(s["exp_avg"].abs().sum()) for s in state.values())
    assert seen["exp_avg_abs_sum_at_start"] == pytest.approx(expected, rel=1e-6)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 20


BERT_TINY = [
    "experiment=diffusion_bert_tatoeba_cpu", "data.max_train_examples=512", "data.max_eval_examples=64",
    "data.batch_size=16", "data.max_len=16", "model.network.bert.hidden_size=32",
    "model.network.bert.num_hidden_layers=1", "model.network.bert.num_attention_heads=2",
    "model.network.bert.intermediate_size=64", "diffusion_steps=64", "sampler.num_steps=8", "model.nll_steps=4",
    "trainer.val_check_interval=10", "trainer.limit_val_batches=2", "trainer.log_every_n_steps=5",
    "callbacks.sample_and_score.num_samples=4", "callbacks.sample_and_score.num_steps=4", "eval.num_samples=8",
    "eval.nll_batches=1", "trainer.enable_progress_bar=false", "trainer.max_steps=20",
]


def test_diffusion_bert_train_then_sample(shared_data, tmp_path):
    run_dir = tmp_path / "run"
    out = _run("train", [*BERT_TINY, f"hydra.run.dir={run_dir}"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "tokenizer" / "word_freq.pt").exists()  # the spindle's counts, cached
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 20 and "bleu" in metrics and "ppl" in metrics
    out = _run("sample", [f"run_dir={run_dir}", "num_samples=6", "sampler.num_steps=4", "suffix=_k4", "nll_batches=0"])
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((run_dir / "metrics_k4.json").read_text())
    assert m["sampler"]["num_steps"] == 4 and m["num_sequences"] == 6


DIFFORMER_TINY = [
    "experiment=difformer_multi30k_cpu", "data.max_train_examples=256", "data.max_eval_examples=24",
    "data.batch_size=16", "data.eval_batch_size=12", "data.tokenizer.vocab_size=500", "model.network.dim=32",
    "model.network.enc_depth=1", "model.network.dec_depth=1", "model.network.heads=2", "model.network.ffn_dim=64",
    "model.network.latent_dim=16", "diffusion_steps=100", "sampler.num_steps=6", "sampler.early_stop=2",
    "trainer.val_check_interval=5", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=5",
    "callbacks.sample_and_score.num_samples=4", "eval.num_samples=20", "trainer.enable_progress_bar=false",
]


def test_difformer_translates_the_test_split_and_sample_reloads_it(shared_data, tmp_path):
    run_dir = tmp_path / "df"
    out = _run("train", [*DIFFORMER_TINY, "trainer.max_steps=10", f"hydra.run.dir={run_dir}"])
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_examples"] == 20 and metrics["generate"]["candidates"] == 6  # 3 lengths x 2 noises
    assert {"bleu", "bleu_tok", "chrf", "rougeL"} <= set(metrics) and metrics["sampler"]["early_stop"] == 2
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    src = (shared_data / "multi30k" / "raw" / "test.de").read_text(encoding="utf-8").splitlines()
    ref = (shared_data / "multi30k" / "raw" / "test.en").read_text(encoding="utf-8").splitlines()
    assert [r["source"] for r in rows] == src[:20] and [r["references"] for r in rows] == [[x] for x in ref[:20]]

    out = _run("sample", [f"run_dir={run_dir}", "num_samples=12", "generate.select=mbr", "generate.length_beam=1",
                          "suffix=_mbr"])
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((run_dir / "metrics_mbr.json").read_text())
    assert m["num_examples"] == 12 and m["generate"]["select"] == "mbr" and m["generate"]["candidates"] == 2
    out = _run("sample", [f"run_dir={run_dir}", "num_samples=4", f"reranker={run_dir}", "suffix=_bad"])
    assert out.returncode != 0 and "score" in out.stderr + out.stdout  # a Difformer run cannot rerank


def test_a_sampler_override_that_does_not_fit_is_named(tmp_path):
    """textdiff-sample with sampler.* overrides the model's sampler rejects (the ODE solver on an ancestral preset,
    a policy on a Gaussian model) stops with one line naming the overrides, before sampling, not a traceback."""
    from tests.cli.test_runs import _saved_run

    run_dir, _ = _saved_run(tmp_path, ["sampler=ddpm"])
    for bad, said in ((["sampler.solver=dpmpp_2m"], "needs eta=0"),
                      (["sampler.unmask=threshold"], "absorbing processes only"),
                      (["sampler.float64=True"], "float64 applies to absorbing processes only")):
        out = _run("sample", [f"run_dir={run_dir}", "ckpt=last", "num_samples=2", *bad])
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert f"textdiff-sample: {bad[0]}" in out.stderr and said in out.stderr, out.stderr[-2000:]


def test_resume_auto_starts_a_fresh_run_and_continues_a_started_one(shared_data, tmp_path):
    run_dir = tmp_path / "run"
    common = [*TINY, "evaluate=false", f"hydra.run.dir={run_dir}", "resume=auto",
              "callbacks.last_checkpoint.every_n_steps=5"]
    out = _run("train", [*common, "trainer.max_steps=5"])  # no checkpoint yet: starts
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run("train", [*common, "trainer.max_steps=10"])  # continues at step 5
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from" in out.stderr + out.stdout
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 10
    out = _run("train", [*TINY, "evaluate=false", f"hydra.run.dir={tmp_path / 'bad'}", "resume=maybe"])
    assert out.returncode != 0 and "resume='maybe'" in out.stderr + out.stdout

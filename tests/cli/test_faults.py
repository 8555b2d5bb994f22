"""Runs that survive faults, through the real ``textdiff-train``: a SIGKILL mid-epoch resumes with the
same data order and step count as an uninterrupted run; a NaN loss stops with a message naming the step
and the batch (or is skipped and counted); the same seed gives the same samples."""
import json
import signal

import pytest
import torch

from tests.cli.test_train_cli import TINY, _run

# 100 examples in batches of 16: 7 batches an epoch, so 20 steps cross two epoch boundaries.
FAULT = [*TINY, "data.max_train_examples=100", "evaluate=false", "callbacks.last_checkpoint.every_n_steps=5",
         "callbacks.sample_and_score.every_n_validations=1000", "trainer.max_steps=20"]


def _steps(path):
    """{global step: dataset indices of its batch} from a DataOrderProbe file."""
    out = {}
    for line in path.read_text().splitlines():
        step, indices = line.split()
        out[int(step)] = indices
    return out


# the kill at an epoch end is the easier case: `make test-slow` (make test keeps under 15 min on 2 cores)
@pytest.mark.parametrize("every,kill,saved", [(5, 13, 10), pytest.param(7, 16, 14, marks=pytest.mark.slow)],
                         ids=["mid-epoch", "at-epoch-end"])
def test_sigkill_resumes_with_the_same_data_order_and_steps(shared_data, tmp_path, every, kill, saved):
    """Killed at step ``kill``; ``last.ckpt`` is from step ``saved`` (10: mid-epoch 1; 14: the end of
    epoch 1). The resumed run must replay steps saved+1..20 on the uninterrupted run's batches."""
    probe = ["+callbacks.probe._target_=tests.cli.probe.DataOrderProbe",
             f"callbacks.last_checkpoint.every_n_steps={every}"]
    ref_log, run_log = tmp_path / "ref.txt", tmp_path / "run.txt"
    out = _run("train", [*FAULT, f"hydra.run.dir={tmp_path / 'ref'}", *probe, f"+callbacks.probe.path={ref_log}"])
    assert out.returncode == 0, out.stderr[-3000:]
    run = [*FAULT, f"hydra.run.dir={tmp_path / 'run'}", *probe, f"+callbacks.probe.path={run_log}"]
    out = _run("train", [*run, f"+callbacks.probe.kill_at_step={kill}"])
    assert out.returncode == -signal.SIGKILL, (out.returncode, out.stderr[-3000:])
    killed = _steps(run_log)
    assert max(killed) == kill
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == saved
    run_log.unlink()
    out = _run("train", [*run, "resume=true"])
    assert out.returncode == 0, out.stderr[-3000:]
    resumed, ref = _steps(run_log), _steps(ref_log)
    assert sorted(ref) == list(range(1, 21)) and sorted(resumed) == list(range(saved + 1, 21))
    # the steps before the checkpoint from the killed run, the rest from the resumed one: the same
    # batches, in the same order, as the uninterrupted run
    combined = {**{s: v for s, v in killed.items() if s <= saved}, **resumed}
    assert combined == ref
    assert len(set(ref.values())) == 20  # not trivially equal: batches differ from step to step
    final = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 20
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp*"))


def test_nan_loss_stops_naming_the_step_and_the_batch(shared_data, tmp_path):
    nan = "+callbacks.nan._target_=tests.cli.probe.NaNLoss"
    out = _run("train", [*FAULT, f"hydra.run.dir={tmp_path / 'r'}", nan, "+callbacks.nan.batches=[7]"])
    assert out.returncode != 0
    msg = out.stderr + out.stdout
    assert "non-finite training loss" in msg and "optimizer step 7" in msg and "batch 0 of the epoch" in msg
    assert "dataset indices" in msg and "on_nonfinite_loss=skip" in msg
    # the periodic checkpoint before the failure is kept for resume (and holds finite weights)
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_nan_loss_skip_counts_and_goes_on(shared_data, tmp_path):
    out = _run("train", [*FAULT, f"hydra.run.dir={tmp_path / 'r'}", "on_nonfinite_loss=skip",
                         "+callbacks.nan._target_=tests.cli.probe.NaNLoss", "+callbacks.nan.batches=[3,4]"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "batch skipped (2 so far)" in out.stderr + out.stdout
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 20  # skipped batches make no optimizer step: 22 batches were drawn
    out = _run("train", [*FAULT, f"hydra.run.dir={tmp_path / 'r2'}", "on_nonfinite_loss=ignore"])
    assert out.returncode != 0 and "on_nonfinite_loss" in out.stderr + out.stdout


def test_same_seed_same_config_same_samples(shared_data, tmp_path):
    args = [*TINY, "trainer.max_steps=6", "eval.nll_batches=0"]
    for name in ("a", "b"):
        out = _run("train", [*args, f"hydra.run.dir={tmp_path / name}"])
        assert out.returncode == 0, out.stderr[-3000:]
    a, b = ((tmp_path / n / "samples.jsonl").read_text() for n in ("a", "b"))
    assert a == b and len(a.splitlines()) == 8
    ma, mb = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b"))
    timings = {"fit_seconds", "sampling_seconds", "sequences_per_second"}
    assert {k: v for k, v in ma.items() if k not in timings} == {k: v for k, v in mb.items() if k not in timings}
    assert "bleu" in ma


def test_global_batch_size_accumulates_micro_batches(shared_data, tmp_path):
    log = tmp_path / "order.txt"
    out = _run("train", [*FAULT, f"hydra.run.dir={tmp_path / 'r'}", "trainer.max_steps=3", "global_batch_size=48",
                         "data.max_train_examples=96",  # 6 batches: an epoch is two whole steps
                         "+callbacks.probe._target_=tests.cli.probe.DataOrderProbe", f"+callbacks.probe.path={log}"])
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [int(line.split()[0]) for line in log.read_text().splitlines()]
    assert steps == [0, 0, 1, 1, 1, 2, 2, 2, 3]  # 3 micro-batches of 16 per step (the probe sees the step before it)
    assert "global batch 48 = data.batch_size 16 x 1 processes x 3" in out.stderr + out.stdout
    out = _run("train", [*FAULT, f"hydra.run.dir={tmp_path / 'bad'}", "global_batch_size=40"])
    assert out.returncode != 0 and "global_batch_size=40" in out.stderr + out.stdout

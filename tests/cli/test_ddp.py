"""DDP through the real ``textdiff-train`` with ``trainer=ddp_sim`` (2 CPU processes, gloo): the ranks
train on disjoint batches (the duplicated-data bug reported against DiffuSeq), a step consumes
world_size x data.batch_size distinct examples, and the DDP checkpoint reloads in one process."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.cli.test_train_cli import REPO, TINY, _run


def _steps(path):
    return {int(s): [int(i) for i in ix.split(",")]
            for s, ix in (line.split() for line in path.read_text().splitlines())}


def test_ddp_sim_ranks_see_disjoint_batches_and_the_checkpoint_reloads_alone(shared_data, tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer=ddp_sim", "trainer.max_steps=6", "data.max_train_examples=96", "data.batch_size=8",
            "evaluate=false", f"hydra.run.dir={run_dir}", "callbacks.sample_and_score.every_n_validations=1000",
            "+callbacks.probe._target_=tests.cli.probe.DataOrderProbe",
            f"+callbacks.probe.path='{tmp_path}/rank{{rank}}.txt'"]
    # `python -m`: Lightning's DDP launcher starts the other rank by re-running this command
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "textdiff.cli.train", *args], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    r0, r1 = _steps(tmp_path / "rank0.txt"), _steps(tmp_path / "rank1.txt")
    assert sorted(r0) == sorted(r1) == list(range(1, 7))
    seen = []
    for step in r0:
        assert len(r0[step]) == len(r1[step]) == 8  # data.batch_size per rank
        assert not set(r0[step]) & set(r1[step]), f"step {step}: both ranks trained on {set(r0[step]) & set(r1[step])}"
        seen += r0[step] + r1[step]
    assert len(seen) == len(set(seen)) == 6 * 2 * 8  # global batch 16 per step; 96 examples = one epoch, no repeat
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6
    out = _run("sample", [f"run_dir={run_dir}", "num_samples=4", "nll_batches=0", "suffix=_one_process"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "metrics_one_process.json").read_text())["num_sequences"] == 4


@pytest.mark.slow  # 22 s: `make test-slow`
def test_ddp_sim_trains_ld4lg_whose_null_vector_skips_self_conditioned_steps(shared_data, tmp_path):
    """LD4LG's learned self-conditioning null vector takes no part in a self-conditioned step's loss: plain DDP
    stops at such a step ("parameters that were not used in producing the loss"); textdiff-train turns on
    find_unused_parameters for it. Four steps with p(self-cond) = 0.5 meet both kinds of step (seed 0)."""
    from tests.helpers import save_ld4lg_assets

    texts = (shared_data / "tatoeba_en" / "train.txt").read_text(encoding="utf-8").splitlines()[:300]
    _, ae_ckpt = save_ld4lg_assets(tmp_path / "assets", texts)
    run_dir = tmp_path / "run"
    args = ["experiment=ld4lg_tatoeba_cpu", f"model.autoencoder_path={ae_ckpt}", "trainer=ddp_sim",
            "trainer.max_steps=4", "data.max_train_examples=128", "data.max_eval_examples=16", "data.batch_size=8",
            "model.network.dim=32", "model.network.depth=2", "model.network.heads=2", "model.network.max_len=4",
            "model.network.latent_dim=8", "trainer.limit_val_batches=1", "trainer.val_check_interval=4",
            "callbacks.sample_and_score.every_n_validations=1000", "evaluate=false",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "textdiff.cli.train", *args], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "find_unused_parameters=True" in out.stdout + out.stderr
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4 and not bool(ckpt["state_dict"]["latent_stats_set"])  # none with L2 latents

"""The learning curve of ``SampleAndScore(curve=...)``: one JSON line per evaluation with the step, the training
clock (validation excluded) and the training FLOPs (FlopCounterMode on the first batch x batches), kept across a
resume; the FLOP count against a hand count on a linear model."""
import json

import pytorch_lightning as pl
import torch

from tests.cli.test_train_cli import TINY, _run
from textdiff.run.callbacks import SampleAndScore


class _Linear(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(8, 4, bias=False)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_flops_are_the_first_batch_count_scaled_by_the_batch_sizes(tmp_path):
    # 40 examples in batches of 15: 15, 15, 10, 15, 15, 10 rows; each row also has 3 integer "ids" (the size)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 8),
                                                                      torch.zeros(40, 3, dtype=torch.long)),
                                       batch_size=15)
    cb = SampleAndScore(curve=str(tmp_path / "curve.jsonl"))
    trainer = pl.Trainer(max_steps=6, max_epochs=-1, callbacks=[cb], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(_Linear(), data)
    # forward: one (15 x 8) @ (8 x 4) product = 2*15*8*4 FLOPs; backward: the weight's gradient only (the input
    # needs none), one product of the same size
    assert cb._first == (2 * (2 * 15 * 8 * 4), 15 * 3)
    cb._record(trainer, {"bleu": 1.5, "signature": "x", "flag": True})
    row = json.loads((tmp_path / "curve.jsonl").read_text())
    assert row["train_tokens"] == 3 * (15 + 15 + 10 + 15 + 15 + 10)
    # every row costs the same: FLOPs = 4 * 8 * 4 per row, times the 80 rows trained
    assert row["train_flops"] == 2 * (2 * 8 * 4) * 80 and row["global_step"] == 6 and row["fraction"] == 1.0
    assert row["bleu"] == 1.5 and "signature" not in row and "flag" not in row and row["train_seconds"] > 0


def test_learning_curve_through_textdiff_train_survives_a_resume(shared_data, tmp_path):
    run_dir = tmp_path / "run"
    curve = run_dir / "learning_curve.jsonl"
    common = [*TINY, "evaluate=false", f"hydra.run.dir={run_dir}", "trainer.val_check_interval=5",
              "callbacks.last_checkpoint.every_n_steps=10", f"+callbacks.sample_and_score.curve={curve}",
              "callbacks.sample_and_score.num_samples=6"]
    out = _run("train", [*common, "trainer.max_steps=10"])
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run("train", [*common, "trainer.max_steps=20", "resume=true"])
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in curve.read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [5, 10, 15, 20]
    assert [r["fraction"] for r in rows] == [0.5, 1.0, 0.75, 1.0]  # the second run's budget is 20 steps
    seconds = [r["train_seconds"] for r in rows]
    assert all(b > a for a, b in zip(seconds, seconds[1:]))  # the clock continues after the resume
    flops = [r["train_flops"] for r in rows]
    tokens = [r["train_tokens"] for r in rows]
    assert tokens == [tokens[0] * k for k in (1, 2, 3, 4)]  # fixed shapes (max_len 24): equal batches
    assert flops[0] > 0 and flops == [flops[0] * k for k in (1, 2, 3, 4)]  # so FLOPs ∝ steps
    assert all("self_bleu" in r and "entropy" in r and r["num_samples"] == 6 for r in rows)


def test_the_curve_and_the_final_evaluation_score_with_the_judge(shared_data, tmp_path):
    judge = tmp_path / "judge"
    out = _run("train", ["experiment=ar_lm_e2e_cpu", "data.max_train_examples=256", "data.max_eval_examples=32",
                         "data.batch_size=16", "model.network.dim=32", "model.network.dec_depth=1",
                         "model.network.heads=2", "model.network.ffn_dim=64", "trainer.max_steps=5",
                         "evaluate=false", "trainer.enable_progress_bar=false", f"hydra.run.dir={judge}"])
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "run"
    out = _run("train", [*TINY, "trainer.max_steps=10", f"hydra.run.dir={run_dir}",
                         f"+callbacks.sample_and_score.curve={run_dir / 'learning_curve.jsonl'}",
                         f"+callbacks.sample_and_score.judge_run={judge}", f"eval.lm={judge}"])
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "learning_curve.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [10] and rows[0]["lm_ppl"] > 1
    assert json.loads((run_dir / "metrics.json").read_text())["lm_ppl"] > 1

"""What a user sees while training: the shipped progress bar on a step-budgeted run, and no
``weights_only`` log line at every periodic checkpoint."""
import logging

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from textdiff.cli.common import CONF_DIR
from textdiff.run.callbacks import StepProgressBar
from textdiff.run.checkpoint import LastCheckpoint


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Record(pl.Callback):
    """What the bar would print at each training batch end."""

    def __init__(self, bar):
        self.bar, self.seen = bar, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((self.bar._get_train_description(trainer.current_epoch).strip(),
                          self.bar.get_metrics(trainer, pl_module).get("step")))


def _fit(tmp_path, **trainer_kwargs):
    cfg = OmegaConf.load(CONF_DIR / "callbacks" / "default.yaml")
    bar = instantiate(cfg.progress_bar)  # the shipped bar, from the shipped config
    assert isinstance(bar, StepProgressBar)
    record = Record(bar)
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)  # 2 batches per epoch
    trainer = pl.Trainer(callbacks=[bar, record, LastCheckpoint(tmp_path, every_n_steps=2)], logger=False,
                         enable_model_summary=False, accelerator="cpu",
                         default_root_dir=tmp_path, **trainer_kwargs)
    trainer.fit(Tiny(), data)
    return record.seen


def test_a_step_budget_shows_the_step_and_an_epoch_without_a_bogus_total(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        seen = _fit(tmp_path, max_steps=5, max_epochs=-1)
    assert seen == [("Epoch 0", "1/5"), ("Epoch 0", "2/5"), ("Epoch 1", "3/5"), ("Epoch 1", "4/5"),
                    ("Epoch 2", "5/5")]
    assert (tmp_path / "last.ckpt").is_file()
    assert not [r for r in caplog.records if "weights_only" in r.getMessage()]


def test_an_epoch_budget_keeps_its_total(tmp_path):
    seen = _fit(tmp_path, max_epochs=2)
    assert [s[0] for s in seen] == ["Epoch 0/1"] * 2 + ["Epoch 1/1"] * 2
    assert {s[1] for s in seen} == {None}

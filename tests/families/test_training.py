"""A tiny Diffusion-LM learns real text (E2E), and a saved checkpoint reloads and samples the same."""
from functools import partial

import pytorch_lightning as pl
import torch

from textdiff.core import DiscreteSchedule, GaussianProcess, Sampler, SqrtSchedule
from textdiff.data import TextDataModule, build_word_tokenizer
from textdiff.families import DiffusionLM
from textdiff.nn import TransformerDenoiser


def _setup(shared_data, vocab_size=None):
    dm = TextDataModule(train_path=str(shared_data / "e2e/train.jsonl"), test_path=str(shared_data / "e2e/test.jsonl"),
                        field="ref", max_len=24, batch_size=32, max_train_examples=3000, max_eval_examples=64,
                        tokenizer=partial(build_word_tokenizer, min_count=5), seed=0)
    tok = dm.build_tokenizer()
    return dm, tok


def _model(vocab, ema=None):
    torch.manual_seed(0)
    return DiffusionLM(TransformerDenoiser(16, dim=64, depth=2, heads=4, max_len=24, dropout=0.0),
                       GaussianProcess(DiscreteSchedule(SqrtSchedule(), 200)), vocab_size=vocab, embed_dim=16,
                       sampler=partial(Sampler, num_steps=20, eta=1.0),
                       optimizer=partial(torch.optim.AdamW, lr=2e-3), ema_decay=ema)


def _fixed_loss(model, batch):
    torch.manual_seed(123)
    model.eval()
    with torch.no_grad():
        return sum(model.compute_loss(batch)["loss"].item() for _ in range(4)) / 4


def test_loss_falls_on_e2e_and_checkpoint_reloads(shared_data, tmp_path):
    dm, tok = _setup(shared_data)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    model = _model(tok.vocab_size, ema=0.99)
    before = _fixed_loss(model, batch)
    trainer = pl.Trainer(accelerator="cpu", max_steps=200, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    after = _fixed_loss(model, batch)
    assert after < 0.6 * before, (before, after)

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = _model(tok.vocab_size)
    reloaded.load_weights(str(path))
    a, b = model.generate(6, seed=7), reloaded.generate(6, seed=7)
    assert torch.equal(a, b)
    texts = [tok.decode(row) for row in a.tolist()]
    assert all(isinstance(t, str) for t in texts)


class _StatefulModule(__import__("textdiff.families.base", fromlist=["TextModule"]).TextModule):
    """A parameter trained towards 1 and a buffer set on the first training batch (like LD4LG's latent stats)."""

    def __init__(self):
        super().__init__(optimizer=partial(torch.optim.SGD, lr=0.1), ema_decay=0.5)
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.register_buffer("stat", torch.zeros(()))
        self.seen_in_validation = []

    def compute_loss(self, batch):
        if self.training and float(self.stat) == 0:
            self.stat.fill_(7.0)
        if not self.training:
            self.seen_in_validation.append(float(self.stat))
        return {"loss": (self.w - 1) ** 2 + 0 * batch["ids"].float().mean()}


def test_ema_keeps_buffers_live_through_validation_checkpoints_and_the_end_of_fit(tmp_path):
    """torch's AveragedModel(use_buffers=False) copies the live buffers at each update; WeightAveraging swaps them
    with the weights, so buffer state set during training (LD4LG's latent statistics) must survive the swaps."""
    from torch.utils.data import DataLoader

    data = [{"ids": torch.zeros(3, dtype=torch.long)} for _ in range(8)]
    loader = DataLoader(data, batch_size=2)
    model = _StatefulModule()
    trainer = pl.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, val_check_interval=3, limit_val_batches=1,
                         num_sanity_val_steps=0, default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(model, loader, loader)
    assert model.seen_in_validation and all(v == 7.0 for v in model.seen_in_validation)
    assert float(model.stat) == 7.0  # after fit the module holds the EMA weights and the live buffers
    assert 0 < float(model.w) < 1  # averaged, not the raw weight
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert float(torch.load(tmp_path / "m.ckpt", weights_only=False)["state_dict"]["stat"]) == 7.0


def test_last_checkpoint_holds_the_last_steps_ema_update(tmp_path):
    """last.ckpt, written at the end of the last step, holds the weights the module ends fit with (the EMA of
    every step): textdiff-sample ckpt=last then draws the end-of-fit samples. As a plain callback it ran
    before the EMA's update of that step (MDLM: 4 of 200 samples differed by a word)."""
    from torch.utils.data import DataLoader

    from textdiff.run.checkpoint import LastCheckpoint

    loader = DataLoader([{"ids": torch.zeros(3, dtype=torch.long)} for _ in range(8)], batch_size=2)
    model = _StatefulModule()
    trainer = pl.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         default_root_dir=tmp_path, callbacks=[LastCheckpoint(str(tmp_path), every_n_steps=2)])
    trainer.fit(model, loader)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 5 and int(ckpt["averaging_state"]["n_averaged"]) == 5
    assert torch.equal(ckpt["state_dict"]["w"], model.w.detach()) and 0 < float(model.w) < 1


class _SetupSizedModule(_StatefulModule):
    """A buffer that ``setup`` gives its shape (as DiffusionBERT's length histogram and spindle weights)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("hist", torch.zeros(0))

    def setup(self, stage):
        if self.hist.numel() == 0:
            self.hist = torch.arange(5.0)


def test_ema_takes_the_buffers_that_setup_sized(tmp_path):
    """The averaged copy is made before the module's setup: validation swaps and resuming from a checkpoint used to
    fail on the shapes of buffers that setup fills (DiffusionBERT with ema_decay crashed at its first validation)."""
    from torch.utils.data import DataLoader

    loader = DataLoader([{"ids": torch.zeros(3, dtype=torch.long)} for _ in range(8)], batch_size=2)

    def trainer(steps):
        return pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, val_check_interval=2, limit_val_batches=1,
                          num_sanity_val_steps=0, default_root_dir=tmp_path, enable_checkpointing=False)

    model = _SetupSizedModule()
    first = trainer(4)
    first.fit(model, loader, loader)
    assert torch.equal(model.hist, torch.arange(5.0)) and model.seen_in_validation
    first.save_checkpoint(tmp_path / "m.ckpt")
    resumed = _SetupSizedModule()
    trainer(6).fit(resumed, loader, loader, ckpt_path=str(tmp_path / "m.ckpt"))
    assert torch.equal(resumed.hist, torch.arange(5.0)) and 0 < float(resumed.w) < 1

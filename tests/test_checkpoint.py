"""Atomic checkpoint writes: a save that dies half-way leaves the previous file whole and no temp file."""
import pickle

import pytest
import torch

from textdiff.run.checkpoint import AtomicCheckpointIO, LastCheckpoint, atomic_torch_save


class Explodes:
    """Pickling fails after torch.save has started writing the archive."""

    def __reduce__(self):
        raise pickle.PicklingError("killed mid-save")


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "ckpts" / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.arange(4.0)}, path)
    with pytest.raises(pickle.PicklingError):
        atomic_torch_save({"step": 2, "w": torch.zeros(1000), "bad": Explodes()}, path)
    loaded = torch.load(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_checkpoint_io_round_trips_and_rejects_remote_paths(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 7}, tmp_path / "a.ckpt")
    assert io.load_checkpoint(tmp_path / "a.ckpt", weights_only=False)["global_step"] == 7
    with pytest.raises(ValueError, match="local files"):
        io.save_checkpoint({}, "s3://bucket/a.ckpt")


def test_last_checkpoint_rejects_a_bad_interval(tmp_path):
    with pytest.raises(ValueError, match="every_n_steps"):
        LastCheckpoint(tmp_path, every_n_steps=0)

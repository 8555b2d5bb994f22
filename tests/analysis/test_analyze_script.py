"""experiments/difformer/analyze.py end to end on a tiny run directory built without training."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "difformer" / "analyze.py"


def _tiny_run(run_dir: Path) -> tuple[int, float]:
    """config.yaml, tokenizer/ and checkpoints/last.ckpt of an untrained tiny Difformer on Multi30k,
    with the embedding table changed from its initialisation (so the run differs from "init")."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    from textdiff.cli.common import CONF_DIR, build, build_datamodule, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "experiment=difformer_multi30k_cpu", "data.max_train_examples=200", "data.max_eval_examples=16",
            "model.network.dim=32", "model.network.enc_depth=1", "model.network.dec_depth=1",
            "model.network.heads=2", "model.network.ffn_dim=64", "model.network.latent_dim=16",
            "data.tokenizer.vocab_size=300"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dm = build_datamodule(cfg, run_dir)
    model = build(cfg, "model")
    with torch.no_grad():  # a common direction: the trained table is clearly anisotropic
        model.network.embedding.weight.add_(0.05)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    trainer = pl.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(model)
    (run_dir / "checkpoints").mkdir()
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    return dm.vocab_size, float(model.process.noise_factor)


def test_analyze_writes_json_and_plots(shared_data, tmp_path):
    run_dir = tmp_path / "run"
    V, train_f = _tiny_run(run_dir)
    out_dir = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg")
    cmd = [sys.executable, str(SCRIPT), str(run_dir), "--ckpt", "last", "--out", str(out_dir),
           "--num-batches", "1", "--factors", "1,4", "--num-times", "6"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "wrote" in res.stdout

    for name in ("norm_vs_frequency.png", "noisy_nn_accuracy.png", "noise_distance_ratio.png"):
        png = out_dir / name
        assert png.is_file() and png.stat().st_size > 1000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rep = json.loads((out_dir / "analysis.json").read_text())
    assert rep["vocab_size"] == V and rep["latent_dim"] == 16 and rep["training_noise_factor"] == train_f == 4.0
    assert rep["global_step"] == 0 and rep["checkpoint"].endswith("last.ckpt")
    assert rep["times"] == pytest.approx([0, 0.04, 0.16, 0.36, 0.64, 1.0]) and rep["num_tokens"] > 0  # (i/5)^2
    assert rep["counts"]["num_sequences"] == 200 and rep["counts"]["num_tokens"] > 200
    assert len(rep["special_ids"]) >= 3

    # +0.05 on every entry of an N(0, 0.02) table: a shared direction, so cosines near 0.05^2/(0.05^2+0.02^2)
    assert 0.6 < rep["anisotropy"]["embedding"] < 0.95
    assert rep["anisotropy"]["latent"] == pytest.approx(rep["anisotropy"]["embedding"], abs=1e-6)  # after_proj
    assert abs(rep["init"]["anisotropy"]["embedding"]) < 0.1  # the fresh N(0, 0.02) table

    nbf = rep["norm_by_frequency"]
    unseen = rep["unseen_tokens"]["num_tokens"]  # German-only pieces of the joint vocabulary, at least
    assert -1 <= nbf["spearman"] <= 1 and 0 < unseen and nbf["num_tokens"] + unseen == V - len(rep["special_ids"])
    assert all(b["count_min"] >= 1 for b in nbf["bins"])  # only tokens seen in the training targets
    assert len(nbf["bins"]) == 10 and sum(b["num_tokens"] for b in nbf["bins"]) == nbf["num_tokens"]
    assert nbf["mean_norm"] == pytest.approx(4 * (16 * (0.05**2 + 0.02**2)) ** 0.5, rel=0.1)  # sqrt(16) |E[w]|

    nn = rep["nearest_neighbor_distance"]
    assert 0 < nn["min"] <= nn["median"] <= nn["max"] and nn["min"] <= nn["mean"] <= nn["max"]

    acc = rep["noisy_nn_accuracy"]
    assert set(acc) == {"dot", "l2"} and set(acc["dot"]) == set(acc["l2"]) == {"1", "4"}
    for curves in acc.values():
        for curve in curves.values():
            assert len(curve) == 6 and all(0.0 <= a <= 1.0 for a in curve)
    assert acc["l2"]["1"][0] == 1.0  # t = 0: every latent is its own nearest row
    assert acc["l2"]["4"][-1] < 0.5 and acc["l2"]["1"][2] >= acc["l2"]["4"][2]

    ratio = rep["noise_distance_ratio"]
    assert set(ratio) == {"1", "4"}
    assert ratio["1"][0] == 0.0 and all(a < b for a, b in zip(ratio["1"][1:], ratio["1"][2:]))
    assert ratio["4"][3] == pytest.approx(4 * ratio["1"][3], rel=1e-6)
    assert set(rep["init"]) >= {"anisotropy", "norm_by_frequency", "noisy_nn_accuracy", "noise_distance_ratio"}


def test_analyze_rejects_a_directory_without_a_run(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert res.returncode == 2 and "config.yaml" in res.stderr

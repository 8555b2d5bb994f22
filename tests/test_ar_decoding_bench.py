"""benchmarks/ar_decoding.py end to end in its --quick mode on tiny models: a random network of the preset with
tiny overrides, and a tiny trained ar_multi30k_cpu run directory (cached vs uncached vs transformers)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import ar_decoding

REPO = Path(__file__).resolve().parents[1]
TINY_NET = ["model.network.dim=32", "model.network.heads=2", "model.network.ffn_dim=64", "model.network.enc_depth=1",
            "model.network.dec_depth=1", "data.max_len=12", "data.max_src_len=16", "data.vocab_size=60"]

pytestmark = pytest.mark.usefixtures("one_thread")  # main() sets one thread; the fixture restores the count


def _positive(x):
    return isinstance(x, (int, float)) and x > 0


def _check_rows(rows, group, decoders, forced=None):
    mine = [r for r in rows if r["group"] == group]
    q = ar_decoding.QUICK
    assert {(r["batch"], r["beam"], r["decoder"]) for r in mine} == {
        (b, k, d) for b in (q.large_batch, 1) for k in q.beams for d in decoders}
    for r in mine:
        assert _positive(r["sentences_per_second"]) and len(r["seconds_runs"]) == 1
        assert r["sentences"] == (q.large_batch if r["batch"] > 1 else q.small_sentences)
        if forced is not None:
            assert r["output_length"] == forced, r  # every decoder decodes the same number of positions
        if r["decoder"] == "textdiff_cached":
            assert r["same_ids_as_uncached"] is True, r
    return mine


def test_quick_bench_on_a_tiny_random_model(tmp_path, capsys):
    ar_decoding.main(["--quick", "--out", str(tmp_path), *(f"--override={o}" for o in TINY_NET)])
    path = tmp_path / "ar_decoding_cpu_quick.json"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "ar_decoding" and doc["quick"] is True and doc["mode"] == "random"
    assert doc["machine"]["threads"] == 1 and doc["machine"]["device"] == "cpu"
    assert doc["network"]["dim"] == 32 and doc["network"]["vocab_size"] == 60 and doc["forced_length"] == 12
    cfg = doc["transformers"]["config"]
    assert doc["transformers"]["class"] == "BartForConditionalGeneration"
    assert (cfg["d_model"], cfg["encoder_layers"], cfg["decoder_layers"], cfg["vocab_size"]) == (32, 1, 1, 60)
    _check_rows(doc["results"], "forced_length", ar_decoding.DECODERS, forced=12)
    assert not [r for r in doc["results"] if r["group"] != "forced_length"]
    assert set(doc["speedups"]) == {f"forced_length batch={b} beam={k}" for b in (8, 1) for k in (1, 4)}
    assert all(_positive(v["cached_over_transformers"]) for v in doc["speedups"].values())
    out = capsys.readouterr().out
    assert "transformers" in out and f"wrote {path}" in out


def test_pre_ln_networks_are_compared_with_mbart(tmp_path):
    ar_decoding.main(["--quick", "--out", str(tmp_path), *(f"--override={o}" for o in TINY_NET),
                      "--override=model.network.norm_first=true", "--override=model.network.activation=gelu"])
    doc = json.loads((tmp_path / "ar_decoding_cpu_quick.json").read_text())
    assert doc["transformers"]["class"] == "MBartForConditionalGeneration"
    assert doc["transformers"]["config"]["activation_function"] == "gelu" and doc["network"]["norm_first"]
    _check_rows(doc["results"], "forced_length", ar_decoding.DECODERS, forced=12)


def test_quick_bench_on_a_trained_run_directory(shared_data, tmp_path):
    run_dir = tmp_path / "ar"
    train = ["experiment=ar_multi30k_cpu", "data.max_train_examples=256", "data.max_eval_examples=16",
             "data.batch_size=16", "data.eval_batch_size=8", "data.tokenizer.vocab_size=300",
             "model.network.dim=32", "model.network.enc_depth=1", "model.network.dec_depth=1",
             "model.network.heads=2", "model.network.ffn_dim=64", "data.max_len=16", "trainer.max_steps=10",
             "trainer.val_check_interval=10", "trainer.limit_val_batches=1", "callbacks.sample_and_score.num_samples=2",
             "eval.num_samples=4", "eval.nll_batches=1", "trainer.enable_progress_bar=false",
             f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", "import sys; from textdiff.cli.train import main; sys.argv[0]='train'; main()", *train]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    ar_decoding.main(["--quick", "--run-dir", str(run_dir), "--ckpt", "last", "--out", str(tmp_path / "res")])
    doc = json.loads((tmp_path / "res" / "ar_decoding_trained_cpu_quick.json").read_text())
    assert doc["mode"] == "run_dir" and doc["checkpoint"].endswith("last.ckpt") and doc["forced_length"] == 16
    _check_rows(doc["results"], "forced_length", ar_decoding.DECODERS, forced=16)
    natural = _check_rows(doc["results"], "natural", ar_decoding.DECODERS[:2])
    for batch in (8, 1):
        for beam in (1, 4):
            pair = {r["decoder"]: r for r in natural if (r["batch"], r["beam"]) == (batch, beam)}
            bleu = {k: r["bleu"] for k, r in pair.items()}
            assert bleu["textdiff_cached"] == bleu["textdiff_uncached"] >= 0  # same ids, same BLEU
            assert pair["textdiff_cached"]["signature"].startswith("nrefs:1")
    with pytest.raises(SystemExit):
        ar_decoding.main(["--quick", "--run-dir", str(run_dir), "--override", "model.network.dim=8"])

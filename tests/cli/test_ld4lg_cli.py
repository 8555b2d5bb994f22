"""LD4LG's three CPU presets chained through the real entry points on a sliver of Tatoeba: stage 0 exports a
BART directory, stage 1 trains on it, stage 2 trains on stage 1's checkpoint, and textdiff-sample reloads it."""
import json

from tests.cli.test_train_cli import _run

COMMON = ["data.max_train_examples=256", "data.max_eval_examples=16", "data.batch_size=16", "trainer.max_steps=8",
          "trainer.val_check_interval=4", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=2",
          "trainer.enable_progress_bar=false", "eval.num_samples=6"]


def test_three_stages_chain(shared_data, tmp_path):
    bart_run, ae_run, diff_run = tmp_path / "bart", tmp_path / "ae", tmp_path / "diff"
    out = _run("train", ["experiment=ld4lg_bart_tatoeba_cpu", *COMMON, "model.bart.d_model=32",
                         "model.bart.encoder_layers=1", "model.bart.decoder_layers=1", "model.bart.encoder_ffn_dim=64",
                         "model.bart.decoder_ffn_dim=64", "model.generate_kwargs.num_beams=2",
                         f"hydra.run.dir={bart_run}"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert (bart_run / "bart" / "config.json").exists() and (bart_run / "bart" / "vocab.json").exists()
    m = json.loads((bart_run / "metrics.json").read_text())
    assert m["num_examples"] == 6 and {"copy_bleu", "denoise_bleu", "copy_exact"} <= set(m)

    out = _run("train", ["experiment=ld4lg_ae_tatoeba_cpu", *COMMON, f"model.bart_path={bart_run / 'bart'}",
                         "model.num_latents=4", "model.latent_dim=8", "model.compress_depth=1", "model.dim_head=8",
                         "model.reconstruct_depth=1", "model.generate_kwargs.num_beams=2",
                         f"hydra.run.dir={ae_run}"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert (ae_run / "tokenizer").is_dir()  # the BART's tokenizer, copied: stage 2 reads it from here
    m = json.loads((ae_run / "metrics.json").read_text())
    assert "reconstruction_bleu" in m and m["bleu"] == m["reconstruction_bleu"]
    rec = json.loads((ae_run / "samples.jsonl").read_text().splitlines()[0])
    assert {"text", "input", "reconstruction"} <= set(rec)

    out = _run("train", ["experiment=ld4lg_tatoeba_cpu", *COMMON,
                         f"model.autoencoder_path={ae_run / 'checkpoints' / 'last.ckpt'}", "model.network.dim=32",
                         "model.network.depth=2", "model.network.heads=2", "model.network.max_len=4",
                         "model.network.latent_dim=8", "sampler.num_steps=5",
                         "callbacks.sample_and_score.num_samples=4",
                         "callbacks.sample_and_score.num_steps=3", f"hydra.run.dir={diff_run}"])
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((diff_run / "metrics.json").read_text())
    assert m["global_step"] == 8 and m["num_sequences"] == 6 and "diversity" in m and "memorization" in m
    assert m["sampler"]["num_steps"] == 5 and m["sampler"]["variance"] == "large"

    out = _run("sample", [f"run_dir={diff_run}", "num_samples=3", "sampler.num_steps=3", "suffix=_k3", "nll_batches=0"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((diff_run / "metrics_k3.json").read_text())["num_sequences"] == 3


def test_class_conditional_stage_with_a_classifier_judge(shared_data, tmp_path):
    """Stage 2 on E2E eatType classes (on a stand-in autoencoder), judged by a classifier run: samples ask for
    the classes in turn and metrics.json reports the share the classifier puts in the requested class."""
    from tests.helpers import save_ld4lg_assets

    texts = [json.loads(line)["ref"] for line in (shared_data / "e2e" / "train.jsonl").read_text().splitlines()[:2000]]
    _, ae_ckpt = save_ld4lg_assets(tmp_path / "assets", texts)
    clf_run, diff_run = tmp_path / "clf", tmp_path / "diff"
    tiny_data = ["data.max_eval_examples=100", "data.batch_size=16", "trainer.enable_progress_bar=false"]
    out = _run("train", ["experiment=classifier_e2e_cpu", *tiny_data, "trainer.max_steps=4", "eval.num_samples=8",
                         "model.network.dim=16", "model.network.depth=1", "model.network.heads=2",
                         f"hydra.run.dir={clf_run}"])
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run("train", ["experiment=ld4lg_e2e_class_cpu", *tiny_data, f"model.autoencoder_path={ae_ckpt}",
                         "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                         "model.network.dim=32", "model.network.depth=2", "model.network.heads=2",
                         "model.network.max_len=4", "model.network.latent_dim=8", "model.guidance_weight=2.0",
                         "sampler.num_steps=3", "callbacks.sample_and_score.num_samples=3",
                         "callbacks.sample_and_score.num_steps=2", "eval.num_samples=6", f"eval.classifier={clf_run}",
                         f"hydra.run.dir={diff_run}"])
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((diff_run / "metrics.json").read_text())
    assert 0.0 <= m["class_accuracy"] <= 1.0 and m["sampler"]["guidance_weight"] == 2.0
    records = [json.loads(line) for line in (diff_run / "samples.jsonl").read_text().splitlines()]
    assert [r["class"] for r in records] == ["coffee shop", "pub", "restaurant"] * 2
    assert all("classified_as" in r for r in records)
    assert m["class_accuracy"] == sum(r["class"] == r["classified_as"] for r in records) / 6

"""``benchmarks.curves`` (quality against speed of a trained run) end to end with ``--quick`` on saved runs of toy
models: every point has a quality, a speed and its network evaluations; the JSON and the PNG are written."""
from __future__ import annotations

import json

import pytest

from benchmarks import curves
from tests.cli.test_runs import _saved_run

TINY_BERT = "model.network.bert={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}"


@pytest.mark.parametrize("overrides, curve_names, fixed", [
    ((), {"ancestral (preset)", "DDIM", "DPM-Solver++(2M)", "SDE-DPM-Solver++(2M)"}, {}),
    (("model=diffusion_bert", "sampler=absorbing", "schedule=mutual", "+data.tokenizer.add_mask_token=true",
      TINY_BERT), {"ancestral (preset)", "confidence (prob)", "confidence (margin)", "threshold"},
     {"closed_form_posterior": False}),
])
def test_quick_curves_of_a_saved_run(tmp_path, one_thread, overrides, curve_names, fixed):
    run_dir, _ = _saved_run(tmp_path, list(overrides))
    extra = [f"--sampler={k}={str(v).lower()}" for k, v in fixed.items()]
    result = curves.main(["--run-dir", str(run_dir), "--name", "toy", "--quick", "--out", str(tmp_path / "out"),
                          "--latency", "2", *extra])
    assert result["sampler_settings"] == fixed
    assert all(p["sampler"].items() >= fixed.items() for p in result["points"] if p["curve"] != "AR")
    path = tmp_path / "out" / "curves_toy_cpu_quick.json"
    assert json.loads(path.read_text())["points"] == json.loads(json.dumps(result["points"]))
    assert path.with_suffix(".png").stat().st_size > 1000
    assert {p["curve"] for p in result["points"]} == curve_names
    for p in result["points"]:
        assert p["sentences_per_second"] > 0 and p["nfe_per_sequence"] > 0 and "bleu" in p["quality"]
        assert p["nfe_per_sequence"] <= p["sampler"]["num_steps"]
    over = result["sampler_overhead"]  # Sampler.sample against the same denoiser calls made bare
    assert len(over["bare_seconds"]) == len(over["sampler_seconds"]) == 1
    assert 1 <= over["denoiser_calls"] <= over["num_steps"] and over["rows_per_call"] == 8  # one batch of 8
    assert over["overhead_ratio"] > 0
    assert len(result["latency_batch1"]) == 3 and all(r["seconds_per_sentence"] > 0 for r in result["latency_batch1"])
    # --overhead-only re-measures the overhead into the same JSON, at its settings, and keeps its points
    base = ["--run-dir", str(run_dir), "--name", "toy", "--quick", "--out", str(tmp_path / "out")]
    again = curves.main([*base, "--overhead-only", *extra])
    doc = json.loads(path.read_text())
    assert doc["points"] == json.loads(json.dumps(result["points"])) and doc == json.loads(json.dumps(again))
    assert doc["sampler_overhead"]["denoiser_calls"] == over["denoiser_calls"] and "--overhead-only" in \
        doc["sampler_overhead"]["command"] and doc["sampler_overhead"]["date"]
    with pytest.raises(SystemExit, match="measured with --sampler settings"):  # not the JSON's
        curves.main([*base, "--overhead-only", "--sampler=num_steps=3"])
    with pytest.raises(SystemExit, match="run the curves first"):
        curves.main([*base[:3], "other", *base[4:], "--overhead-only"])


def test_sampler_settings_are_parsed_as_yaml_and_malformed_ones_named():
    assert curves.parse_settings(["closed_form_posterior=true", "threshold=0.5", "block_length=null"]) == \
        {"closed_form_posterior": True, "threshold": 0.5, "block_length": None}
    with pytest.raises(SystemExit, match="'eta'"):
        curves.parse_settings(["eta"])


def test_gaussian_grid_gives_deterministic_samplers_the_posterior_variance():
    """LD4LG's preset samples with DDPM's "large" variance, which exists for eta = 1 only: the DDIM and
    DPM-Solver++ points of its grid must ask for the "small" one (the bench stopped there)."""
    grid = curves.gaussian_grid([5, 10], {"eta": 1.0, "variance": "large"})
    deterministic = [g["sampler"] for g in grid if g["sampler"].get("eta") == 0.0]
    assert len(deterministic) == 4 and all(s["variance"] == "small" for s in deterministic)
    assert not any("SDE" in g["curve"] for g in grid)  # its ancestral correction assumes the posterior variance
    assert all("variance" not in g["sampler"] for g in curves.gaussian_grid([5], {"eta": 1.0, "variance": "small"}))

"""textdiff-report on fake run directories (written here, no training), plus one tiny real multirun."""
import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from textdiff.cli.report import collect_runs, main, summarize, to_csv, to_markdown

REPO = Path(__file__).resolve().parents[2]


def make_run(path, overrides, config, metrics, metrics_name="metrics.json"):
    """A run directory as textdiff-train writes it; ``overrides=None``: no .hydra/ folder."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump({**config, "paths": {"output_dir": str(path)}}))
    if overrides is not None:
        (path / ".hydra").mkdir(exist_ok=True)
        (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / "checkpoints").mkdir(exist_ok=True)
    (path / metrics_name).write_text(json.dumps(metrics))
    return path


def make_sweep(root):
    """0/ and 1/ differ only by seed; 1/ lacks nll; 3/ lacks chrf and has a different variant."""
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {mode: MULTIRUN}\n")
    specs = [("a", 10, 0, {"bleu": 10.1, "chrf": 30.0, "nll": 2.5}),
             ("a", 10, 1, {"bleu": 12.4, "chrf": 31.5}),
             ("a", 100, 0, {"bleu": 20.0, "chrf": 40.0, "nll": 2.0}),
             ("b", 100, 0, {"bleu": 5.0, "nll": "nan"})]
    for i, (variant, steps, seed, scores) in enumerate(specs):
        overrides = ["experiment=tiny", f"variant={variant}", f"sampler.num_steps={steps}", f"seed={seed}",
                     f"hydra.run.dir=/elsewhere/{i}"]
        config = {"seed": seed, "sampler": {"num_steps": steps, "eta": 1.0}, "model": {"dim": 32}}
        metrics = {**scores, "sampler": {"num_steps": steps}, "signature": "nrefs:1|13a", "gen_clamp": True,
                   "lengths": [1, 2]}
        make_run(root / str(i), overrides, config, metrics)
    return root


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_sweep_table_numbers_columns_and_blanks(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "multirun" / "12-00-00")
    (sweep / "4").mkdir()
    (sweep / "4" / "config.yaml").write_text("seed: 2\n")  # a failed job: no metrics.json, left out
    out = tmp_path / "report"
    main([str(sweep), "--out", str(out)])
    rows = read_csv(out / "report.csv")
    assert list(rows[0])[:5] == ["variant", "sampler.num_steps", "n", "seeds", "runs"]  # varying overrides only
    assert list(rows[0])[5:] == [f"{m}_{s}" for m in ("bleu", "chrf", "nll") for s in ("mean", "std", "n")]
    # strings, booleans and lists are skipped; nested values (settings echoed: sampler.*) only when named
    assert [(r["variant"], r["sampler.num_steps"], r["n"]) for r in rows] == [("a", "10", "2"), ("a", "100", "1"),
                                                                               ("b", "100", "1")]
    pair = rows[0]
    assert pair["seeds"] == "0;1"
    assert float(pair["bleu_mean"]) == statistics.mean([10.1, 12.4]) == pytest.approx(11.25, abs=1e-12)
    assert float(pair["bleu_std"]) == statistics.stdev([10.1, 12.4]) == pytest.approx(1.15 * math.sqrt(2), rel=1e-12)
    assert float(pair["chrf_std"]) == pytest.approx(math.sqrt(((30 - 30.75) ** 2 + (31.5 - 30.75) ** 2) / 1), rel=1e-15)
    assert (pair["nll_mean"], pair["nll_std"], pair["nll_n"]) == ("2.5", "", "1")  # one of two runs has it
    assert (rows[1]["bleu_mean"], rows[1]["bleu_std"], rows[1]["bleu_n"]) == ("20.0", "", "1")
    assert (rows[2]["chrf_mean"], rows[2]["chrf_std"], rows[2]["chrf_n"]) == ("", "", "0")  # missing: blank
    assert math.isnan(float(rows[2]["nll_mean"]))  # "nan" as written by evaluation._json_safe

    captured = capsys.readouterr()
    printed = captured.out
    assert f"skipped {sweep / '4'}" in captured.err
    assert printed == (out / "report.md").read_text().split("\n", 2)[2]
    lines = printed.splitlines()
    assert lines[0] == "| variant | sampler.num_steps | n | bleu | chrf | nll |"
    assert lines[2].startswith("| a | 10 | 2 | 11.250 ± 1.626 | 30.750 ± 1.061 | 2.500 ± – (n=1) |")
    assert lines[3].startswith("| a | 100 | 1 | 20.000 ± – | 40.000 ± – | 2.000 ± – |")
    assert lines[4].startswith("| b | 100 | 1 | 5.000 ± – |  | nan ± – |")
    assert "ddof=1" in (out / "report.md").read_text()


def test_plots_are_pngs_for_numeric_columns_only(tmp_path):
    out = tmp_path / "report"
    main([str(make_sweep(tmp_path / "sweep")), "--metrics", "bleu,chrf", "--out", str(out)])
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["bleu_vs_sampler.num_steps.png", "chrf_vs_sampler.num_steps.png"]  # not vs variant
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    import matplotlib.image

    assert matplotlib.image.imread(out / pngs[0]).ndim == 3


def test_without_matplotlib_the_tables_are_still_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    out = tmp_path / "report"
    main([str(make_sweep(tmp_path / "sweep")), "--out", str(out)])
    assert (out / "report.csv").exists() and (out / "report.md").exists() and not list(out.glob("*.png"))
    assert "matplotlib is not installed" in capsys.readouterr().err


def test_selection_sorting_precision_and_forced_columns(tmp_path):
    runs = collect_runs([make_sweep(tmp_path / "sweep")])
    table = summarize(runs, metrics=["bleu", "sampler.*"], sort="-bleu")
    assert table.metrics == ["bleu", "sampler.num_steps"]
    assert [g.stats["bleu"][0] for g in table.groups] == [20.0, statistics.mean([10.1, 12.4]), 5.0]
    assert "| a | 100 | 1 | 20.0 ± – | 100.0 ± – |" in to_markdown(table, precision=1)
    table = summarize(runs, group_by=["variant"], metrics=["bleu"])  # 3 runs of variant a in one row
    assert [(g.values["variant"], len(g.runs)) for g in table.groups] == [("a", 3), ("b", 1)]
    assert to_csv(table).splitlines()[0] == "variant,n,seeds,runs,bleu_mean,bleu_std,bleu_n"


def test_metrics_file_suffix_and_glob(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    (sweep / "0" / "metrics_k5.json").write_text(json.dumps({"bleu": 7.0}))
    runs = collect_runs([sweep], metrics_file="k5")
    assert [(r.path.name, r.metrics_file, r.metrics) for r in runs] == [("0", "metrics_k5.json", {"bleu": 7.0})]
    table = summarize(collect_runs([sweep], metrics_file="metrics*.json"), metrics=["bleu"])
    assert table.columns == ["variant", "sampler.num_steps", "metrics_file"]
    assert ("a", 10, "metrics_k5.json") in [tuple(g.values.values()) for g in table.groups]


def test_string_columns_sort_in_natural_order(tmp_path):
    """A K sweep written by textdiff-sample (metrics_k10/_k50/_k200.json) lists K = 10, 50, 200, not 10, 200, 50."""
    run = make_run(tmp_path / "run", ["experiment=tiny"], {"task_name": "tiny"}, {"bleu": 1.0})
    for k in (200, 10, 50):
        (run / f"metrics_k{k}.json").write_text(json.dumps({"bleu": float(k)}))
    table = summarize(collect_runs([run], metrics_file="metrics_k*.json"), metrics=["bleu"], group_by=["metrics_file"])
    assert [g.values["metrics_file"] for g in table.groups] == ["metrics_k10.json", "metrics_k50.json",
                                                                 "metrics_k200.json"]


def test_runs_without_overrides_use_the_config_keys_that_differ(tmp_path):
    for name, lr, seed, bleu in [("x", 0.1, 0, 1.0), ("y", 0.1, 1, 3.0), ("z", 0.01, 0, 8.0)]:
        make_run(tmp_path / "runs" / name, None, {"seed": seed, "optim": {"lr": lr}, "dim": 8}, {"bleu": bleu})
    table = summarize(collect_runs([tmp_path / "runs"]))
    assert table.columns == ["optim.lr"]  # not seed, not paths.output_dir, not dim
    assert [(g.values["optim.lr"], g.stats["bleu"]) for g in table.groups] == [
        (0.01, (8.0, None, 1)), (0.1, (2.0, statistics.stdev([1.0, 3.0]), 2))]


def test_errors_name_the_path(tmp_path, capsys):
    missing = tmp_path / "no_such_sweep"
    with pytest.raises(SystemExit) as err:
        main([str(missing)])
    assert str(missing) in str(err.value.code) and "no such" in str(err.value.code)
    empty = tmp_path / "empty"
    (empty / "0").mkdir(parents=True)
    with pytest.raises(SystemExit) as err:
        main([str(empty)])
    assert str(empty) in str(err.value.code) and "no run directories" in str(err.value.code)
    bad = make_run(tmp_path / "bad", ["seed=0"], {"seed": 0}, {})
    (bad / "metrics.json").write_text('{"bleu": 1.0,')
    with pytest.raises(SystemExit) as err:
        main([str(bad)])
    assert str(bad / "metrics.json") in str(err.value.code) and "malformed JSON" in str(err.value.code)
    with pytest.raises(SystemExit) as err:
        main([str(make_sweep(tmp_path / "sweep")), "--sort", "blue"])
    assert "blue" in str(err.value.code)


def test_console_script_exits_nonzero_naming_the_path(tmp_path):
    script = Path(sys.executable).parent / "textdiff-report"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "textdiff.cli.report"]
    out = subprocess.run([*cmd, str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and str(tmp_path / "nope") in out.stderr
    out = subprocess.run([*cmd, str(make_sweep(tmp_path / "sweep")), "--metrics", "bleu"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "11.250 ± 1.626" in out.stdout


TINY_TOY = [
    "experiment=diffusion_lm_e2e_cpu", "data=toy", "data.max_train_examples=128", "data.max_eval_examples=32",
    "data.batch_size=16", "data.max_len=16", "model.network.dim=16", "model.network.depth=1",
    "model.network.heads=2", "diffusion_steps=20", "sampler.num_steps=4", "trainer.max_steps=2",
    "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "callbacks.sample_and_score.num_samples=2",
    "callbacks.sample_and_score.num_steps=2", "logger=csv", "eval.num_samples=4", "eval.batch_size=4",
    "eval.nll_batches=1", "eval.nll_num_t=1", "trainer.enable_progress_bar=false",
]


def test_real_tiny_multirun(tmp_path):
    """textdiff-train -m over 2 dropouts x 2 seeds on the synthetic corpus (~15 s), then the report."""
    sweep = tmp_path / "multirun"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TEXTDIFF_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-c", "import sys; from textdiff.cli.train import main; sys.argv[0]='train'; main()",
           "-m", *TINY_TOY, "model.network.dropout=0.0,0.1", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = tmp_path / "report"
    main([str(sweep), "--metrics", "bleu,nll,global_step", "--out", str(report)])
    rows = read_csv(report / "report.csv")
    assert list(rows[0])[:3] == ["model.network.dropout", "n", "seeds"]
    assert [(r["model.network.dropout"], r["n"], r["seeds"], r["global_step_mean"]) for r in rows] == [
        ("0.0", "2", "0;1", "2.0"), ("0.1", "2", "0;1", "2.0")]
    for row in rows:
        bleus = [json.loads((Path(p) / "metrics.json").read_text())["bleu"] for p in row["runs"].split(";")]
        assert float(row["bleu_mean"]) == statistics.mean(bleus)
        assert float(row["bleu_std"]) == statistics.stdev(bleus)
    assert (report / "bleu_vs_model.network.dropout.png").exists()


@pytest.mark.slow  # 35 s: `make test-slow`
def test_parallel_launcher_runs_jobs_side_by_side_with_the_same_results(tmp_path):
    """hydra/launcher=parallel (joblib, 2 jobs) runs the sweep's jobs in worker processes, each with its share of
    the cores, and each job's samples are those of the same job under the default (sequential) launcher."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TEXTDIFF_CACHE=str(tmp_path / "cache"))
    env.pop("OMP_NUM_THREADS", None)
    cmd = [sys.executable, "-c", "import sys; from textdiff.cli.train import main; sys.argv[0]='train'; main()",
           "-m", *TINY_TOY, "seed=0,1"]
    samples = {}
    for launcher in ("basic", "parallel"):
        sweep = tmp_path / launcher
        out = subprocess.run([*cmd, f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}"], capture_output=True,
                             text=True, cwd=REPO, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        samples[launcher] = [(sweep / str(job) / "samples.jsonl").read_text() for job in (0, 1)]
        threads = {int(line.split("|")[-1].split()[0]) for job in (0, 1)
                   for line in (sweep / str(job) / "train.log").read_text().splitlines() if "torch threads" in line}
        if launcher == "parallel":  # joblib gives each of the 2 workers cpu_count // 2 threads
            assert threads == {max(1, (os.cpu_count() or 2) // 2)}, threads
    assert samples["parallel"] == samples["basic"] and samples["basic"][0] != samples["basic"][1]

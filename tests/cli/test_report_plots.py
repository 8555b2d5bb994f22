"""textdiff-report's frontier and learning-curve plots on fake run directories (no training)."""
import csv
import json

import pytest

from tests.cli.test_report import make_run
from textdiff.cli.report import main
from textdiff.cli.report_plots import read_curve


def _table(root):
    """Two entrants, each with a default metrics file and a K sweep, and learning curves (one resumed: a step
    evaluated twice)."""
    for i, (name, points) in enumerate([("ar", [("", 4.0, 60.0), ("_t0.7", 3.0, 20.0)]),
                                         ("dlm", [("", 4.5, 200.0), ("_k10", 4.8, 400.0), ("_k50", 4.6, 250.0)])]):
        run = root / str(i)
        for suffix, entropy, ppl in points:
            make_run(run, [f"experiment=compare_{name}"], {"task_name": name, "seed": 0},
                     {"entropy": entropy, "lm_ppl": ppl, "bleu": 1.0}, f"metrics{suffix}.json")
        rows = [{"global_step": s, "train_seconds": 10.0 * s, "train_flops": 1e9 * s * (i + 1), "lm_ppl": 500.0 / s,
                 "entropy": 4.0} for s in (1, 2, 3)]
        rows.insert(2, {**rows[1], "lm_ppl": 1.0})  # step 2 again after a resume: the last row wins
        (run / "learning_curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    make_run(root / "9", ["experiment=compare_reference"], {"task_name": "reference", "seed": 0},
             {"entropy": 1.0, "lm_ppl": 30.0, "global_step": 0})  # trained nothing: a line on the curves
    return root


def _csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_frontier_draws_one_curve_per_run_through_its_metrics_files(tmp_path):
    out = tmp_path / "report"
    main([str(_table(tmp_path / "t")), "--columns", "task_name", "--out", str(out), "--frontier", "--frontier",
          "entropy,bleu"])
    assert (out / "frontier_bleu_vs_entropy.png").exists()
    png = out / "frontier_lm_ppl_vs_entropy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _csv(out / "frontier_lm_ppl_vs_entropy.csv")
    assert [(r["run"], r["knob"], float(r["entropy"])) for r in rows] == [
        ("ar", "t0.7", 3.0), ("ar", "default", 4.0), ("dlm", "default", 4.5), ("dlm", "k50", 4.6), ("dlm", "k10", 4.8),
        ("reference", "default", 1.0)]


def test_learning_curves_against_time_and_flops(tmp_path):
    out = tmp_path / "report"
    main([str(_table(tmp_path / "t")), "--columns", "task_name", "--out", str(out), "--learning-curves"])
    names = sorted(p.name for p in out.glob("curve_*.png"))
    assert names == ["curve_entropy_vs_train_flops.png", "curve_entropy_vs_train_seconds.png",
                     "curve_lm_ppl_vs_train_flops.png", "curve_lm_ppl_vs_train_seconds.png"]
    import matplotlib.image

    assert matplotlib.image.imread(out / names[0]).ndim == 3
    rows = _csv(out / "learning_curves.csv")  # the reference row has no curve, only its line
    assert [(r["run"], r["global_step"], float(r["lm_ppl"])) for r in rows] == [
        ("ar", "1", 500.0), ("ar", "2", 1.0), ("ar", "3", 500.0 / 3), ("dlm", "1", 500.0), ("dlm", "2", 1.0),
        ("dlm", "3", 500.0 / 3)]
    assert float(rows[-1]["train_flops"]) == 6e9


def test_plot_flags_need_out_and_a_bad_curve_line_is_named(tmp_path, capsys):
    root = _table(tmp_path / "t")
    with pytest.raises(SystemExit, match="--out"):
        main([str(root), "--frontier"])
    with pytest.raises(SystemExit, match="expected two metric names"):
        main([str(root), "--frontier", "entropy", "--out", str(tmp_path / "o")])
    (root / "0" / "learning_curve.jsonl").write_text('{"global_step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"learning_curve.jsonl:2: malformed JSON"):
        read_curve(root / "0")
    with pytest.raises(SystemExit, match=r"learning_curve.jsonl:2: malformed JSON"):
        main([str(root), "--learning-curves", "--out", str(tmp_path / "o")])

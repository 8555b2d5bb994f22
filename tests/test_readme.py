"""The Python of the README and of docs/python.md runs: the README's tour on a saved run, the plain-Python
example shortened to a few steps, on the shared E2E data."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(encoding="utf-8"), flags=re.S)
    assert blocks, f"{path} has no python example"
    return blocks


def test_readme_tour_loads_a_run_and_samples(tmp_path):
    from tests.cli.test_runs import _saved_run

    run_dir, _ = _saved_run(tmp_path)  # what textdiff-train leaves (an untrained model)
    code = _python_blocks("README.md")[0]
    assert "<run dir>" in code
    scope = {}
    exec(compile(code.replace("<run dir>", str(run_dir)), "README.md", "exec"), scope)
    run = scope["run"]
    assert run.ids.shape[0] == 8 and run.sampler.num_steps == 50 and run.nfe == 50


def test_python_example_runs(shared_data, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Lightning writes ./checkpoints by default
    code = _python_blocks("docs/python.md")[0]
    code = code.replace("../shared/data", str(shared_data)).replace("max_steps=2000", "max_steps=3")
    code = code.replace('pl.Trainer(accelerator="cpu"', 'pl.Trainer(enable_progress_bar=False, accelerator="cpu"')
    assert "max_steps=3" in code
    exec(compile(code, "docs/python.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.count("'") >= 2  # a printed list of 8 decoded strings

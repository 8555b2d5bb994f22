"""Infilling through ``textdiff-sample infill=<templates>`` on a Diffusion-LM run."""
import json

from textdiff.data import load_tokenizer
from tests.cli.test_train_cli import TINY, _run


def test_sample_infill_fills_blanks_around_the_fixed_words(shared_data, tmp_path):
    run_dir = tmp_path / "run"
    out = _run("train", [*TINY, "trainer.max_steps=6", "evaluate=false", f"hydra.run.dir={run_dir}"])
    assert out.returncode == 0, out.stderr[-3000:]
    templates = tmp_path / "templates.txt"
    templates.write_text("The _ _ is a restaurant near the _\n_ is a coffee shop in the city centre\n")
    out = _run("sample", [f"run_dir={run_dir}", f"infill={templates}", "ckpt=last", "sampler.num_steps=5",
                          "suffix=_t"])
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "infill_t.jsonl").read_text().splitlines()]
    assert [r["template"] for r in rows] == templates.read_text().splitlines()
    tok = load_tokenizer(run_dir / "tokenizer")
    for row in rows:  # every fixed word is kept (as the vocabulary has it), in order; the tiny model's words are not judged
        words = row["text"].split()
        fixed = [tok.decode(tok.encode(w)) for w in row["template"].split() if w != "_"]
        it = iter(words)
        assert all(w in it for w in fixed), (row, words)
    bad = tmp_path / "bad.txt"
    bad.write_text("no blank here\n")
    out = _run("sample", [f"run_dir={run_dir}", f"infill={bad}", "ckpt=last"])
    assert out.returncode != 0 and "no blank" in out.stderr + out.stdout

"""textdiff's metrics as Hugging Face ``evaluate`` modules: each loads offline from its path inside the package
(``evaluate.load(evaluate_module_path(name))``) into a temporary HF cache, and gives exactly the number of
textdiff's own function on the same inputs."""
from __future__ import annotations

import inspect
import math
import random
import sys
from pathlib import Path

import pytest

from textdiff.metrics import (
    EVALUATE_MODULES, bleu_against_set, corpus_entropy, dist_n, evaluate_module_path, memorization, self_bleu,
    unigram_entropy,
)

SUBJECTS = ["The Eagle", "Green Man", "The Golden Palace", "A cheap pub near the river", "Alimentum",
            "The Wrestlers", "This family friendly coffee shop"]
VERBS = ["serves", "offers", "is known for", "has"]
OBJECTS = ["Italian food", "cheap English food", "a view of the river", "low prices and fast food",
           "a customer rating of 5 out of 5", "Japanese food in the city centre"]


def _sentences(rng: random.Random, n: int) -> list[str]:
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(n)]


@pytest.fixture(scope="module")
def hf_evaluate(tmp_path_factory):
    """``evaluate`` with its caches in a temporary HF_HOME and offline; the dynamic modules it imports and
    the ``sys.path`` entry it adds are removed afterwards. ``evaluate`` reads the environment when first
    imported: if another test imported it before, its ``config`` is patched to the same paths."""
    home = tmp_path_factory.mktemp("hf_evaluate")
    # evaluate.config's names for what HF_HOME (and HF_MODULES_CACHE) set, as evaluate derives them
    derived = {"HF_CACHE_HOME": str(home), "HF_EVALUATE_CACHE": home / "evaluate",
               "HF_METRICS_CACHE": home / "metrics", "HF_MODULES_CACHE": home / "modules",
               "DOWNLOADED_EVALUATE_PATH": home / "evaluate" / "downloads"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(home))
        mp.setenv("HF_MODULES_CACHE", str(home / "modules"))
        for key in ("HF_EVALUATE_CACHE", "HF_METRICS_CACHE", "HF_DATASETS_DOWNLOADED_EVALUATE_PATH"):
            mp.delenv(key, raising=False)  # derived from HF_HOME
        mp.setenv("HF_EVALUATE_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        for name in [m for m in sys.modules if m.split(".")[0] == "evaluate_modules"]:  # from another cache
            mp.delitem(sys.modules, name)
        fresh = "evaluate" not in sys.modules
        import evaluate
        from evaluate import config

        if fresh:  # evaluate read the environment just now
            assert {k: getattr(config, k) for k in derived} == derived and config.HF_EVALUATE_OFFLINE
        for key, value in derived.items():
            if getattr(config, key) != value:
                mp.setattr(config, key, value)
        mp.setattr(config, "HF_EVALUATE_OFFLINE", True)
        yield evaluate, home
        for name in [m for m in sys.modules if m.split(".")[0] == "evaluate_modules"]:
            sys.modules.pop(name)
        if str(home / "modules") in sys.path:
            sys.path.remove(str(home / "modules"))


def _load(hf_evaluate, name):
    """``evaluate.load`` of textdiff's module ``name`` by its path; checks where it was imported from and its info."""
    import datasets

    evaluate, home = hf_evaluate
    module = evaluate.load(evaluate_module_path(name))
    assert Path(inspect.getfile(type(module))).is_relative_to(home / "modules")  # the copy evaluate imported
    assert module.description and module.citation and module.inputs_description
    assert dict(module.features) == {"predictions": datasets.Value("string")}
    return module


def test_every_module_is_a_folder_with_its_script():
    for name in EVALUATE_MODULES:
        folder = Path(evaluate_module_path(name))
        assert (folder / f"{name}.py").is_file()
    judge = Path(evaluate_module_path("judge_perplexity"))  # it loads runs (Hydra): the cli layer holds it
    assert judge.parent.parent.name == "cli" and judge.parent.name == "evaluate_modules"
    with pytest.raises(ValueError, match="no textdiff evaluate module 'sacrebleu'"):
        evaluate_module_path("sacrebleu")


def test_text_metrics_equal_textdiffs_functions(hf_evaluate):
    evaluate, home = hf_evaluate
    rng = random.Random(0)
    samples, refs, train = _sentences(rng, 20), _sentences(rng, 30), _sentences(rng, 50)
    samples.append("")  # an empty sample is a real output
    bleu = _load(hf_evaluate, "bleu_against_set")
    assert bleu.compute(predictions=samples, reference_set=refs) == bleu_against_set(samples, refs)
    assert bleu.compute(predictions=samples, reference_set=refs, tokenize="none", max_order=2) == \
        bleu_against_set(samples, refs, tokenize="none", max_order=2)
    assert _load(hf_evaluate, "self_bleu").compute(predictions=samples) == {"self_bleu": self_bleu(samples)}
    dist = _load(hf_evaluate, "dist_n")
    assert dist.compute(predictions=samples) == dist_n(samples)
    assert list(dist.compute(predictions=samples)) == ["dist-1", "dist-2", "dist-3", "dist-4"]
    entropy = _load(hf_evaluate, "unigram_entropy")
    assert entropy.compute(predictions=samples) == {"entropy": unigram_entropy(samples)}
    assert entropy.compute(predictions=["a a b b", "a a a"])["entropy"] == pytest.approx(math.log(2) / 2)
    pooled = _load(hf_evaluate, "corpus_entropy")
    assert pooled.compute(predictions=samples) == {"corpus_entropy": corpus_entropy(samples)}
    assert pooled.compute(predictions=["a b", "a c"])["corpus_entropy"] == pytest.approx(1.5 * math.log(2))
    mem = _load(hf_evaluate, "memorization")
    got = mem.compute(predictions=samples, train_texts=train)
    assert got == {"memorization": memorization(samples, train)} and 0 < got["memorization"] < 1
    with pytest.raises(ValueError, match="reference_set"):
        bleu.compute(predictions=samples)
    with pytest.raises(ValueError, match="train_texts"):
        mem.compute(predictions=samples)
    assert config_paths_used(evaluate, home)


def config_paths_used(evaluate, home) -> bool:
    """The temporary HF_HOME is where evaluate put the copied scripts and the metrics' cache files."""
    return (Path(evaluate.config.HF_MODULES_CACHE) == home / "modules"
            and any((home / "modules" / "evaluate_modules" / "metrics").iterdir())
            and any((home / "metrics").iterdir()))


def test_judge_perplexity_equals_textdiffs_lm_ppl(hf_evaluate, tmp_path, monkeypatch):
    """A tiny decoder-only LM run directory (seeded, untrained) as textdiff-train leaves it; the module's
    numbers are those textdiff's evaluation writes (``score_with_judges`` with ``load_judges``)."""
    from tests.cli.test_runs import _saved_run
    from textdiff.cli.runs import load_judges
    from textdiff.run.evaluation import score_with_judges

    monkeypatch.setenv("TEXTDIFF_CACHE", str(tmp_path / "cache"))  # the toy corpus, out of the home directory
    tiny = ["model=autoregressive", "model.network.enc_depth=0", "model.network.dec_depth=1",
            "model.network.dim=32", "model.network.heads=2", "model.network.ffn_dim=64"]
    run_dir, _ = _saved_run(tmp_path, tiny)
    texts = _sentences(random.Random(1), 12) + ["", "the food is cheap ."]
    judge = _load(hf_evaluate, "judge_perplexity")
    got = judge.compute(predictions=texts, run_dir=str(run_dir))
    want = score_with_judges([{"text": t} for t in texts], load_judges(str(run_dir), None))
    assert got == want and math.isfinite(got["lm_ppl"]) and got["lm_num_texts"] == len(texts)
    assert judge.compute(predictions=texts, run_dir=str(run_dir), max_len=6)["lm_truncated"] > 0
    with pytest.raises(ValueError, match="run_dir"):
        judge.compute(predictions=texts)

"""The declared capabilities (``textdiff.families.interface``) match what each family offers, so the run
layer's ``isinstance`` checks route every family as its ``hasattr`` probes did."""
import pytest
import torch

from textdiff.families.interface import (
    BuildsSampler, ClassifiesTexts, EvaluatesItself, Generates, GuidesLatents, HasBound, Infills, Reranks,
    SamplingRun, SavesArtifacts,
)
from textdiff.nn import LatentClassifier, TransformerClassifier
from tests.families import test_autoregressive, test_difformer, test_diffusion_bert, test_diffusion_lm

ALL = [BuildsSampler, ClassifiesTexts, EvaluatesItself, Generates, GuidesLatents, HasBound, Infills, Reranks,
       SavesArtifacts]


def _offers(model):
    return {p.__name__ for p in ALL if isinstance(model, p)}


def test_each_family_declares_what_it_offers():
    from textdiff.families import DegenerateReference, NoisyClassifier, TextClassifier

    torch.manual_seed(0)
    dlm = test_diffusion_lm.tiny()
    assert _offers(dlm) == {"Generates", "BuildsSampler", "HasBound", "Infills"}
    assert _offers(test_diffusion_bert._model()) == {"Generates", "BuildsSampler", "HasBound"}
    assert _offers(test_difformer._model()) == {"Generates", "BuildsSampler", "Reranks"}
    assert _offers(test_autoregressive.tiny()) == {"Generates", "HasBound"}
    assert _offers(DegenerateReference(vocab_size=20, max_len=8, pad_id=0, bos_id=2, eos_id=3)) == {"Generates"}
    clf = TextClassifier(TransformerClassifier(vocab_size=40, num_classes=2, dim=16, depth=1, heads=2, max_len=12))
    assert _offers(clf) == {"ClassifiesTexts", "EvaluatesItself"}
    noisy = NoisyClassifier(LatentClassifier(in_dim=8, num_classes=2, vocab_size=40, dim=16, depth=1, heads=2,
                                             max_len=12), dlm)
    assert {"GuidesLatents", "EvaluatesItself"} <= _offers(noisy)


def test_a_sampling_run_says_what_ran():
    """One typed result per generate call: the sampler that ran, network evaluations per sequence, the family's
    settings; a built sampler and the same overrides give the same samples; both at once is an error."""
    torch.manual_seed(0)
    dlm = test_diffusion_lm.tiny()
    run = dlm.generate_run(3, seq_len=6, seed=0, num_steps=7)
    assert isinstance(run, SamplingRun) and run.ids.shape == (3, 6) and run.sampler.num_steps == 7
    assert run.nfe == 7 and run.seconds > 0 and run.output.nfe == 7
    assert run.report() == {"num_steps": 7, "eta": run.sampler.eta, "spacing": run.sampler.spacing,
                            "variance": run.sampler.variance, "early_stop": 0, "solver": "ddim",
                            "nfe_per_sequence": 7, "clamp": dlm.clamp}
    assert dlm.generate_run(3, seq_len=6, seed=0, num_steps=7, solver="dpmpp_2m", eta=0.0).report()["solver"] \
        == "dpmpp_2m"
    built = dlm.build_sampler(num_steps=7)
    assert torch.equal(dlm.generate_run(3, seq_len=6, seed=0, sampler=built).ids, run.ids)
    assert torch.equal(dlm.generate(3, seq_len=6, seed=0, num_steps=7), run.ids)
    with pytest.raises(ValueError, match="not both"):
        dlm.generate_run(3, seed=0, sampler=built, num_steps=8)
    dbert = test_diffusion_bert._model(spindle=False)
    run = dbert.generate_run(4, seed=0, num_steps=6, batch_size=3)
    assert run.report()["reuse_unchanged"] is dbert.build_sampler().reuse_unchanged is True
    assert 0 < run.nfe <= 6 and run.report()["filter_on"] == dbert.filter_on
    assert run.report()["unmask"] == "schedule" and "threshold" not in run.report()
    policy = dbert.generate_run(4, seed=0, num_steps=6, unmask="threshold", threshold=0.5).report()
    assert (policy["unmask"], policy["threshold"], policy["confidence"], policy["draw"]) == \
        ("threshold", 0.5, "prob", "argmax")

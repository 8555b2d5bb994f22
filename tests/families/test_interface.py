"""The declared capabilities (``textdiff.families.interface``) match what each family offers, so the run
layer's ``isinstance`` checks route every family as its ``hasattr`` probes did."""
import torch

from textdiff.families.interface import (
    BuildsSampler, ClassifiesTexts, EvaluatesItself, Generates, GuidesLatents, HasBound, Infills, LabelsSamples,
    Reranks, ReportsSampling, SavesArtifacts,
)
from textdiff.nn import LatentClassifier, TransformerClassifier
from tests.families import test_autoregressive, test_difformer, test_diffusion_bert, test_diffusion_lm

ALL = [BuildsSampler, ClassifiesTexts, EvaluatesItself, Generates, GuidesLatents, HasBound, Infills,
       LabelsSamples, Reranks, ReportsSampling, SavesArtifacts]


def _offers(model):
    return {p.__name__ for p in ALL if isinstance(model, p)}


def test_each_family_declares_what_it_offers():
    from textdiff.families import NoisyClassifier, TextClassifier

    torch.manual_seed(0)
    dlm = test_diffusion_lm.tiny()
    assert _offers(dlm) == {"Generates", "BuildsSampler", "HasBound", "Infills"}
    assert _offers(test_diffusion_bert._model()) == {"Generates", "BuildsSampler", "HasBound", "ReportsSampling"}
    assert _offers(test_difformer._model()) == {"Generates", "BuildsSampler", "Reranks", "ReportsSampling"}
    assert _offers(test_autoregressive.tiny()) == {"Generates", "HasBound"}
    clf = TextClassifier(TransformerClassifier(vocab_size=40, num_classes=2, dim=16, depth=1, heads=2, max_len=12))
    assert _offers(clf) == {"ClassifiesTexts", "EvaluatesItself"}
    noisy = NoisyClassifier(LatentClassifier(in_dim=8, num_classes=2, vocab_size=40, dim=16, depth=1, heads=2,
                                             max_len=12), dlm)
    assert {"GuidesLatents", "EvaluatesItself"} <= _offers(noisy)

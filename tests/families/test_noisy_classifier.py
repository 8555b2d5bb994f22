"""NoisyClassifier: learns p(c | x_t, t) on a frozen diffusion model's latents; its nll drives guidance."""
import pytest
import torch

from textdiff.families.control import NoisyClassifier
from textdiff.nn import LatentClassifier
from tests.families.test_diffusion_lm import tiny


def _clf(diffusion, **kw):
    net = LatentClassifier(in_dim=8, num_classes=2, vocab_size=40, dim=16, depth=1, heads=2, max_len=12, dropout=0.0)
    return NoisyClassifier(net, diffusion, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), **kw)


def test_learns_a_token_attribute_and_leaves_the_diffusion_model_alone():
    torch.manual_seed(0)
    dlm = tiny()
    before = {k: v.clone() for k, v in dlm.state_dict().items()}
    clf = _clf(dlm)
    assert all(not p.requires_grad for p in clf.diffusion.parameters())
    opt = clf.configure_optimizers()
    labels = torch.arange(64) % 2
    ids = torch.randint(4, 22, (64, 12)) + 18 * labels[:, None]  # class 0 uses tokens 4-21, class 1 22-39
    batch = {"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool), "labels": labels}
    clf.train()
    emb, t = dlm.embedding(ids).detach(), torch.full((64,), 0.05)  # nearly clean latents
    first = clf.nll(labels)(emb, t).mean().item()
    for _ in range(150):
        loss = clf.compute_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    assert clf.nll(labels)(emb, t).mean().item() < 0.5 * first  # trained on random t, right at low noise
    assert not clf.diffusion.training
    assert all(torch.equal(v, dlm.state_dict()[k]) for k, v in before.items())
    # the guidance objective: lower for the class the clean latents hold, per sequence
    right, wrong = clf.nll(labels)(emb, t), clf.nll(1 - labels)(emb, t)
    assert right.shape == (64,) and float((right < wrong).float().mean()) > 0.8
    assert clf.nll(1)(emb, t).shape == (64,)


def test_refuses_a_mismatched_diffusion_model():
    with pytest.raises(ValueError, match="d=8"):
        _clf(tiny(d=4))
    with pytest.raises(TypeError, match="model.diffusion.checkpoint"):
        NoisyClassifier(LatentClassifier(8, 2, 40), "runs/dlm/checkpoints/last.ckpt")


def test_length_attribute_reads_lengths_from_the_mask_and_needs_no_labels():
    torch.manual_seed(0)
    net = LatentClassifier(in_dim=8, num_classes=6, vocab_size=40, dim=16, depth=1, heads=2, max_len=12, dropout=0.0)
    clf = NoisyClassifier(net, tiny(), attribute="length")
    assert clf.classes == ["0", "1", "2", "3", "4", "5"]
    mask = torch.zeros(3, 12, dtype=torch.bool)
    for row, n in enumerate((4, 7, 12)):  # BOS + n - 2 tokens + EOS
        mask[row, :n] = True
    batch = {"ids": torch.randint(4, 40, (3, 12)), "mask": mask}
    assert clf.targets(batch).tolist() == [2, 5, 5]  # 10 tokens are capped at the last class
    assert clf.compute_loss(batch)["loss"].isfinite()
    with pytest.raises(ValueError, match="attribute"):
        NoisyClassifier(net, tiny(), attribute="tone")

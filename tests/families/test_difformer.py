"""Difformer: the length head, the network's masking and embedding options, each loss term, learning
a tiny copy task, and 2D parallel decoding with its three selection rules."""
from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from textdiff.core import DiscreteSchedule, GaussianProcess, Sampler, SqrtSchedule
from textdiff.core.types import pad_sequences
from textdiff.families import Difformer
from textdiff.metrics.selection import mbr_select
from textdiff.nn import DifformerNet, LengthPredictor

V, PAD, BOS, EOS = 24, 0, 1, 2


def _net(**kw):
    args = dict(latent_dim=16, dim=32, enc_depth=1, dec_depth=1, heads=2, ffn_dim=64, max_len=12,
                max_src_len=12, dropout=0.0)
    return DifformerNet(V, **{**args, **kw})


def _model(net=None, steps=10, **kw):
    torch.manual_seed(0)
    proc = GaussianProcess(DiscreteSchedule(SqrtSchedule(), 100), noise_factor=4.0, sample_noise_factor=1.0)
    return Difformer(net or _net(), proc, PAD, BOS, EOS, sampler=partial(Sampler, num_steps=steps, eta=1.0), **kw)


def _batch():
    src, src_mask = pad_sequences([[BOS, 5, 6, 7, EOS], [BOS, 8, 9, EOS]], PAD, 6)
    tgt, tgt_mask = pad_sequences([[BOS, 10, 11, 12, 13, EOS], [BOS, 14, 15, EOS]], PAD, 7)
    return {"ids": tgt, "mask": tgt_mask, "src_ids": src, "src_mask": src_mask}


def _fit(model, batch, steps=200, lr=4e-3):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    first = None
    for _ in range(steps):
        loss = model.compute_loss(batch)["loss"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, float(loss.detach())


@pytest.fixture(scope="module")
def trained():
    model = _model()
    model.train()
    first, last = _fit(model, _batch())
    return model, first, last


def test_length_classes_round_trip_and_beams():
    head = LengthPredictor(8, num_classes=16, offset=True)
    tgt, src = torch.tensor([5, 9, 3]), torch.tensor([6, 4, 3])
    cls = head.target(tgt, src)
    assert cls.tolist() == [7, 13, 8]  # len - src + 8
    assert torch.equal(head.to_length(cls, src), tgt)
    assert head.target(torch.tensor([40]), torch.tensor([1])).item() == 15  # clamped to the last class
    logits = torch.full((1, 16), -10.0)
    logits[0, 9] = 10.0  # length = src + 1
    assert head.predict(logits, torch.tensor([5]), beam=3).tolist() == [[5, 6, 7]]
    assert head.predict(logits, torch.tensor([2]), beam=5, min_len=2).tolist() == [[2, 2, 3, 4, 5]]
    assert head.predict(logits, torch.tensor([5]), beam=3, max_len=6).tolist() == [[5, 6, 6]]


def test_decoder_ignores_padded_positions_and_zero_self_condition():
    net = _net().eval()
    batch = _batch()
    memory = net.encode(batch["src_ids"], batch["src_mask"])
    z = torch.randn(2, 7, 16)
    t = torch.tensor([500.0, 20.0])
    out = net(z, t, memory, mask=batch["mask"], src_mask=batch["src_mask"])
    z2 = z.clone()
    z2[1, 4:] = 100.0  # row 1 has 4 real positions
    out2 = net(z2, t, memory, mask=batch["mask"], src_mask=batch["src_mask"])
    assert torch.allclose(out[1, :4], out2[1, :4], atol=1e-5)
    zeros = net(z, t, memory, mask=batch["mask"], src_mask=batch["src_mask"], self_cond=torch.zeros_like(z))
    assert torch.allclose(out, zeros)
    src2 = batch["src_ids"].clone()
    src2[1, 4:] = 9  # changing source padding leaves the encoding of real positions alone
    m2 = net.encode(src2, batch["src_mask"])
    assert torch.allclose(memory[1, :4], m2[1, :4], atol=1e-5)


@pytest.mark.parametrize("placement", ["after_proj", "before_proj", "none"])
def test_embedding_norm_placements(placement):
    net = _net(embed_norm=placement)
    z0 = net.embed(torch.tensor([[3, 4, 5]]))
    assert z0.shape == (1, 3, 16)
    if placement == "before_proj":  # z0 itself is layer-normalised (unit variance per token at init)
        assert torch.allclose(z0.mean(-1), torch.zeros(1, 3), atol=1e-5)
        assert torch.allclose(z0.var(-1, unbiased=False), torch.ones(1, 3), atol=1e-2)
    else:  # sqrt(d) E[w]
        assert torch.allclose(z0, 4.0 * net.embedding.weight[[3, 4, 5]].unsqueeze(0))
    assert (net.embed_norm is None) == (placement == "none")


def test_loss_terms_and_their_switches():
    batch = _batch()
    terms = _model().compute_loss(batch)
    assert {"loss", "diffusion", "token", "length", "length_acc"} <= set(terms)
    expected = terms["diffusion"] + terms["token"] + 0.1 * terms["length"]
    assert torch.allclose(terms["loss"], expected)
    assert "token" not in _model(token_loss="none").compute_loss(batch)
    # the rounding variant scores z0 = sqrt(d) E[y]: its gradient never reaches the decoder
    model = _model(token_loss="rounding")
    model.compute_loss(batch)["token"].backward()
    assert all(p.grad is None or not p.grad.any() for p in model.network.decoder.parameters())
    assert model.network.embedding.weight.grad.abs().sum() > 0
    frozen = _model(fixed_embeddings=True)
    frozen.compute_loss(batch)["loss"].backward()
    assert frozen.network.embedding.weight.grad is None
    with pytest.raises(ValueError, match="token_loss"):
        _model(token_loss="anchors")


def test_tiny_model_learns_the_pairs_and_decodes_them(trained):
    model, first, last = trained
    assert last < 0.35 * first
    batch = _batch()
    out = model.generate(batch["src_ids"], batch["src_mask"], seed=0)
    assert out[0, :6].tolist() == [BOS, 10, 11, 12, 13, EOS]
    assert out[1, :4].tolist() == [BOS, 14, 15, EOS] and (out[1, 4:] == PAD).all()
    assert model.training  # generate restores the mode


def test_decoding_is_seeded_and_counts_steps(trained):
    model, _, _ = trained
    batch = _batch()
    a = model.generate(batch["src_ids"], seed=3, length_beam=3, noise_beam=2)
    b = model.generate(batch["src_ids"], seed=3, length_beam=3, noise_beam=2)
    assert torch.equal(a, b)
    run = model.generate_run(batch["src_ids"], seed=3, num_steps=10, early_stop=4)
    assert run.output.nfe == 6 and run.details["candidates"] == 1 and run.nfe == 6  # one candidate per source
    run = model.generate_run(batch["src_ids"], seed=3, num_steps=10, length_beam=3, noise_beam=2)
    assert run.nfe == 10 * 6 and run.report()["candidates"] == 6  # every candidate runs every step


def test_candidates_and_the_three_selection_rules(trained):
    model, _, _ = trained
    batch = _batch()
    run = model.generate_run(batch["src_ids"], batch["src_mask"], seed=0, length_beam=3, noise_beam=2)
    ids, cand = run.ids, run.extras["candidates"]
    assert cand["ids"].shape[:2] == (2, 6) and cand["logprob"].shape == (2, 6)
    assert torch.equal(cand["chosen"], cand["logprob"].argmax(-1))
    lengths = cand["mask"].sum(-1)  # framed lengths: predicted - 1, predicted, predicted + 1 (x 2 noises)
    assert (lengths[:, 0::2] == lengths[:, 1::2]).all()
    for b in range(2):
        chosen = cand["ids"][b, cand["chosen"][b]][cand["mask"][b, cand["chosen"][b]]]
        assert ids[b, : len(chosen)].tolist() == chosen.tolist()

    mbr = model.generate_run(batch["src_ids"], seed=0, length_beam=3, noise_beam=2, select="mbr").extras["candidates"]
    rows = [[[w for w in r[m].tolist()[1:-1]] for r, m in zip(mbr["ids"][b], mbr["mask"][b])] for b in range(2)]
    assert mbr["chosen"].tolist() == mbr_select(rows)

    class Prefers:  # a reranker that likes candidate 5 of every source
        def score(self, ids, mask, src_ids, src_mask):
            n = ids.shape[0]
            return {"logprob": (torch.arange(n) % 6 == 5).float() * 10 - 20, "tokens": torch.full((n,), 2)}

    with pytest.raises(ValueError, match="set_reranker"):
        model.generate(batch["src_ids"], select="rerank")
    model.set_reranker(Prefers())
    try:
        rr = model.generate_run(batch["src_ids"], seed=0, length_beam=3, noise_beam=2,
                                select="rerank").extras["candidates"]
    finally:
        model.reranker = None
    assert rr["chosen"].tolist() == [5, 5]


def test_clamping_keeps_outputs_on_embeddings(trained):
    model, _, _ = trained
    seen = []
    orig = model._clamp_hook

    def spy():
        hook = orig()

        def wrapped(z0, t):
            out = hook(z0, t)
            seen.append(out)
            return out
        return wrapped

    model._clamp_hook = spy
    try:
        model.generate(_batch()["src_ids"], seed=0, clamp=True)
    finally:
        del model._clamp_hook
    assert seen
    rows = model.network.embed(torch.arange(V)).reshape(V, -1)
    for z in seen:  # every snapped vector is a row of sqrt(d) E
        d = torch.cdist(z.reshape(-1, z.shape[-1]), rows)
        assert torch.allclose(d.min(-1).values, torch.zeros(d.shape[0]), atol=1e-4)


def test_checkpoint_round_trip_decodes_the_same(trained, tmp_path):
    model, _, _ = trained
    trainer = pl.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(model)
    path = tmp_path / "df.ckpt"
    trainer.save_checkpoint(path)
    other = _model()
    other.load_weights(str(path))
    batch = _batch()
    assert torch.equal(model.generate(batch["src_ids"], seed=1, length_beam=2),
                       other.generate(batch["src_ids"], seed=1, length_beam=2))

"""LD4LG's three stages on tiny models: text infilling, the frozen BART, the self-contained autoencoder
checkpoint, latent normalisation, v-prediction training, classifier-free guidance and seeded sampling."""
from functools import partial

import pytest
import torch

from tests.helpers import TINY_AE, TINY_BART
from textdiff.core import CosineSquaredSchedule, GaussianProcess, Sampler
from textdiff.data.tokenizers import load_tokenizer
from textdiff.families.ld4lg import BartDenoiser, LatentAutoencoder, LD4LG
from textdiff.nn.bart import build_bart, text_infilling
from textdiff.nn.ld4lg import LatentDenoiser

V, PAD, BOS, EOS, MASK = 40, 0, 2, 3, 4


def _batch(n=8, length=12, seed=0, labels=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (n, length), generator=g)
    ids[:, 0] = BOS
    mask = torch.ones(n, length, dtype=torch.bool)
    for i in range(n):  # varied lengths: row i ends at length - i % 4
        end = length - i % 4
        ids[i, end - 1], ids[i, end:], mask[i, end:] = EOS, PAD, False
    batch = {"ids": ids, "mask": mask, "index": torch.arange(n)}
    if labels:
        batch["labels"] = torch.arange(n) % 3
    return batch


def _stage0():
    return BartDenoiser(dict(TINY_BART), V, PAD, BOS, EOS, MASK)


def _ae(bart=None, **kw):
    return LatentAutoencoder(bart=bart if bart is not None else _stage0().bart, **{**TINY_AE, **kw})


def _normalising_ld4lg():
    """The official no-L2 configuration in which mean/std latent normalisation is allowed."""
    return _ld4lg(ae=_ae(l2_normalize=False), normalize_latents=True)


def _ld4lg(ae=None, num_classes=0, **kw):
    den = LatentDenoiser(latent_dim=TINY_AE["latent_dim"], dim=32, depth=2, heads=2, max_len=TINY_AE["num_latents"],
                         num_classes=num_classes, num_skips=1)
    proc = GaussianProcess(CosineSquaredSchedule(), prediction="v")
    sampler = partial(Sampler, num_steps=6, eta=1.0, variance="large")
    return LD4LG(den, proc, autoencoder=ae if ae is not None else _ae(), sampler=sampler, **kw)


# ----- stage 0 -----
def test_text_infilling_keeps_the_frame_and_masks_about_the_ratio():
    g = torch.Generator().manual_seed(0)
    batch = _batch(n=64, length=30)
    ids, mask = batch["ids"], batch["mask"]
    out, out_mask = text_infilling(ids, mask, MASK, PAD, ratio=0.3, poisson_lambda=3.0, generator=g)
    removed = masked = 0
    for r in range(ids.shape[0]):
        src, dst = ids[r][mask[r]].tolist(), out[r][out_mask[r]].tolist()
        assert dst[0] == BOS and dst[-1] == EOS and MASK not in src
        kept = [t for t in dst if t != MASK]
        removed += len(src) - len(kept)
        masked += dst.count(MASK)
        assert not (out[r][~out_mask[r]] != PAD).any()
    inner = int(mask.sum()) - 2 * ids.shape[0]
    assert 0.2 < removed / inner < 0.4  # about 30 % of the tokens are removed into spans
    assert 0 < masked < removed  # spans shrink to one mask token each
    again, _ = text_infilling(ids, mask, MASK, PAD, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, out)  # seeded


def test_stage0_learns_and_exports_a_loadable_bart(tmp_path):
    torch.manual_seed(0)
    model = _stage0()
    batch = _batch(n=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model.compute_loss(batch)["loss"].item()
    for _ in range(40):
        loss = model.compute_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first

    from textdiff.data.tokenizers import build_word_tokenizer

    tok = build_word_tokenizer(["a b c", "b c d"], add_mask_token=True)
    out = model.save_artifacts(tmp_path, tok)
    assert out == tmp_path / "bart" and not list(tmp_path.glob(".bart.*"))
    again = build_bart(str(out), vocab_size=V)
    assert torch.equal(again.model.shared.weight, model.bart.model.shared.weight)
    assert load_tokenizer(out).convert_ids_to_tokens(range(tok.vocab_size)) == tok.convert_ids_to_tokens(
        range(tok.vocab_size))


def test_stage0_needs_a_mask_token():
    with pytest.raises(ValueError, match="mask token"):
        BartDenoiser(dict(TINY_BART), V, PAD, BOS, EOS, None)


# ----- stage 1 -----
def test_autoencoder_trains_only_its_networks_and_bart_stays_frozen():
    torch.manual_seed(0)
    ae = _ae()
    before = {k: v.clone() for k, v in ae.bart.state_dict().items()}
    trainable = {n.split(".")[0] for n, p in ae.named_parameters() if p.requires_grad}
    assert trainable == {"compressor", "reconstructor"}
    ae.train()
    assert not ae.bart.training and ae.compressor.training  # frozen BART: no dropout either
    opt = torch.optim.AdamW([p for p in ae.parameters() if p.requires_grad], lr=1e-2)
    batch = _batch()
    first = ae.compute_loss(batch)["loss"].item()
    for _ in range(30):
        loss = ae.compute_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first
    after = ae.bart.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # not one BART weight moved


def test_latents_have_the_configured_shape_and_norm():
    ae = _ae()
    b = _batch()
    z = ae.encode(b["ids"], b["mask"])
    assert z.shape == (8, TINY_AE["num_latents"], TINY_AE["latent_dim"])
    assert torch.allclose(z.norm(dim=-1), torch.full(z.shape[:2], TINY_AE["latent_dim"] ** 0.5), atol=1e-4)
    assert ae.memory(z).shape == (8, TINY_AE["num_latents"], TINY_BART["d_model"])
    out = ae.reconstruct(b["ids"], b["mask"], max_length=10, min_length=1)
    assert out.shape[0] == 8 and out.shape[1] <= 10


def test_autoencoder_checkpoint_is_self_contained(tmp_path):
    ae = _ae()
    ckpt = {"state_dict": ae.state_dict()}
    ae.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "ae.ckpt")
    again = LatentAutoencoder.from_checkpoint(tmp_path / "ae.ckpt")
    b = _batch()
    assert torch.equal(ae.eval().encode(b["ids"], b["mask"]), again.eval().encode(b["ids"], b["mask"]))
    torch.save({"state_dict": {}, "textdiff": {"family": "Difformer"}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a LatentAutoencoder checkpoint.*Difformer"):
        LatentAutoencoder.from_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="directory"):
        LatentAutoencoder.from_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        LatentAutoencoder(bart=dict(TINY_BART), bart_path="x")


# ----- stage 2 -----
def test_ld4lg_trains_the_denoiser_only_and_normalises_from_the_first_batch():
    torch.manual_seed(0)
    model = _normalising_ld4lg()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"network"}
    model.train()
    assert not model.autoencoder.training
    b = _batch()
    z = model.autoencoder.encode(b["ids"], b["mask"]).reshape(-1, TINY_AE["latent_dim"])
    model.compute_loss(b)
    assert bool(model.latent_stats_set)
    assert torch.allclose(model.latent_mean, z.mean(0), atol=1e-5)
    assert torch.allclose(model.latent_scale, (z - z.mean(0)).std(unbiased=False), atol=1e-5)
    x0 = model.latents(b["ids"], b["mask"])
    assert abs(float(x0.mean())) < 1e-4 and abs(float(x0.std(unbiased=False)) - 1) < 1e-3
    frozen = model.latent_mean.clone()
    model.compute_loss(_batch(seed=1))
    assert torch.equal(model.latent_mean, frozen)  # set once, then kept (and saved in the state dict)
    assert "latent_mean" in model.state_dict() and "latent_scale" in model.state_dict()


def test_ld4lg_loss_is_the_v_target_and_falls():
    torch.manual_seed(0)
    model = _ld4lg(self_condition_prob=0.0)
    b = _batch()
    model.train()
    torch.manual_seed(1)
    terms = model.compute_loss(b)
    # a fresh denoiser outputs 0, so the loss is E|v|^2 = E[a^2 eps^2 + sigma^2 x0^2] ~ 1 for unit-variance x0
    assert 0.7 < float(terms["loss"]) < 1.3
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(60):
        torch.manual_seed(100 + step % 4)
        loss = model.compute_loss(b)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10


def test_sampling_is_seeded_and_class_labels_are_balanced():
    torch.manual_seed(0)
    model = _ld4lg(num_classes=3, guidance_weight=2.0)
    model.compute_loss(_batch(labels=True))  # sets the latent statistics
    dec = {"max_length": 8, "min_length": 1}
    run = model.generate_run(5, seed=3, batch_size=2, decode=dec)
    assert run.labels == [0, 1, 2, 0, 1]
    assert run.nfe == 12 and run.report()["guidance_weight"] == 2.0  # 6 steps x (conditional + unconditional)
    b = model.generate(5, seed=3, batch_size=2, decode=dec)
    assert torch.equal(run.ids, b)
    run = model.generate_run(2, seed=3, guidance_weight=1.0, labels=[2, 2], decode=dec)
    assert run.nfe == 6 and run.labels == [2, 2]
    with pytest.raises(ValueError, match="class ids"):
        model.generate(2, labels=[0, 3], decode=dec)
    with pytest.raises(ValueError, match="not class-conditional"):
        _ld4lg().generate(2, labels=[0, 1])


def test_class_conditional_training_needs_labels_and_drops_them():
    model = _ld4lg(num_classes=3, class_dropout=1.0)
    with pytest.raises(ValueError, match="label_field"):
        model.compute_loss(_batch())
    seen = []
    model.network.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["class_ids"]),
                                         with_kwargs=True)
    model.compute_loss(_batch(labels=True))
    assert all((c == 3).all() for c in seen)  # p = 1: every row gets the null class


def test_guidance_changes_samples_only_for_conditional_models():
    torch.manual_seed(0)
    model = _ld4lg(num_classes=3)
    for p in model.network.output_proj.parameters():  # a fresh denoiser outputs 0: make the class matter
        torch.nn.init.normal_(p, std=0.5)
    model.compute_loss(_batch(labels=True))
    z1 = model.generate_run(3, seed=0, guidance_weight=1.0, decode={"max_length": 6}).extras["latents"]
    z3 = model.generate_run(3, seed=0, guidance_weight=3.0, decode={"max_length": 6}).extras["latents"]
    assert not torch.allclose(z1, z3)


def test_seq2seq_variant_generates_one_output_per_source():
    torch.manual_seed(0)
    ae = _ae()
    den = LatentDenoiser(latent_dim=TINY_AE["latent_dim"], dim=32, depth=2, heads=2, max_len=TINY_AE["num_latents"],
                         context_dim=TINY_BART["d_model"], num_skips=1)
    model = LD4LG(den, GaussianProcess(CosineSquaredSchedule(), prediction="v"), autoencoder=ae,
                  sampler=partial(Sampler, num_steps=4), seq2seq=True, guidance_weight=2.0)
    assert model.conditional
    b = _batch()
    b["src_ids"], b["src_mask"] = _batch(seed=5)["ids"], _batch(seed=5)["mask"]
    assert torch.isfinite(model.compute_loss(b)["loss"])
    out = model.generate(b["src_ids"][:3], b["src_mask"][:3], seed=0, decode={"max_length": 6, "min_length": 1})
    assert out.shape[0] == 3
    with pytest.raises(ValueError, match="context_dim"):
        LD4LG(LatentDenoiser(latent_dim=8, dim=32, depth=2, heads=2, max_len=4, num_skips=1),
              GaussianProcess(CosineSquaredSchedule(), prediction="v"), autoencoder=ae, seq2seq=True)


def test_ld4lg_rejects_mismatched_pieces(tmp_path):
    ae = _ae()
    proc = GaussianProcess(CosineSquaredSchedule(), prediction="v")
    with pytest.raises(ValueError, match="does not fit"):
        LD4LG(LatentDenoiser(latent_dim=16, dim=32, depth=2, heads=2, max_len=4, num_skips=1), proc, autoencoder=ae)
    from textdiff.core import discretize

    with pytest.raises(ValueError, match="continuous"):
        LD4LG(LatentDenoiser(latent_dim=8, dim=32, depth=2, heads=2, max_len=4, num_skips=1),
              GaussianProcess(discretize(CosineSquaredSchedule(), 100), prediction="v"), autoencoder=ae)
    with pytest.raises(ValueError, match="stage-1 run's tokenizer"):
        LD4LG(LatentDenoiser(latent_dim=8, dim=32, depth=2, heads=2, max_len=4, num_skips=1), proc, autoencoder=ae,
              vocab_size=V + 1)
    with pytest.raises(FileNotFoundError):
        LD4LG(LatentDenoiser(latent_dim=8, dim=32, depth=2, heads=2, max_len=4, num_skips=1), proc,
              autoencoder_path=str(tmp_path / "missing.ckpt"))


# ----- optimizer groups -----
def test_weight_decay_only_on_weight_matrices_as_the_official_optimizer():
    model = _ld4lg(num_classes=3)
    groups = model.optimizer_params()
    assert [g["weight_decay"] for g in groups[1:]] == [0.0] and "weight_decay" not in groups[0]  # optimizer's wd
    decayed, plain = ({id(p) for p in g["params"]} for g in groups)
    assert len(decayed) == len(groups[0]["params"]) and len(plain) == len(groups[1]["params"])  # no repeats
    assert not decayed & plain
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert decayed | plain == trainable  # nothing missing
    assert not (decayed | plain) & {id(p) for p in model.autoencoder.parameters()}  # the frozen BART/AE left out
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 or n == "network.null_self_cond":  # official init_self_cond is (1, d): decayed there too
            assert id(p) in decayed, n
        else:
            assert id(p) in plain, n
    assert any(names[i].endswith("norm.weight") for i in plain) and any(names[i].endswith(".bias") for i in plain)
    assert {"network.class_emb.0.weight", "network.pos.weight"} <= {names[i] for i in decayed}
    opt = model.optimizer_factory(groups)  # the default factory: AdamW
    assert [g["weight_decay"] for g in opt.param_groups] == [opt.defaults["weight_decay"], 0.0]
    # None keeps the previous single group (other families' default)
    flat = _ld4lg(no_decay_below_ndim=None).optimizer_params()
    assert all(isinstance(p, torch.nn.Parameter) for p in flat)
    # FSDP (use_orig_params=True) shows configure_optimizers 1-D views of the shards: the ndims noted at
    # setup (before the strategy wraps the module) still decide
    model.setup("fit")
    for p in model.parameters():
        p.data = p.data.reshape(-1)
    again = model.optimizer_params()
    assert [{id(p) for p in g["params"]} for g in again] == [decayed, plain]


def test_param_groups_helper():
    from textdiff.families.optim import param_groups

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2, bias=False))
    net[0].bias.requires_grad_(False)
    groups = param_groups(net, weight_decay=0.1)
    assert groups[0]["weight_decay"] == 0.1 and [p.shape for p in groups[0]["params"]] == [(4, 3), (2, 4)]
    assert groups[1]["weight_decay"] == 0.0 and [p.shape for p in groups[1]["params"]] == [(4,), (4,)]
    assert len(param_groups(net, no_decay_below_ndim=3)) == 1  # every parameter is then undecayed
    assert param_groups(net, decay=["1.weight", "absent"])[0]["params"][1] is net[1].weight
    from textdiff.families.optim import clean_param_name

    assert clean_param_name("network.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.ff.proj_in.bias") == \
        "network.layers.0.ff.proj_in.bias"
    ndims = {"0.weight": 2, "1.weight": 1, "1.bias": 1, "2.weight": 2}
    for p in net.parameters():  # as FSDP's flattened views
        p.data = p.data.reshape(-1)
    blind = param_groups(net)
    assert len(blind) == 1 and blind[0]["weight_decay"] == 0.0  # by p.ndim alone nothing would be decayed
    seeing = param_groups(net, ndims=ndims)
    assert seeing[0]["params"] == [net[0].weight, net[2].weight] and seeing[1]["params"] == [net[1].weight, net[1].bias]
    tied = torch.nn.Linear(2, 2)
    shared = torch.nn.ModuleList([tied, tied])
    assert sum(len(g["params"]) for g in param_groups(shared)) == 2  # a shared parameter appears once


# ----- latent statistics under DDP -----
def _latent_stats_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same model on every rank, as DDP guarantees
        model = _normalising_ld4lg().train()
        b = _batch(n=8 - 3 * rank, seed=rank)  # ranks with different first batches (and sizes)
        model.latents(b["ids"], b["mask"])
        torch.save({k: getattr(model, k).clone() for k in ("latent_mean", "latent_scale", "latent_stats_set")},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_latent_statistics_are_the_same_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_latent_stats_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    torch.manual_seed(0)
    model = _normalising_ld4lg().train()
    z = torch.cat([model.autoencoder.encode(b["ids"], b["mask"]) for b in (_batch(n=8, seed=0), _batch(n=5, seed=1))])
    flat = z.reshape(-1, TINY_AE["latent_dim"])
    for r in (r0, r1):
        assert bool(r["latent_stats_set"])
        assert torch.allclose(r["latent_mean"], flat.mean(0), atol=1e-6)
        assert torch.allclose(r["latent_scale"], (flat - flat.mean(0)).std(unbiased=False), atol=1e-6)
    assert torch.equal(r0["latent_mean"], r1["latent_mean"]) and torch.equal(r0["latent_scale"], r1["latent_scale"])
    # one process: the plain computation, bit for bit
    b = _batch(n=8, seed=0)
    model.latents(b["ids"], b["mask"])
    one = model.autoencoder.encode(b["ids"], b["mask"]).reshape(-1, TINY_AE["latent_dim"])
    assert torch.equal(model.latent_mean, one.mean(0))
    assert torch.equal(model.latent_scale, (one - one.mean(0)).std(unbiased=False))


def test_stage1_autoencoder_decays_only_its_weight_matrices():
    """Stage 1 (official latent_finetuning.py) uses the same AdamW groups: the compression and reconstruction
    networks' matrices decayed, their biases and LayerNorm gains not, the frozen BART in neither."""
    ae = _ae()
    decayed, plain = ({id(p) for p in g["params"]} for g in ae.optimizer_params())
    trainable = {n: p for n, p in ae.named_parameters() if p.requires_grad}
    assert trainable and decayed | plain == {id(p) for p in trainable.values()} and not decayed & plain
    assert all((id(p) in decayed) == (p.ndim >= 2) for p in trainable.values())
    assert not (decayed | plain) & {id(p) for p in ae.bart.parameters()}

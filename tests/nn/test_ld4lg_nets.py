import pytest
import torch

from textdiff.nn import LatentDenoiser, LatentReconstructor, PerceiverCompressor


def _compressor(**kw):
    kw = dict(dim_in=24, num_latents=4, latent_dim=8, depth=2, dim_head=8, max_seq_len=12) | kw
    return PerceiverCompressor(**kw).eval()


def _denoiser(**kw):
    kw = dict(latent_dim=8, dim=32, depth=4, heads=4, max_len=6, dropout=0.0) | kw
    return LatentDenoiser(**kw).eval()


def _perturb_zero_inits(net):
    """Give the zero-initialised output and modulation layers random weights (a 'trained' net)."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith("output_proj") or ".scale_shift." in name:
                p.normal_(0, 0.1)
    return net


def test_compressor_shape_and_l2_norm():
    torch.manual_seed(0)
    feats, mask = torch.randn(3, 10, 24), torch.ones(3, 10, dtype=torch.bool)
    mask[1, 7:] = False
    out = _compressor()(feats, mask)
    assert out.shape == (3, 4, 8)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((3, 4), 8 ** 0.5), rtol=0, atol=1e-5)
    # a fresh final LayerNorm (gain 1, bias 0) already gives norm ~sqrt(d); a trained one does not
    for l2 in (True, False):
        net = _compressor(l2_normalize=l2)
        with torch.no_grad():
            net.final_norm.weight.uniform_(0.5, 1.5)
            net.final_norm.bias.normal_(0, 0.5)
        norms = net(feats, mask).norm(dim=-1)
        assert torch.allclose(norms, torch.full((3, 4), 8 ** 0.5), rtol=0, atol=1e-5) == l2


def test_compressor_ignores_padded_source_positions():
    torch.manual_seed(0)
    net = _compressor()
    feats, mask = torch.randn(2, 10, 24), torch.ones(2, 10, dtype=torch.bool)
    mask[:, 6:] = False
    other = feats.clone()
    other[:, 6:] = torch.randn(2, 4, 24) * 10
    torch.testing.assert_close(net(feats, mask), net(other, mask), rtol=0, atol=1e-6)
    assert not torch.allclose(net(feats), net(other), atol=1e-3)  # unmasked, they matter


def test_compressor_errors():
    with pytest.raises(ValueError, match="max_seq_len"):
        _compressor()(torch.randn(1, 13, 24))
    with pytest.raises(ValueError, match="divisible"):
        PerceiverCompressor(dim_in=24, latent_dim=8, dim_head=7)


def test_reconstructor_shape_and_length_error():
    torch.manual_seed(0)
    net = LatentReconstructor(latent_dim=8, dim_out=32, num_latents=4, depth=2, heads=4).eval()
    z = torch.randn(2, 4, 8, requires_grad=True)
    out = net(z)
    assert out.shape == (2, 4, 32)
    out.sum().backward()
    assert z.grad.abs().sum() > 0
    assert net(z[:, :3]).shape == (2, 3, 32)
    with pytest.raises(ValueError, match="num_latents"):
        net(torch.randn(2, 5, 8))


def test_denoiser_zero_at_init_then_learns():
    torch.manual_seed(0)
    net = _denoiser().train()
    x, t = torch.randn(3, 6, 8), torch.rand(3) * 1000
    assert torch.equal(net(x, t), torch.zeros(3, 6, 8))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(x, t).sub(torch.randn(3, 6, 8)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
    assert net(x, t).abs().max() > 0
    # the gradient reaches the input once the output layer is nonzero
    net(x, t).pow(2).mean().backward()
    assert net.input_proj.weight.grad.abs().sum() > 0


def test_denoiser_scale_shift_is_zero_at_init():
    torch.manual_seed(0)
    net = _denoiser()
    time_emb = torch.randn(2, 4 * 32)
    for layer in net.layers:
        assert torch.equal(layer.scale_shift(time_emb), torch.zeros(2, 2 * 32))
    assert all(layer.scale_shift is None for layer in _denoiser(scale_shift=False).layers)


def test_denoiser_self_condition_null_is_learned():
    torch.manual_seed(0)
    net = _perturb_zero_inits(_denoiser())
    with torch.no_grad():
        net.null_self_cond.normal_(0, 1.0)
    x, t = torch.randn(2, 6, 8), torch.rand(2) * 1000
    assert not torch.allclose(net(x, t), net(x, t, self_cond=torch.zeros_like(x)), atol=1e-4)
    with torch.no_grad():
        net.null_self_cond.zero_()
    torch.testing.assert_close(net(x, t), net(x, t, self_cond=torch.zeros_like(x)))


def test_denoiser_class_ids():
    torch.manual_seed(0)
    net = _perturb_zero_inits(_denoiser(num_classes=3))
    x, t = torch.randn(2, 6, 8), torch.rand(2) * 1000
    torch.testing.assert_close(net(x, t), net(x, t, class_ids=torch.full((2,), 3)))
    assert not torch.allclose(net(x, t), net(x, t, class_ids=torch.tensor([0, 1])), atol=1e-4)
    with pytest.raises(ValueError, match="class ids"):
        net(x, t, class_ids=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="num_classes=0"):
        _denoiser()(x, t, class_ids=torch.tensor([0, 1]))


def test_denoiser_context_and_drop_context():
    torch.manual_seed(0)
    net = _perturb_zero_inits(_denoiser(context_dim=16))
    x, t = torch.randn(2, 6, 8), torch.rand(2) * 1000
    ctx, ctx_mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    other = torch.randn(2, 5, 16)
    drop = torch.tensor([True, False])
    a = net(x, t, context=ctx, context_mask=ctx_mask, drop_context=drop)
    b = net(x, t, context=other, context_mask=ctx_mask, drop_context=drop)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)  # dropped row: independent of its context
    assert not torch.allclose(a[1], b[1], atol=1e-4)  # kept row depends on it
    torch.testing.assert_close(a[1], net(x, t, context=ctx, context_mask=ctx_mask)[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="context"):
        net(x, t)
    with pytest.raises(ValueError, match="context"):
        _denoiser()(x, t, context=ctx)


def test_denoiser_skips():
    torch.manual_seed(0)
    net = _denoiser(depth=4, num_skips=2)
    assert len(net.skip_projs) == 2 and _denoiser(depth=12).num_skips == 3
    assert net(torch.randn(1, 6, 8), torch.rand(1)).shape == (1, 6, 8)
    with pytest.raises(ValueError, match="num_skips"):
        _denoiser(depth=4, num_skips=3)


def test_denoiser_padding_mask_and_length():
    torch.manual_seed(0)
    net = _perturb_zero_inits(_denoiser())
    x, t = torch.randn(2, 6, 8), torch.rand(2) * 1000
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, 4:] = False
    y = x.clone()
    y[:, 4:] = torch.randn(2, 2, 8) * 10
    a, b = net(x, t, mask=mask), net(y, t, mask=mask)
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(net(x, t)[:, :4], net(y, t)[:, :4], atol=1e-4)
    with pytest.raises(ValueError, match="max_len"):
        net(torch.randn(1, 7, 8), torch.rand(1))

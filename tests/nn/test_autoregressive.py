"""ARTransformer: causality, source padding, tied output projection, shapes and argument errors."""
import pytest
import torch

from textdiff.nn import ARTransformer
from textdiff.nn.autoregressive import causal_mask


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is fastest


def tiny(enc_depth=2, **kw):
    torch.manual_seed(0)
    args = dict(dim=32, dec_depth=2, heads=4, ffn_dim=64, max_len=12, max_src_len=10, dropout=0.0)
    return ARTransformer(20, enc_depth=enc_depth, **{**args, **kw}).eval()


def test_causal_mask_blocks_the_future():
    m = causal_mask(4)
    assert m.dtype == torch.bool and m.tolist()[1] == [False, False, True, True]


@pytest.mark.parametrize("enc_depth", [0, 2])
def test_changing_a_later_token_leaves_earlier_logits_unchanged(enc_depth):
    net = tiny(enc_depth)
    src = torch.randint(3, 20, (3, 7))
    memory = net.encode(src) if enc_depth else None
    tgt = torch.randint(3, 20, (3, 9))
    tgt2 = tgt.clone()
    tgt2[:, 5] = (tgt[:, 5] + 1 - 3) % 17 + 3  # another real token at position 5
    a, b = net.decode(tgt, memory), net.decode(tgt2, memory)
    assert a.shape == (3, 9, 20)
    torch.testing.assert_close(net.decode(tgt, memory, last_only=True), a[:, -1:])
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-5)
    assert (a[:, 5:] - b[:, 5:]).abs().amax() > 1e-3  # the changed position and later ones do see it


def test_padded_source_positions_are_not_attended_to():
    net = tiny()
    src = torch.randint(3, 20, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 5:] = False
    src2 = src.clone()
    src2[:, 5:] = torch.randint(3, 20, (2, 3))
    tgt = torch.randint(3, 20, (2, 6))
    a = net(tgt, src, mask)
    b = net(tgt, src2, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert (net(tgt, src2) - a).abs().amax() > 1e-3  # without the mask the padding would matter


def test_target_padding_mask_changes_nothing_at_real_positions():
    net = tiny(0)
    tgt = torch.randint(3, 20, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 6:] = False
    torch.testing.assert_close(net.decode(tgt, tgt_mask=mask)[0, :6], net.decode(tgt)[0, :6], rtol=0, atol=1e-5)


def test_output_projection_is_the_shared_embedding():
    net = tiny()
    token_tables = [m for m in net.modules() if isinstance(m, torch.nn.Embedding) and m.num_embeddings == 20]
    assert token_tables == [net.embed]  # one table for encoder, decoder and output
    with torch.no_grad():
        net.embed.weight[7] = 0.0
    out = net(torch.randint(3, 20, (2, 5)), torch.randint(3, 20, (2, 4)))
    assert torch.all(out[..., 7] == 0)  # logit of token v = h . E[v]
    untied = tiny(tie_embeddings=False)
    with torch.no_grad():
        untied.embed.weight[7] = 0.0
    assert untied(torch.randint(3, 20, (2, 5)), torch.randint(3, 20, (2, 4)))[..., 7].abs().amax() > 0
    n_tied, n_untied = (sum(p.numel() for p in m.parameters()) for m in (net, untied))
    assert n_untied - n_tied == 20 * 32


def test_inputs_are_scaled_by_sqrt_dim():
    net = tiny(0)
    ids = torch.tensor([[4, 5, 6]])
    h = net._embed(ids, net.dec_pos, net.max_len, "target")
    expected = 32**0.5 * net.embed.weight[ids] + net.dec_pos.weight[:3].unsqueeze(0)
    torch.testing.assert_close(h, expected)


def test_decoder_only_has_no_encoder_or_cross_attention():
    lm = tiny(0)
    assert not lm.conditional and not hasattr(lm, "encoder")
    assert not any("multihead_attn" in name for name, _ in lm.named_parameters())
    s2s = tiny(2)
    assert any("multihead_attn" in name for name, _ in s2s.named_parameters())


def test_wrong_usage_is_reported():
    lm, s2s = tiny(0), tiny(2)
    with pytest.raises(ValueError, match="no encoder"):
        lm.encode(torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="takes no memory"):
        lm.decode(torch.ones(1, 3, dtype=torch.long), torch.zeros(1, 2, 32))
    with pytest.raises(ValueError, match="takes no source"):
        lm(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="needs `memory`"):
        s2s.decode(torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="needs `src_ids`"):
        s2s(torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the network's 12 positions"):
        lm.decode(torch.ones(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="source length 11"):
        s2s.encode(torch.ones(1, 11, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        ARTransformer(20, dim=30, heads=4)
    with pytest.raises(ValueError, match="activation"):
        ARTransformer(20, dim=32, heads=4, activation="tanh")

"""ARTransformer: causality, source padding, tied output projection, shapes and argument errors; incremental
decoding with the key/value cache against full-prefix decoding; unchanged state_dict keys."""
import pytest
import torch

from textdiff.nn import ARTransformer
from textdiff.nn.autoregressive import DecodeCache, causal_mask


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


# ----- incremental decoding (start_cache / decode_step) -----
LAYER_KEYS = ["self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
              "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
              "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"]
CROSS_KEYS = ["multihead_attn.in_proj_weight", "multihead_attn.in_proj_bias", "multihead_attn.out_proj.weight",
              "multihead_attn.out_proj.bias"]


def expected_keys(enc_depth, dec_depth, norm_first, tied=True):
    """The state_dict keys of every checkpoint written before the cache existed, in order."""
    keys = ["embed.weight", "dec_pos.weight"]
    if enc_depth:
        keys.append("enc_pos.weight")
        keys += [f"encoder.{i}.{k}" for i in range(enc_depth) for k in LAYER_KEYS]
        if norm_first:
            keys += ["enc_norm.weight", "enc_norm.bias"]
    dec = LAYER_KEYS[:4] + (CROSS_KEYS if enc_depth else []) + LAYER_KEYS[4:] + (["norm3.weight", "norm3.bias"]
                                                                              if enc_depth else [])
    keys += [f"decoder.{i}.{k}" for i in range(dec_depth) for k in dec]
    if norm_first:
        keys += ["dec_norm.weight", "dec_norm.bias"]
    return keys + ([] if tied else ["out_proj.weight"])


@pytest.mark.parametrize("enc_depth,norm_first,tied", [(2, False, True), (2, True, True), (0, False, True),
                                                       (0, True, False)])
def test_state_dict_keys_are_unchanged(enc_depth, norm_first, tied):
    net = tiny(enc_depth, norm_first=norm_first, tie_embeddings=tied)
    assert list(net.state_dict()) == expected_keys(enc_depth, 2, norm_first, tied)
    other = tiny(enc_depth, norm_first=norm_first, tie_embeddings=tied)
    other.load_state_dict({k: v.clone() for k, v in net.state_dict().items()}, strict=True)  # an old checkpoint


def padded_source(rows=3, width=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(3, 20, (rows, width), generator=gen)
    mask = torch.ones(rows, width, dtype=torch.bool)
    mask[0, 5:] = False
    mask[-1, 2:] = False  # one row of two real tokens
    return src.masked_fill(~mask, 0), mask


@pytest.mark.parametrize("enc_depth", [0, 2])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("beams", [1, 3])
def test_decode_step_matches_full_prefix_decoding_at_every_position(enc_depth, norm_first, activation, beams):
    net = tiny(enc_depth, norm_first=norm_first, activation=activation, dropout=0.3).eval()  # dropout off in eval
    src, src_mask = padded_source()
    B, L = src.shape[0], net.max_len
    tgt = torch.randint(3, 20, (B * beams, L))
    with torch.no_grad():
        if enc_depth:
            memory = net.encode(src, src_mask)
            full = net.decode(tgt, memory.repeat_interleave(beams, 0), src_mask.repeat_interleave(beams, 0))
            cache = net.start_cache(memory, src_mask, beams=beams)
        else:
            full = net.decode(tgt)
            cache = net.start_cache(batch=B * beams)
        assert isinstance(cache, DecodeCache) and cache.rows == B * beams and cache.length == 0
        for t in range(L):
            logits = net.decode_step(tgt[:, t], cache)
            assert logits.shape == (B * beams, 20) and cache.length == t + 1
            torch.testing.assert_close(logits, full[:, t], rtol=0, atol=1e-5)
        assert cache.keys(0).shape == cache.values(1).shape == (B * beams, 4, L, 8)
        if enc_depth:
            assert cache.cross_keys[0].shape == (B, 4, 8, 8)  # once per source, not per beam
        with pytest.raises(ValueError, match="cache is full"):
            net.decode_step(tgt[:, 0], cache)


def test_padded_source_positions_are_not_attended_to_by_the_cache():
    net = tiny()
    src, mask = padded_source()
    src2 = src.masked_fill(~mask, 7)  # other tokens under the padding
    tgt = torch.randint(3, 20, (3, 5))
    outs = []
    with torch.no_grad():
        for s, m in ((src, mask), (src2, mask), (src2, None)):
            cache = net.start_cache(net.encode(s, m), m)
            outs.append(torch.stack([net.decode_step(tgt[:, t], cache) for t in range(5)], 1))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
    assert (outs[2] - outs[0]).abs().amax() > 1e-3  # without the mask the padding would matter


@pytest.mark.parametrize("enc_depth", [0, 2])
def test_reorder_continues_the_chosen_rows(enc_depth):
    """After reorder(rows) the cache decodes as if the rows' prefixes had been fed in that order; with
    beams == 1 rows may repeat or be dropped."""
    net = tiny(enc_depth)
    src, src_mask = padded_source()
    tgt = torch.randint(3, 20, (3, 7))
    rows = torch.tensor([2, 2, 0, 1])
    with torch.no_grad():
        memory = net.encode(src, src_mask) if enc_depth else None
        cache = net.start_cache(memory, src_mask if enc_depth else None, batch=3)
        for t in range(4):
            net.decode_step(tgt[:, t], cache)
        cache.reorder(rows)
        assert cache.rows == 4 and cache.length == 4
        got = torch.stack([net.decode_step(tgt[rows, t], cache) for t in range(4, 7)], 1)
        want = net.decode(tgt[rows], memory[rows] if enc_depth else None, src_mask[rows] if enc_depth else None)
    torch.testing.assert_close(got, want[:, 4:7], rtol=0, atol=1e-5)


def test_reorder_among_beams_keeps_the_shared_source():
    net = tiny()
    src, src_mask = padded_source(rows=2)
    K = 3
    tgt = torch.randint(3, 20, (2 * K, 6))
    rows = torch.tensor([2, 2, 0, 4, 3, 3])  # each row stays among its own source's beams
    with torch.no_grad():
        memory = net.encode(src, src_mask)
        cache = net.start_cache(memory, src_mask, beams=K)
        for t in range(3):
            net.decode_step(tgt[:, t], cache)
        cache.reorder(rows)
        got = torch.stack([net.decode_step(tgt[rows, t], cache) for t in range(3, 6)], 1)
        want = net.decode(tgt[rows], memory.repeat_interleave(K, 0), src_mask.repeat_interleave(K, 0))
        torch.testing.assert_close(got, want[:, 3:6], rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="among the beams of its own source"):
            cache.reorder(torch.tensor([0, 1, 3, 3, 4, 5]))  # row 2 would take source 1's beam
        with pytest.raises(ValueError, match="among the beams of its own source"):
            cache.reorder(torch.tensor([0, 1, 2]))


def test_incremental_decoding_usage_errors():
    lm, s2s = tiny(0), tiny(2)
    memory = s2s.encode(torch.randint(3, 20, (2, 4)))
    with pytest.raises(ValueError, match="needs `batch`"):
        lm.start_cache()
    with pytest.raises(ValueError, match="takes no memory"):
        lm.start_cache(memory, batch=2)
    with pytest.raises(ValueError, match="needs `memory`"):
        s2s.start_cache(batch=2)
    with pytest.raises(ValueError, match="batch=3"):
        s2s.start_cache(memory, batch=3)
    with pytest.raises(ValueError, match="max_len=13"):
        lm.start_cache(batch=2, max_len=13)
    with pytest.raises(ValueError, match="2 tokens for a cache of 3 rows"):
        lm.decode_step(torch.tensor([4, 5]), lm.start_cache(batch=3))
    with pytest.raises(ValueError, match="not made by this network"):
        s2s.decode_step(torch.tensor([4, 5]), lm.start_cache(batch=2))
    lm.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        lm.start_cache(batch=2)
    with pytest.raises(RuntimeError, match="eval mode"):
        lm.decode_step(torch.tensor([4, 5]), DecodeCache(2, 1, 12, 2))

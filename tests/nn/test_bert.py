import copy

import pytest
import torch
from transformers import BertConfig

from textdiff.nn.bert import TimeConditionedBert, build_bert

V = 50
TINY = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=16)
MODES = ["none", "token", "layerwise"]


def _net(mode="none", **kw):
    return TimeConditionedBert(dict(TINY), time_mode=mode, num_steps=100, **kw).eval()


def _ids(b=2, length=8):
    return torch.randint(0, V, (b, length))


def _perturb_time_layers(net):
    with torch.no_grad():
        for mlp in net.time_mlps:
            mlp[-1].weight.normal_(0, 0.5)
            mlp[-1].bias.normal_(0, 0.5)


def test_build_from_dict_and_config_sets_vocab():
    assert build_bert(dict(TINY)).config.vocab_size == V
    assert build_bert(dict(TINY), vocab_size=60).config.vocab_size == 60
    from omegaconf import OmegaConf  # Hydra passes nested mappings as DictConfig

    assert build_bert(OmegaConf.create(TINY), vocab_size=60).config.vocab_size == 60
    model = build_bert(BertConfig(**TINY), vocab_size=77)
    assert model.config.vocab_size == 77 and model.cls.predictions.decoder.out_features == 77
    net = _net("token")
    assert (net.vocab_size, net.hidden_size, net.max_len) == (V, 32, 15)
    assert _net("none").max_len == 16 and net.config is net.bert.config


def test_saved_model_vocab_mismatch_and_missing_path(tmp_path):
    build_bert(dict(TINY)).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=rf"99.*{V}"):
        build_bert(tmp_path / "m", vocab_size=99)
    with pytest.raises(ValueError, match=rf"99.*{V}"):
        build_bert(build_bert(dict(TINY)), vocab_size=99)
    assert build_bert(str(tmp_path / "m"), vocab_size=V).config.vocab_size == V
    with pytest.raises(FileNotFoundError, match="nope"):
        build_bert(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        build_bert(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        build_bert(tmp_path / "empty")


def test_save_pretrained_roundtrip(tmp_path):
    net = _net()
    net.save_pretrained(tmp_path / "ckpt")
    reloaded = TimeConditionedBert(tmp_path / "ckpt", vocab_size=V).eval()
    ids, t = _ids(), torch.rand(2)
    torch.testing.assert_close(net(ids, t), reloaded(ids, t), rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_output_shape(mode):
    out = _net(mode)(_ids(3, 7), torch.rand(3), torch.ones(3, 7, dtype=torch.bool))
    assert out.shape == (3, 7, V) and out.dtype == torch.float32


def test_none_mode_ignores_t():
    net, ids = _net("none"), _ids()
    torch.testing.assert_close(net(ids, torch.zeros(2)), net(ids, torch.ones(2)), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["token", "layerwise"])
def test_time_changes_output(mode):
    net, ids = _net(mode), _ids()
    if mode == "layerwise":
        _perturb_time_layers(net)
    assert not torch.allclose(net(ids, torch.full((2,), 0.1)), net(ids, torch.full((2,), 0.9)))


def test_layerwise_zero_init_matches_bare_bert():
    net, ids = _net("layerwise"), _ids()
    mask = torch.ones_like(ids)
    expected = net.bert(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(net(ids, torch.rand(2), mask), expected, rtol=0, atol=0)


def test_layerwise_hooks_idle_outside_forward_and_survive_deepcopy():
    net, ids = _net("layerwise"), _ids()
    _perturb_time_layers(net)
    t = torch.full((2,), 0.5)
    out = net(ids, t)
    assert net._time_emb is None
    bare = net.bert(input_ids=ids).logits  # hooks do nothing when no time is set
    assert not torch.allclose(out, bare)
    clone = copy.deepcopy(net)
    torch.testing.assert_close(clone(ids, t), out)
    with torch.no_grad():
        clone.time_mlps[0][-1].bias.add_(1.0)
    assert not torch.allclose(clone(ids, t), out) and torch.equal(net(ids, t), out)


@pytest.mark.parametrize("mode", MODES)
def test_padding_does_not_leak(mode):
    net = _net(mode)
    if mode == "layerwise":
        _perturb_time_layers(net)
    ids = _ids(2, 10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, 8:] = False
    other = ids.clone()
    other[~mask] = (ids[~mask] + 1 + torch.randint(0, V - 1, ids[~mask].shape)) % V
    t = torch.tensor([0.2, 0.7])
    a, b = net(ids, t, mask), net(other, t, mask.long())
    torch.testing.assert_close(a[mask], b[mask], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(net(ids, t), net(other, t))  # without the mask it does leak


def test_layerwise_gradients_reach_time_mlps():
    net = _net("layerwise").train()
    net(_ids(), torch.rand(2)).logsumexp(-1).mean().backward()
    for mlp in net.time_mlps:
        assert mlp[-1].weight.grad is not None and mlp[-1].weight.grad.abs().sum() > 0
        assert mlp[0].weight.grad is not None  # zero until the last layer moves, but connected


def test_token_mode_length_limit():
    net = _net("token")
    assert net(_ids(1, 15), torch.rand(1)).shape == (1, 15, V)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        net(_ids(1, 16), torch.rand(1))


def test_bad_time_mode():
    with pytest.raises(ValueError, match="time_mode"):
        _net("film")

"""``DifformerNet``'s decoder from cached cross-attention keys and values (``memory_kv``) gives what it gives from
the memory itself, so ``generate`` can compute them once per call."""
import pytest
import torch

from textdiff.nn.difformer import DifformerNet


@pytest.mark.parametrize("self_condition", [False, True])
def test_cached_memory_keys_and_values_give_the_same_output(self_condition):
    torch.manual_seed(0)
    net = DifformerNet(50, latent_dim=8, dim=32, enc_depth=2, dec_depth=2, heads=4, ffn_dim=64, max_len=12,
                       self_condition=self_condition).eval()
    src = torch.randint(4, 50, (3, 9))
    src_mask = torch.arange(9) < torch.tensor([9, 6, 4]).unsqueeze(-1)  # padded sources
    n = 2  # candidates per source, source-major
    memory = net.encode(src, src_mask)
    z, t = torch.randn(3 * n, 7, 8), torch.rand(3 * n) * 1000
    mask = torch.arange(7) < torch.tensor([7, 5, 6, 3, 7, 4]).unsqueeze(-1)
    sc = torch.randn_like(z) if self_condition else None
    with torch.no_grad():
        ref = net(z, t, memory.repeat_interleave(n, 0), mask=mask, src_mask=src_mask.repeat_interleave(n, 0),
                  self_cond=sc)
        cached = net(z, t, None, mask=mask, src_mask=src_mask.repeat_interleave(n, 0), self_cond=sc,
                     memory_kv=net.memory_kv(memory, n))
    assert torch.allclose(ref, cached, atol=1e-5), (ref - cached).abs().max()
    with pytest.raises(ValueError, match="exactly one"):
        net(z, t, memory, memory_kv=net.memory_kv(memory, n))

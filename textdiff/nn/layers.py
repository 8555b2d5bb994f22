"""Small building blocks shared by the denoisers."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) times (Vaswani et al. 2017 §3.5, as in
    improved-diffusion): [cos(t f_k), sin(t f_k)], f_k = max_period^(-k / (dim/2)).

    Args:
        t: (B,) float, e.g. 1000 t or a chain index.
        dim: output width (an odd dim gets a zero column).

    Returns:
        (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().unsqueeze(-1) * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


class TimeEmbedding(nn.Module):
    """sinusoid(t, freq_dim) -> Linear -> SiLU -> Linear (improved-diffusion's ``time_embed``).
    Input (B,), output (B, dim)."""

    def __init__(self, dim: int, freq_dim: int = 128, hidden: Optional[int] = None) -> None:
        super().__init__()
        hidden = hidden or 4 * freq_dim
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))


def masked_mean_pool(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean of ``x`` (B, L, D) over positions where ``mask`` (B, L) is True. Returns (B, D)."""
    if mask is None:
        return x.mean(1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1)


def set_layer_dropouts(layer: nn.Module, attention: float, activation: float) -> nn.Module:
    """Give a torch ``TransformerEncoderLayer``/``TransformerDecoderLayer`` fairseq's separate dropout rates.

    torch's layers use their one ``dropout`` for the residual branches, the attention weights and the FFN
    activation; fairseq has ``dropout`` (residual branches), ``attention_dropout`` (attention weights) and
    ``activation_dropout`` (between the FFN's two linear maps), the last two 0 by default
    (``transformer.base_architecture``). This keeps the residual rate and sets the other two. Returns ``layer``.
    """
    if not 0.0 <= attention < 1.0 or not 0.0 <= activation < 1.0:
        raise ValueError(f"dropout rates must be in [0, 1), got attention={attention}, activation={activation}")
    for name in ("self_attn", "multihead_attn"):
        attn = getattr(layer, name, None)
        if isinstance(attn, nn.MultiheadAttention):
            attn.dropout = float(attention)
    if not isinstance(getattr(layer, "dropout", None), nn.Dropout):
        raise TypeError(f"{type(layer).__name__} has no FFN activation dropout to set")
    layer.dropout = nn.Dropout(activation)
    return layer


def bert_init_(module: nn.Module, std: float = 0.02) -> None:
    """fairseq's ``init_bert_params`` (``--apply-bert-init``) on every submodule of ``module``: linear and
    embedding weights and attention input projections from N(0, std^2), their biases 0; LayerNorms untouched."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            nn.init.normal_(m.in_proj_weight, std=std)
            if m.in_proj_bias is not None:
                nn.init.zeros_(m.in_proj_bias)

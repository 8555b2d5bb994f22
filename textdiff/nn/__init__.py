"""Plain nn.Modules (typed scalar arguments, no config objects)."""
from textdiff.nn.autoregressive import ARTransformer
from textdiff.nn.difformer import DifformerNet
from textdiff.nn.layers import TimeEmbedding, masked_mean_pool, timestep_embedding
from textdiff.nn.length import LengthPredictor
from textdiff.nn.transformer import TransformerDenoiser

__all__ = ["ARTransformer", "DifformerNet", "LengthPredictor", "TimeEmbedding", "TransformerDenoiser", "masked_mean_pool", "timestep_embedding"]

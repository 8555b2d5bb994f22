"""Plain nn.Modules (typed scalar arguments, no config objects)."""
from textdiff.nn.autoregressive import ARTransformer
from textdiff.nn.classifier import LatentClassifier, TransformerClassifier
from textdiff.nn.difformer import DifformerNet
from textdiff.nn.ld4lg import LatentDenoiser, LatentReconstructor, PerceiverCompressor
from textdiff.nn.layers import TimeEmbedding, masked_mean_pool, timestep_embedding
from textdiff.nn.length import LengthPredictor
from textdiff.nn.transformer import TransformerDenoiser

__all__ = ["ARTransformer", "DifformerNet", "LatentClassifier", "LatentDenoiser", "LatentReconstructor",
           "LengthPredictor", "PerceiverCompressor", "TimeEmbedding", "TransformerClassifier", "TransformerDenoiser",
           "masked_mean_pool", "timestep_embedding"]

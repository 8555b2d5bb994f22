"""The shared diffusion core (pure torch): schedules, processes, the sampler and its hooks."""
from textdiff.core.absorbing import AbsorbingProcess
from textdiff.core.categorical import sample_categorical
from textdiff.core.gaussian import GaussianProcess, gaussian_nll, masked_mean, masked_sum
from textdiff.core.control import ClassifierGuidance, Infill, class_nll
from textdiff.core.guidance import ClassifierFreeGuidance, guidance_combine
from textdiff.core.hooks import ClampToEmbeddings, L2Renormalize, LogitFilter, nearest_rows
from textdiff.core.sampler import SampleOutput, Sampler, StepHook
from textdiff.core.schedules import (
    CosineSchedule,
    CosineSquaredSchedule,
    DDPMLinearSchedule,
    DiscreteSchedule,
    LogLinearSchedule,
    MutualSchedule,
    NoiseSchedule,
    SpindleSchedule,
    SqrtSchedule,
    VarianceRescaled,
    VPLinearSchedule,
    discretize,
    grid_steps,
)
from textdiff.core.types import Batch, DenoiseFn, X0Hook, pad_sequences

__all__ = [
    "AbsorbingProcess", "Batch", "ClampToEmbeddings", "class_nll", "ClassifierFreeGuidance",
    "ClassifierGuidance", "CosineSchedule", "CosineSquaredSchedule", "DDPMLinearSchedule", "DenoiseFn",
    "DiscreteSchedule", "discretize", "gaussian_nll", "GaussianProcess", "grid_steps", "guidance_combine",
    "Infill", "L2Renormalize", "LogitFilter", "LogLinearSchedule", "masked_mean", "masked_sum",
    "MutualSchedule", "nearest_rows", "NoiseSchedule", "pad_sequences", "sample_categorical", "SampleOutput",
    "Sampler", "SpindleSchedule", "SqrtSchedule", "StepHook", "VarianceRescaled", "VPLinearSchedule", "X0Hook",
]

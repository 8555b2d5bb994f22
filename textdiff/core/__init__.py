"""The shared diffusion core (pure torch): schedules, processes, the sampler and its hooks."""
from textdiff.core.absorbing import AbsorbingProcess
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
    VPLinearSchedule,
    discretize,
    grid_steps,
)
from textdiff.core.types import Batch, DenoiseFn, X0Hook

__all__ = [
    "AbsorbingProcess", "Batch", "ClampToEmbeddings", "ClassifierFreeGuidance", "ClassifierGuidance", "Infill", "CosineSchedule", "CosineSquaredSchedule",
    "DDPMLinearSchedule", "DenoiseFn", "DiscreteSchedule", "GaussianProcess", "L2Renormalize",
    "LogLinearSchedule", "LogitFilter", "MutualSchedule", "NoiseSchedule", "SampleOutput", "Sampler",
    "SpindleSchedule", "SqrtSchedule", "StepHook", "VPLinearSchedule", "X0Hook", "discretize", "gaussian_nll", "grid_steps",
    "class_nll", "guidance_combine",
    "masked_mean", "masked_sum", "nearest_rows",
]

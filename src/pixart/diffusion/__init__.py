"""Noise schedule, training objectives, guidance and the sampler table."""

from pixart.diffusion.guidance import GuidedDenoiser, learned_null_caption
from pixart.diffusion.objective import OBJECTIVES, DiffusionConfig, training_loss
from pixart.diffusion.schedule import NoiseSchedule
from pixart.diffusion.schedulers import SAMPLERS, build_scheduler, get_sampler

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "DiffusionConfig",
    "GuidedDenoiser",
    "NoiseSchedule",
    "build_scheduler",
    "get_sampler",
    "learned_null_caption",
    "training_loss",
]

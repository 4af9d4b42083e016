"""The PixArt transformer, its configs, and the class-conditional DiT used for stage 1."""

from pixart.model.dit import DiT, DiTConfig
from pixart.model.pixart import (
    PRESETS,
    TINY,
    TINY_MS,
    XL_2,
    XL_2_256,
    XL_2_1024_MS,
    PixArt,
    PixArtConfig,
    count_parameters,
)

__all__ = [
    "PRESETS",
    "TINY",
    "TINY_MS",
    "XL_2",
    "XL_2_256",
    "XL_2_1024_MS",
    "DiT",
    "DiTConfig",
    "PixArt",
    "PixArtConfig",
    "count_parameters",
]

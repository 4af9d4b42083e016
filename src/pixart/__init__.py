"""pixart: PixArt-alpha, the fast-trained text-to-image Diffusion Transformer."""

import importlib
import logging
from typing import Any

# What a script reaches for first, by the module that holds it (imported on first use: see __getattr__)
_HOMES = {
    "PixArt": "pixart.model",
    "PixArtConfig": "pixart.model",
    "TextToImage": "pixart.generate",
    "Settings": "pixart.generation_settings",
    "load_transformer": "pixart.weights",
    "save_transformer": "pixart.weights",
}
__all__ = list(_HOMES)
__version__ = "0.1.0"

# bitsandbytes (the t5-8bit extra), imported by diffusers' VAE module wherever it is installed, logs on import
# that its CPU 4-bit kernels package is absent: on every image pixart decoded, about kernels it never uses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def __getattr__(name: str) -> Any:
    """`pixart.PixArt`, `pixart.TextToImage`... imported on first use: importing the package (as `pixart
    --help` does) must not load torch."""
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'pixart' has no attribute {name!r}")


def __dir__() -> list[str]:  # tab completion sees the lazy names, not this file's own imports
    return sorted([*__all__, "__version__"])

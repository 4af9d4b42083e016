"""pixart: PixArt-alpha, the fast-trained text-to-image Diffusion Transformer."""

import logging

__all__ = ["PixArt", "PixArtConfig"]
__version__ = "0.1.0"

# bitsandbytes (the t5-8bit extra), imported by diffusers' VAE module wherever it is installed, logs on import
# that its CPU 4-bit kernels package is absent: on every image pixart decoded, about kernels it never uses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def __getattr__(name: str) -> type:
    """`pixart.PixArt` and `pixart.PixArtConfig`, imported on first use: importing the package (as
    `pixart --help` does) must not load torch."""
    if name in __all__:
        from pixart import model

        return getattr(model, name)
    raise AttributeError(f"module 'pixart' has no attribute {name!r}")

"""pixart: PixArt-alpha, the fast-trained text-to-image Diffusion Transformer."""

from pixart.model import PixArt, PixArtConfig

__all__ = ["PixArt", "PixArtConfig"]
__version__ = "0.1.0"

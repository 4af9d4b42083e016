"""pixart: PixArt-alpha, the fast-trained text-to-image Diffusion Transformer."""

__all__ = ["PixArt", "PixArtConfig"]
__version__ = "0.1.0"


def __getattr__(name: str) -> type:
    """`pixart.PixArt` and `pixart.PixArtConfig`, imported on first use: importing the package (as
    `pixart --help` does) must not load torch."""
    if name in __all__:
        from pixart import model

        return getattr(model, name)
    raise AttributeError(f"module 'pixart' has no attribute {name!r}")

"""PixArt weights in and out: official .pth, our safetensors, diffusers folders, DiT initialisation."""

from pixart.weights.dit_init import dit_to_pixart, reparameterize_dit
from pixart.weights.errors import WeightsError
from pixart.weights.formats import FORMATS, detect_format
from pixart.weights.io import load_transformer, read_state
from pixart.weights.save import save_transformer

__all__ = [
    "FORMATS",
    "WeightsError",
    "detect_format",
    "dit_to_pixart",
    "load_transformer",
    "read_state",
    "reparameterize_dit",
    "save_transformer",
]

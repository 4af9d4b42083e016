"""Frozen encoders: text (T5, MiniLM) and image codecs (SD VAE, pixels). Heavy imports are lazy."""

from pixart.encoders.captions import clean_caption
from pixart.encoders.codecs import SDVAE, ImageCodec, PixelCodec, from_uint8, load_codec, to_uint8
from pixart.encoders.text import EncodedText, MiniLMEncoder, T5Encoder, TextEncoder, load_text_encoder, minilm_folder

__all__ = [
    "SDVAE",
    "EncodedText",
    "ImageCodec",
    "MiniLMEncoder",
    "PixelCodec",
    "T5Encoder",
    "TextEncoder",
    "clean_caption",
    "from_uint8",
    "load_codec",
    "load_text_encoder",
    "minilm_folder",
    "to_uint8",
]

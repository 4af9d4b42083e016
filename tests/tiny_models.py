"""Tiny, random, offline stand-ins for T5, its tokenizer, the SD VAE and a PixArt pipeline folder."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import randomize_

from pixart.model import TINY, PixArt
from pixart.weights import save_transformer

WORDS = [
    "a",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "triangle",
    "on",
    "the",
    "of",
    "in",
    "at",
    "top",
    "left",
    "right",
    "bottom",
    "centre",
    "large",
    "small",
    "background",
    "grey",
    "white",
    "black",
    "cat",
    "dog",
    "photo",
    "picture",
    "and",
    "with",
    "an",
    "image",
    "big",
    "tiny",
]


def save_tiny_tokenizer(folder: Path) -> None:
    """A Unigram tokenizer (pad=0, </s>=1, unk=2) over a small vocabulary, appending </s> like T5's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"\u2581{w}", -2.0) for w in WORDS]
    pieces += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz\u2581"]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)


def save_tiny_t5(folder: Path, vocab_size: int = 128, width: int = 48) -> None:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=16,
        d_ff=96,
        num_layers=2,
        num_heads=3,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=8,
    )
    T5EncoderModel(config).eval().save_pretrained(folder)
    save_tiny_tokenizer(folder)


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ).eval()


def save_tiny_pipeline(folder: Path, config=TINY, seed: int = 0) -> Path:
    """A diffusers PixArtAlphaPipeline folder: tiny T5 + tokenizer, VAE (factor 2), random transformer."""
    import diffusers
    from transformers import AutoTokenizer, T5EncoderModel

    folder = Path(folder)
    scratch = folder.parent / f".{folder.name}-parts"
    save_tiny_t5(scratch / "t5")
    model = randomize_(PixArt(config), seed=seed, std=0.05).eval()
    save_transformer(model, scratch / "transformer", to="diffusers")
    pipe = diffusers.PixArtAlphaPipeline(
        tokenizer=AutoTokenizer.from_pretrained(scratch / "t5"),
        text_encoder=T5EncoderModel.from_pretrained(scratch / "t5"),
        vae=tiny_vae(),
        transformer=diffusers.PixArtTransformer2DModel.from_pretrained(scratch / "transformer"),
        scheduler=diffusers.DPMSolverMultistepScheduler(),
    )
    pipe.save_pretrained(folder)
    return folder

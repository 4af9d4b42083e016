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


def save_tiny_clip(folder: Path) -> Path:
    """A random CLIP with a character-level BPE vocabulary, saved as a transformers folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    symbols = [*"abcdefghijklmnopqrstuvwxyz0123456789,."]
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    end = vocab["<|endoftext|>"]
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": end,
        "pad_token_id": end,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


LLAVA_WORDS = ["a", "an", "the", "image", "photo", "of", "in", "on", "with", "red", "blue", "green", "cat", "dog"]
LLAVA_SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
# A LLaVA-1.5-like template: the processor's chat template path is what real checkpoints take.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% else %}{{ part['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for part in message['content'] %}{{ part['text'] }}{% endfor %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def save_tiny_llava(folder: Path) -> None:
    """A random LLaVA: tiny CLIP vision tower (32 px, 8 px patches), tiny Llama, word-level tokenizer with <image>."""
    import transformers
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = {token: i for i, token in enumerate([*LLAVA_SPECIAL, *LLAVA_WORDS, "USER:", "ASSISTANT:"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAVA_SPECIAL])
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    # Without torchvision, transformers 5 falls back to the PIL processor (and warns); ask for it directly.
    if hasattr(transformers, "CLIPImageProcessorPil"):
        image_processor_class = transformers.CLIPImageProcessorPil
    else:
        image_processor_class = transformers.CLIPImageProcessor
    image_processor = image_processor_class(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=fast,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, which the 'default' strategy drops again
        chat_template=CHAT_TEMPLATE,
    )
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        image_token_index=vocab["<image>"],
        image_seq_length=16,
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config).eval()
    # A random model often emits only special tokens (an empty caption); forbid them so captions are words.
    model.generation_config.suppress_tokens = list(range(len(LLAVA_SPECIAL)))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

"""`pixart convert SRC --to {pixart,official,diffusers} --out DST`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="official .pth, our .safetensors, a diffusers folder, or a DiT .pt")
    parser.add_argument("--to", required=True, choices=["pixart", "official", "diffusers"], help="output layout")
    parser.add_argument("--out", required=True, type=Path, help="output file (.safetensors/.pth) or folder")
    parser.add_argument("--ema", action="store_true", help="take state_dict_ema from an official checkpoint")
    parser.add_argument(
        "--config",
        type=Path,
        help="JSON of PixArtConfig fields, for files whose shapes "
        "do not say everything (e.g. the head count of a non-XL model)",
    )
    parser.add_argument("--caption-channels", type=int, default=4096, help="DiT input: caption width")
    parser.add_argument("--max-length", type=int, default=120, help="DiT input: caption tokens")
    parser.add_argument("--num-heads", type=int, help="DiT input: head count when not XL (width 1152)")


def run(args: argparse.Namespace) -> int:
    import torch

    from pixart.cli.main import UserError
    from pixart.model.pixart import PixArtConfig, count_parameters
    from pixart.weights import detect_format, read_state, save_transformer
    from pixart.weights.dit_init import dit_to_pixart, read_dit

    config = read_config(args.config, PixArtConfig) if args.config else None
    fmt = detect_format(args.src)
    if fmt == "dit":
        if args.config is not None:  # it would be ignored: the PixArt config follows from the DiT's
            raise UserError(
                "--config is for PixArt weights; a DiT's PixArt takes --caption-channels, --max-length and --num-heads"
            )
        dit_state, dit_config = read_dit(args.src, use_ema=args.ema)
        config, state = dit_to_pixart(
            dit_state,
            caption_channels=args.caption_channels,
            max_length=args.max_length,
            num_heads=args.num_heads,
            dit_config=dit_config,
        )
        note = "re-parameterised from DiT (adaLN-single tables matched at t=500; cross-attention fresh)"
    else:
        config, state, fmt = read_state(args.src, use_ema=args.ema, config=config)
        note = f"read {fmt} weights"
    if args.to == "pixart" and args.out.suffix != ".safetensors":
        raise UserError(f"--to pixart writes a .safetensors file; got --out {args.out}")
    if args.to == "official" and args.out.suffix not in (".pth", ".pt"):
        raise UserError(f"--to official writes a .pth file; got --out {args.out}")
    save_transformer(state, args.out, to=args.to, config=config)
    if args.to == "official" and not state["y_embedder.y_embedding"].any():
        # Weights from diffusers carry no learned null caption (diffusers guides with the encoded empty
        # prompt); the official code would guide against the zeros that stand in for it.
        print(
            f"warning: {args.src} has no learned null caption, so {args.out} holds zeros in "
            "y_embedder.y_embedding; the official code would guide against an all-zero caption. pixart "
            "generate reads such weights as diffusers' and guides with the empty prompt instead.",
            file=sys.stderr,
        )
    with torch.device("meta"):
        from pixart.model import PixArt

        params = count_parameters(PixArt(config))
    print(f"{note}; wrote {args.to} weights to {args.out}")
    print(
        f"  depth {config.depth}, hidden {config.hidden_size}, sample size {config.input_size}, "
        f"micro-conditions {config.micro_conditions}, {params:,} parameters"
    )
    return 0


def read_config(path: Path, config_class):
    """--config FILE: a JSON object of the class's fields; a file that is not one is a one-line error."""
    from pixart import config as config_io
    from pixart.cli.main import UserError

    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object of {config_class.__name__} fields, got {type(data).__name__}")
        return config_io.from_dict(config_class, data)  # each field's type checked
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as error:
        raise UserError(f"--config {path}: {error}") from None

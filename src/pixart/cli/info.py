"""`pixart info PATH`: format found, config, parameter count."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="weights file or model folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from pixart.weights import detect_format
    from pixart.weights.dit_init import infer_dit_config
    from pixart.weights.io import read_checked_state, read_dit

    fmt = detect_format(args.path)
    if fmt == "dit":
        state, dit_config = read_dit(args.path)
        config = (dit_config or infer_dit_config(state)).to_dict()
        architecture = "DiT (class-conditional)"
    else:
        # checked against the architecture it reports: a file missing a block was summarised as healthy
        pixart_config, state, fmt = read_checked_state(args.path)
        config = pixart_config.to_dict()
        architecture = "PixArtMS" if pixart_config.micro_conditions else "PixArt"
    params = sum(v.numel() for k, v in state.items() if k not in ("pos_embed", "y_embedder.y_embedding"))
    info = {"path": str(args.path), "format": fmt, "architecture": architecture, "parameters": params, "config": config}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.path}: {fmt} weights, {architecture}, {params:,} parameters")
    for key, value in config.items():
        print(f"  {key}: {value}")
    return 0

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
    checkpoint = training_checkpoint(args.path)
    if checkpoint is not None:
        info["training_checkpoint"] = checkpoint
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    what = f"{fmt} weights"
    if checkpoint is not None:  # its keys are the official layout, but it is not an official file
        what = (
            f"a pixart train checkpoint (step {checkpoint['step']}, recipe {checkpoint['recipe']}) in the {fmt} layout"
        )
    print(f"{args.path}: {what}, {architecture}, {params:,} parameters")
    for key, value in config.items():
        print(f"  {key}: {value}")
    return 0


def training_checkpoint(path: Path) -> dict | None:
    """Step, recipe and stage of one of our trainer's checkpoints (checkpoints/step-*.pt), else None."""
    from pixart.weights.io import is_training_checkpoint, load_checkpoint_file

    if path.suffix not in (".pt", ".pth") or not path.is_file():
        return None
    data = load_checkpoint_file(path)
    if not is_training_checkpoint(data):
        return None
    return {"step": data.get("step"), "recipe": data["config"].get("recipe"), "stage": data["config"]["stage"]}

"""`pixart convert SRC --to {pixart,official,diffusers} --out DST`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixart.model.dit import DiTConfig


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        type=Path,
        help="official .pth, our .safetensors, a diffusers folder, a DiT .pt, or a training checkpoint",
    )
    parser.add_argument("--to", required=True, choices=["pixart", "official", "diffusers"], help="output layout")
    parser.add_argument("--out", required=True, type=Path, help="output file (.safetensors/.pth) or folder")
    parser.add_argument(
        "--ema",
        action="store_true",
        help="take the EMA weights of a .pth/.pt checkpoint (official, DiT or training) or a training .dcp folder",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help='a JSON file of the PixArtConfig fields a file\'s shapes do not say (e.g. {"num_heads": 3} for a '
        "width not 72 per head); the rest are read from the file",
    )
    parser.add_argument("--caption-channels", type=int, help="DiT input: caption width (default 4096, T5-XXL)")
    parser.add_argument("--max-length", type=int, help="DiT input: caption tokens (default 120)")
    parser.add_argument("--num-heads", type=int, help="DiT input: head count when not XL (width 1152)")


def run(args: argparse.Namespace) -> int:
    from pixart.cli.main import check_writable_folder, removed_if_left_empty

    check_out(args)
    folder = args.out if args.to == "diffusers" else args.out.parent
    with removed_if_left_empty(folder):  # a conversion that fails leaves no empty folder behind
        check_writable_folder(folder, "--out", args.out)
        return convert(args)


def convert(args: argparse.Namespace) -> int:
    import torch

    from pixart.cli.main import UserError
    from pixart.model.pixart import PixArtConfig, count_parameters
    from pixart.modelfolder import sampling_record
    from pixart.weights import detect_format, save_transformer
    from pixart.weights.dit_init import dit_to_pixart
    from pixart.weights.formats import SAMPLING_FILE
    from pixart.weights.io import SAMPLING_METADATA, read_checked_state, read_dit
    from pixart.weights.pth import training_checkpoint_settings

    fields = read_config_fields(args.config, PixArtConfig) if args.config else None
    fmt = detect_format(args.src)
    dit_options = {"--caption-channels": args.caption_channels, "--max-length": args.max_length}
    dit_options["--num-heads"] = args.num_heads
    if fmt == "dit":
        if args.config is not None:  # it would be ignored: the PixArt config follows from the DiT's
            raise UserError(
                "--config is for PixArt weights; a DiT's PixArt takes --caption-channels, --max-length and --num-heads"
            )
        dit_state, dit_config = read_dit(args.src, use_ema=args.ema)
        check_num_heads(args.src, dit_config, args.num_heads)
        # Only the options given: dit_to_pixart's defaults are the rest (0 is checked, not replaced by them).
        widths = {"caption_channels": args.caption_channels, "max_length": args.max_length}
        try:
            config, state = dit_to_pixart(
                dit_state,
                num_heads=args.num_heads,
                dit_config=dit_config,
                **{name: value for name, value in widths.items() if value is not None},
            )
        except ValueError as error:  # a head count that does not divide the width, a negative length...
            raise UserError(f"cannot build a PixArt from {args.src} with these options: {error}") from None
        note = "re-parameterised from DiT (adaLN-single tables matched at t=500; cross-attention fresh)"
    else:
        given = [name for name, value in dit_options.items() if value is not None]
        if given:  # they would be ignored: the file says its architecture (or --config does)
            raise UserError(f"{', '.join(given)} apply to a DiT checkpoint; {args.src} holds {fmt} weights")
        # checked: a --config that the tensors contradict wrote weights nothing could load
        source = str(args.config) if args.config else ""
        config, state, fmt = read_checked_state(args.src, use_ema=args.ema, fields=fields, config_source=source)
        settings = training_checkpoint_settings(args.src)
        note = f"read {fmt} weights"
        if settings is not None:  # its keys are the official layout, but it is no official file
            which = "EMA" if args.ema else "raw (--ema for the EMA)"
            note = f"read the {which} weights of a pixart train checkpoint (step {settings.get('step')})"
    recorded = sampling_record(args.src)  # how the weights sample: kept in every layout, for pixart
    # never replacing: check_out refused an existing --out, and another job may have written it since
    save_transformer(state, args.out, to=args.to, config=config, metadata=recorded, replace=False)
    sampling = json.loads(recorded[SAMPLING_METADATA]) if recorded else {}
    if args.to != "pixart" and sampling.get("objective", "iddpm") != "iddpm":
        where = {"official": "its 'sampling' entry", "diffusers": f"{SAMPLING_FILE} in it"}[args.to]
        reader = {"official": "the official code", "diffusers": "diffusers' pipeline"}[args.to]
        print(
            f"warning: {args.src} was trained with the {sampling['objective']} objective (flow shift "
            f"{sampling.get('flow_shift')}): pixart generate reads that from {where}, but {reader} knows only "
            "eps models and would sample it as one",
            file=sys.stderr,
        )
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


def check_num_heads(path: Path, stored: DiTConfig | None, num_heads: int | None) -> None:
    """--num-heads says what a DiT's width cannot; one that differs from a head count the file stores would
    split the same attention weights otherwise (another model), so it is refused, as --config is for PixArt."""
    from pixart.cli.main import UserError

    if stored is not None and num_heads not in (None, stored.num_heads):
        raise UserError(
            f"--num-heads {num_heads} differs from the {stored.num_heads} heads {path} stores: drop --num-heads, "
            "the file says its own"
        )


def read_config_fields(path: Path, config_class: type) -> dict[str, Any]:
    """--config FILE: a JSON object of some of the class's fields (the rest are read from the weights; their
    types and values are checked with them); a file that is not one, or an unknown field, is a one-line error."""
    import dataclasses

    from pixart.cli.main import UserError
    from pixart.config import strict_json, suggest_key

    try:
        data = strict_json(path.read_text())
    except OSError as error:
        # JSON given inline, as the help's example reads: the file it is not, and how to pass it
        inline = (
            " (--config takes a JSON file, not JSON itself: write it to a file)"
            if str(path).lstrip()[:1] == "{"
            else ""
        )
        raise UserError(f"--config {path}: {error.strerror or error}{inline}") from None
    except ValueError as error:  # not JSON (or not UTF-8), or a key given twice
        raise UserError(f"--config {path}: {error}") from None
    if not isinstance(data, dict):
        raise UserError(
            f"--config {path}: expected a JSON object of {config_class.__name__} fields, got {type(data).__name__}"
        )
    known = sorted(field.name for field in dataclasses.fields(config_class))
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"--config {path}: unknown config keys {unknown}{suggest_key(unknown[0], known)}")
    return data


def check_out(args: argparse.Namespace) -> None:
    """--out before anything is read: its suffix fits --to, and it is not there yet (a conversion never
    replaces a file, the source least of all; a diffusers folder may be an empty one)."""
    from pixart.cli.main import UserError
    from pixart.weights.save import check_destination

    out = args.out
    try:  # the name save_transformer would refuse, before the source is read
        check_destination(out, args.to)
    except ValueError as error:
        raise UserError(f"--out {error}") from None
    if out.is_symlink() and not out.exists():  # a dangling link: its name is taken, nothing is behind it
        raise UserError(f"--out {out} is a link to {os.readlink(out)}, which does not exist; choose another --out")
    # As the writer will reach it: "new/../model" names "model" once new/ is made, yet does not exist before
    target = Path(os.path.realpath(out))
    if target.is_dir() and args.to != "diffusers":
        raise UserError(f"--out {out} is a folder; --to {args.to} writes a file: choose another --out")
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        same = target == args.src.resolve()
        what = "is the source itself" if same else "already exists"
        raise UserError(f"--out {out} {what}; choose another --out (a conversion never replaces a file)")

"""`pixart prepare INPUT --out DIR`: extract VAE posteriors and text features into a feature dataset.

INPUT is an image folder with caption sidecars, a JSONL/CSV manifest, or WebDataset tars (see
pixart.data.sources for the conventions). Resumable: rerun the same command after an interruption.
Parallel: run it with `--shard 0/2` and `--shard 1/2` (or under torchrun) into the same --out.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from pixart.data.buckets import OFFICIAL_RESOLUTIONS

if TYPE_CHECKING:
    from pixart.encoders import ImageCodec, TextEncoder


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="image folder, .jsonl/.csv manifest, .tar or folder of .tar")
    parser.add_argument("--out", type=Path, required=True, help="the feature dataset folder to write")
    parser.add_argument("--resolution", type=int, choices=OFFICIAL_RESOLUTIONS, required=True, help="base resolution")
    parser.add_argument("--codec", choices=("sd-vae", "pixels"), default="sd-vae", help="image codec (sd-vae)")
    parser.add_argument("--vae", type=Path, help="local SD VAE folder (a vae/ folder or a pipeline folder)")
    from pixart.cli.main import text_encoder_folder

    parser.add_argument(
        "--text-encoder",
        type=text_encoder_folder,
        metavar="DIR",
        help="local T5 or MiniLM folder, or minilm (the bundled one, also used when omitted with --text-encoder-kind "
        "minilm)",
    )
    parser.add_argument(
        "--text-encoder-kind",
        choices=("t5", "minilm"),
        help="the encoder's kind (default: what --text-encoder's config.json names; t5 without --text-encoder)",
    )
    parser.add_argument("--max-length", type=int, help="text tokens kept per caption (default: T5 120, MiniLM 48)")
    parser.add_argument("--fields", default="alt", help="comma-separated caption fields to encode (default: alt)")
    parser.add_argument("--shard-size", type=int, default=1000, help="inputs per shard (default: 1000)")
    parser.add_argument("--shard", default="0/1", metavar="I/N", help="process only shards with index %% N == I")
    parser.add_argument("--upscale-small", action="store_true", help="upscale images smaller than their bucket")
    parser.add_argument("--batch-size", type=int, default=16, help="images (and captions) per encoder call")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="image decoding threads")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_shard(text: str) -> tuple[int, int]:
    from pixart.cli.main import UserError

    try:
        part, parts = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if parts < 1 or not 0 <= part < parts:
        raise UserError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return part, parts


def default_device() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # under torchrun, each rank on its own GPU


def check_model_flags(args: argparse.Namespace) -> None:
    """The model flags, checked before the inputs are listed or --out is made (nothing loads here)."""
    from pixart.cli.main import UserError, check_device
    from pixart.encoders.codecs import check_vae_folder
    from pixart.encoders.text import ENCODERS, check_max_length, minilm_folder, text_encoder_kind

    if args.codec == "sd-vae" and args.vae is None:
        raise UserError("--vae DIR is required with --codec sd-vae (a local AutoencoderKL folder)")
    if args.codec == "pixels" and args.vae is not None:  # it would be ignored: the data would be pixels all the same
        raise UserError(
            f"--vae {args.vae} is for --codec sd-vae; --codec pixels encodes no latents: give one or the other"
        )
    if args.text_encoder_kind is None:  # the folder says which (a MiniLM given as --text-encoder minilm)
        args.text_encoder_kind = "t5" if args.text_encoder is None else text_encoder_kind(args.text_encoder)
    if args.text_encoder_kind == "t5" and args.text_encoder is None:
        raise UserError(
            "--text-encoder DIR is required for T5 (a local T5 folder with its tokenizer); or give "
            "--text-encoder minilm for the bundled MiniLM"
        )
    if args.codec == "sd-vae":  # a wrong folder, said before the inputs are listed and the other model loads
        check_vae_folder(args.vae)
    if args.text_encoder is not None:
        ENCODERS[args.text_encoder_kind].check_folder(args.text_encoder)
    if args.max_length is not None:
        if args.max_length < 1:  # 0 would mean "no limit" to a tokenizer
            raise UserError(f"--max-length must be at least 1, got {args.max_length}")
        try:
            check_max_length(args.text_encoder or minilm_folder(), args.max_length, args.text_encoder_kind)
        except (ValueError, RuntimeError) as error:
            raise UserError(f"--max-length {args.max_length}: {error}") from error
    check_device(args.device)


def load_models(args: argparse.Namespace, device: str) -> tuple[ImageCodec, TextEncoder]:
    from pixart.encoders import load_codec, load_text_encoder

    kwargs = {"device": device} if args.max_length is None else {"device": device, "max_length": args.max_length}
    codec = load_codec(args.codec, args.vae, **({"device": device} if args.codec == "sd-vae" else {}))
    return codec, load_text_encoder(args.text_encoder_kind, args.text_encoder, **kwargs)


def models_as_given(args: argparse.Namespace) -> dict:
    """The codec and text-encoder fields of dataset.json that the flags decide, known without loading them."""
    from pixart.encoders.codecs import vae_folder
    from pixart.encoders.text import DEFAULT_MAX_LENGTH, recorded_path

    kind = args.text_encoder_kind
    codec: dict = {"kind": args.codec}
    if args.codec == "sd-vae":
        codec["path"] = str(vae_folder(args.vae).resolve())
    text = {
        "kind": kind,
        "path": recorded_path(kind, args.text_encoder),
        "max_length": args.max_length or DEFAULT_MAX_LENGTH[kind],
    }
    return {"codec": codec, "text_encoder": text}


def run(args: argparse.Namespace) -> int:
    from pixart.cli.main import UserError, make_out_folder, removed_if_left_empty
    from pixart.data.items import InputError
    from pixart.data.prepare import check_info, check_models_info, pending_shards, prepare, settings_info
    from pixart.data.prepare_options import PrepareError, PrepareOptions, check_fields_present, process_part
    from pixart.data.prepare_report import format_summary, merge_reports
    from pixart.data.shards import DATASET_FILE
    from pixart.data.sources import list_inputs

    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    part, parts = parse_shard(args.shard)
    check_model_flags(args)
    try:
        part, parts = process_part(part, parts)
        options = PrepareOptions(
            resolution=args.resolution,
            fields=fields,
            shard_size=args.shard_size,
            upscale_small=args.upscale_small,
            batch_size=args.batch_size,
            part=part,
            parts=parts,
            workers=args.workers,
            progress=not args.no_progress,
        )
        inputs = list_inputs(args.input)
        check_fields_present(inputs, fields)  # a misspelt field: before any model loads or shard is written
    except (PrepareError, InputError) as error:
        raise UserError(str(error)) from error
    # A run that fails before writing leaves no empty --out behind; not with parts: another part's --out too.
    with removed_if_left_empty(args.out) if parts == 1 else nullcontext():
        make_out_folder(args.out)  # the feature dataset's folder, before any model loads
        print(f"{args.input}: {len(inputs.items)} inputs ({inputs.kind}); this process: shard part {part}/{parts}")
        try:
            check_info(args.out, settings_info(inputs, options))  # another input list or settings: refused now
            check_models_info(args.out, models_as_given(args))  # other models too, finished or not, before loading
        except PrepareError as error:
            raise UserError(str(error)) from error

        if not inputs.items:  # every input was left out while listing: there is nothing to encode
            report = merge_reports(args.out, inputs, options)
            print("no input could be listed, so the models were not loaded")
        elif not pending_shards(inputs, args.out, options) and (args.out / DATASET_FILE).is_file():
            report = merge_reports(args.out, inputs, options)  # nothing to compute: no need to load the models
            print("every shard of this process is done already")
        else:
            codec, text_encoder = load_models(args, args.device or default_device())
            try:
                result = prepare(inputs, args.out, options, codec, text_encoder)
            except PrepareError as error:
                raise UserError(str(error)) from error
            report = result.report
            print(f"wrote {len(result.written)} shards; {len(result.already_done)} were done already")
        print(format_summary(report, args.out))
        if report.get("complete") and not report["samples"]:  # train refuses it: a script must not go on
            print(
                f"pixart prepare: error: no dataset was written; {args.out / 'report.json'} says why", file=sys.stderr
            )
            return 1
        return 0

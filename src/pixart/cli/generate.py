"""`pixart generate PROMPT... --model DIR --out DIR`: images with their settings, reproducible by seed."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pixart.generation_settings import GeneratedImage
    from pixart.outputs import ImageWriter


def register(parser: argparse.ArgumentParser) -> None:
    from pixart.cli.main import add_component_folders

    parser.add_argument("prompts", nargs="*", help="prompts (an empty string is allowed: unconditional)")
    parser.add_argument("--prompts-file", type=Path, help="one prompt per line (blank lines are skipped)")
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="a pixart model folder, a diffusers pipeline folder, a finished pixart train run folder, or "
        "transformer weights (with --vae and --text-encoder)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder (new, or one without the images of an earlier run)"
    )
    add_component_folders(parser)
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--size",
        help="HxW in pixels (8 to 4096 a side); generated at the closest bucket, scaled to cover, then cropped",
    )
    size.add_argument("--aspect", help="H:W, snapped to the closest aspect-ratio bucket")
    parser.add_argument(
        "--sampler",
        help="dpm-solver++, sa-solver, ddim, iddpm, euler, flow-euler, flow-dpm-solver, or folder (a diffusers "
        "pipeline folder's own scheduler); default: the model's",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="sampling steps (default: the model's, else the sampler's: dpm-solver++ 20, sa-solver 25, ddim 50, "
        "iddpm 100, euler 30, flow-euler 30, flow-dpm-solver 20)",
    )
    parser.add_argument(
        "--cfg",
        type=float,
        help="guidance scale (default: the model's, 4.5 for PixArt); below 1, a diffusers model is not guided "
        "(as in diffusers) and other models mix the two branches (as the official sampler: 0 is unconditional)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed + k")
    parser.add_argument(
        "--negative", help="negative prompt (default, or blank: none, i.e. the model's own null caption)"
    )
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt")
    parser.add_argument(
        "--skip",
        type=int,
        default=0,
        help="leave out the run's first N images (prompt-major): the rest of a stopped run, the same images",
    )
    parser.add_argument("--batch", type=int, default=4, help="images per forward batch")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="transformer dtype")
    parser.add_argument("--text-device", help="device for the text encoder (e.g. cpu while the transformer is on cuda)")
    parser.add_argument(
        "--low-memory", action="store_true", help="encode all prompts, free the text encoder, then sample"
    )
    parser.add_argument("--vae-tiling", action="store_true", help="decode large images tile by tile")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer (each block on a GPU): slower first batch, faster after",
    )
    parser.add_argument("--t5-8bit", action="store_true", help="load T5 in 8 bits (needs bitsandbytes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_size(text: str) -> tuple[int, int]:
    from pixart.cli.main import UserError
    from pixart.data.buckets import parse_size as parse

    try:
        return parse(text)
    except ValueError as error:
        raise UserError(f"--size: {error}") from None


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The command line's prompts as given ("" is unconditional), then the file's non-blank lines: a blank
    line is an editing accident far more often than a request for an unconditional image."""
    from pixart.cli.main import UserError
    from pixart.files import text_lines

    prompts = list(args.prompts)  # checked for UTF-8 with the rest of the request (generate.check_request)
    if args.prompts_file:
        try:
            lines = text_lines(args.prompts_file, encoding=None)  # UTF-8, or UTF-16 by its byte-order mark
        except (OSError, UnicodeDecodeError) as error:
            reason = (
                f"not UTF-8 text (byte {error.start}; nor UTF-16 with a byte-order mark): save it as UTF-8"
                if isinstance(error, UnicodeDecodeError)
                else error.strerror or str(error)
            )
            raise UserError(f"--prompts-file {args.prompts_file}: {reason}") from None
        kept = [line for line in lines if line.strip()]
        if len(kept) < len(lines):
            print(f"skipped {len(lines) - len(kept)} blank line(s) of {args.prompts_file}", file=sys.stderr)
        if not kept and not prompts:
            raise UserError(f"--prompts-file {args.prompts_file} holds no prompt (every line is blank)")
        prompts += kept
    if not prompts:
        raise UserError('give at least one prompt ("" for an unconditional image) or --prompts-file')
    return prompts


OUT_LOCK = ".pixart-generate.lock"  # held in --out while a run writes there; removed when it ends


def one_run_in(out: Path) -> contextlib.AbstractContextManager[None]:
    """Hold --out for this run (held_while_writing on OUT_LOCK): two runs started into one folder at once
    both passed the earlier-run check and wrote their images side by side."""
    from pixart.files import held_while_writing

    busy = f"--out {out} is being written by another pixart generate run: give each its own --out"
    return held_while_writing(out / OUT_LOCK, busy)


def prepare_out(out: Path) -> None:
    """Refuse an --out (made and held by now: one_run_in) holding an earlier run's images, which this run
    would overwrite and mix with; before the model loads, so it fails in a second, not after sampling."""
    from pixart.cli.main import UserError
    from pixart.outputs import earlier_outputs

    earlier = earlier_outputs(out)
    if earlier:
        raise UserError(
            f"--out {out} already holds {len(earlier)} file(s) of an earlier run (e.g. {earlier[0].name}); "
            "this run would overwrite some and mix with the rest: choose another --out, or delete them first"
        )


def remake_inputs(args: argparse.Namespace) -> dict:
    """The options beside --model that change the image, so that a sidecar says how to make it again
    (tiled decoding changes pixels near the tiles' seams)."""
    from pixart.modelfolder import as_recorded

    given = {
        "vae": args.vae,
        "text_encoder": args.text_encoder,
        "t5_8bit": args.t5_8bit or None,
        "vae_tiling": args.vae_tiling or None,
    }
    # absolute: a sidecar read from another folder (or the image moved) must still name the same files
    given = {key: value for key, value in given.items() if value is not None}
    return {key: as_recorded(value) if isinstance(value, Path) else value for key, value in given.items()}


def write_as_they_come(batches: Iterator[list[GeneratedImage]], writer: ImageWriter, total: int, skipped: int) -> None:
    """Write each batch before the next is sampled, then the contact sheet: a stop (Ctrl-C) or a failure
    (out of memory at batch 40) kept nothing before, and the empty --out was removed. `total`: the images this
    run makes after the `skipped` first of its request; a stop says which --skip makes the rest."""
    from pixart.cli.main import UserError

    try:
        for batch in batches:
            for result in batch:
                writer.write(result)
        writer.finish()
    except FileExistsError as error:  # another process writing the same names into --out
        raise UserError(f"--out {writer.out_dir}: {error}; give each run its own --out") from None
    except BaseException:
        if writer.paths:
            with contextlib.suppress(Exception):  # the sheet of what was made, if the cause lets it be written
                writer.finish()
            kept = len(writer.paths)
            left = f"--skip {skipped + kept}"
            rest = f"; make the other {total - kept} with the same command and {left} into another --out"
            print(
                f"kept the {kept} of {total} image(s) made before this stop in {writer.out_dir}"
                + (rest if kept < total else ""),  # every image made: the stop came at the contact sheet
                file=sys.stderr,
            )
        raise


def run(args: argparse.Namespace) -> int:
    import torch

    from pixart.cli.main import UserError, check_device, make_out_folder, removed_if_left_empty
    from pixart.generate import TextToImage
    from pixart.generation_settings import GenerationError, Settings, check_request
    from pixart.modelfolder import folder_kind
    from pixart.outputs import CONTACT_SHEET, SHEET_IMAGES, ImageWriter

    prompts = read_prompts(args)
    height, width = parse_size(args.size) if args.size else (None, None)
    settings = Settings(
        negative=args.negative,
        height=height,
        width=width,
        aspect=args.aspect,
        sampler=args.sampler,
        steps=args.steps,
        cfg_scale=args.cfg,
    )
    try:
        check_request(
            settings,
            args.num_images,
            args.batch,
            seed=args.seed,
            total_images=len(prompts) * args.num_images,
            prompts=prompts,
            skip=args.skip,
        )
    except GenerationError as error:
        raise UserError(str(error)) from error
    check_device(args.device)
    check_device(args.text_device, "--text-device")
    folder_kind(args.model)  # a missing model, before --out is made
    with removed_if_left_empty(args.out), contextlib.ExitStack() as held:  # a failed run leaves no empty --out
        make_out_folder(args.out)  # now: a bad --out fails in a second, not after the model loads
        held.enter_context(one_run_in(args.out))
        prepare_out(args.out)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, args.dtype) if args.dtype else None
        started = time.time()
        writer = ImageWriter(
            args.out, model=os.path.abspath(args.model), extra=remake_inputs(args), number_from=args.skip
        )
        try:
            pipe = TextToImage.from_path(
                args.model,
                vae=args.vae,
                text_encoder=args.text_encoder,
                device=device,
                dtype=dtype,
                text_device=args.text_device,
                vae_tiling=args.vae_tiling,
                load_in_8bit=args.t5_8bit,
            )
            if args.compile:
                pipe.compile()
            batches = pipe.generate_batches(
                prompts,
                settings,
                seed=args.seed,
                num_images=args.num_images,
                batch_size=args.batch,
                low_memory=args.low_memory,
                progress=not args.no_progress,
                skip=args.skip,
            )
            write_as_they_come(batches, writer, len(prompts) * args.num_images - args.skip, args.skip)
        except GenerationError as error:
            raise UserError(str(error)) from error
        paths = writer.paths
        assert writer.first is not None and writer.last is not None  # check_request asks for at least one
        first = writer.first.settings
        print(
            f"wrote {len(paths)} image(s) to {args.out} in {time.time() - started:.1f}s "
            f"({first['sampler']}, {first['steps']} steps, cfg {first['cfg_scale']}, "
            f"{first['size'][0]}x{first['size'][1]}, "
            f"seeds {writer.first.seed}..{writer.last.seed})"
        )
        if len(paths) > 1:
            part = f" (the first {SHEET_IMAGES} of {len(paths)} images)" if len(paths) > SHEET_IMAGES else ""
            print(f"contact sheet{part}: {args.out / CONTACT_SHEET}")
        print(json.dumps([str(p) for p in paths]) if len(paths) <= 4 else f"  {paths[0]} ... {paths[-1]}")
        return 0

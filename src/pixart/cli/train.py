"""`pixart train --recipe NAME [--set key=value ...] --run-dir DIR`; the same under torchrun."""

from __future__ import annotations

import argparse
import errno
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pixart.train.config import TrainConfig


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipe",
        required=True,
        help="tiny, stage1-class-256, stage2-t2i-256, stage3-aesthetic-512, stage3-aesthetic-1024",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-4 --set data.root=features/ (repeatable)",
    )
    parser.add_argument("--run-dir", type=Path, help="run folder (rerunning the same command resumes it)")
    parser.add_argument("--steps", type=int, help="total optimizer steps (overrides the recipe)")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (overrides the recipe)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and world layout, then exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def resolve(args: argparse.Namespace) -> TrainConfig:
    from pixart import config as config_io
    from pixart.recipes import get_recipe

    overrides = list(args.overrides)
    for key in FLAG_KEYS:
        if (value := getattr(args, key)) is not None:
            overrides.append(f"{key}={value}")
    return config_io.apply_overrides(get_recipe(args.recipe), overrides)


FLAG_KEYS = ("steps", "checkpoint_every")  # config keys with a flag of their own, which wins over --set


def overruled_sets(args: argparse.Namespace) -> list[str]:
    """What to say of a --set the flag of the same key overrules: `--steps 5 --set steps=7` trained 5 steps
    without a word (review)."""
    said = []
    for key in FLAG_KEYS:
        value = getattr(args, key)
        given = [item.partition("=")[2].strip() for item in args.overrides if item.partition("=")[0].strip() == key]
        if value is not None and given and given[-1] != str(value):
            said.append(f"--{key.replace('_', '-')} {value} overrules --set {key}={given[-1]}")
    return said


def run(args: argparse.Namespace) -> int:
    import math
    import os
    import signal

    from pixart.cli.main import UserError, check_device
    from pixart.config import ConfigError

    try:
        config = resolve(args)
    except (ConfigError, ValueError) as error:
        raise UserError(str(error)) from error
    from pixart.train.checks import unread_overrides

    if int(os.environ.get("RANK", "0")) == 0:
        for warning in [*overruled_sets(args), *unread_overrides(config, args.overrides)]:
            print(f"[pixart train] warning: {warning}", flush=True)
    check_device(args.device)  # a dry run refuses what the run would
    if args.dry_run:
        return dry_run(config, args.run_dir)
    if args.run_dir is None:
        raise UserError("--run-dir is required (except with --dry-run)")
    from contextlib import nullcontext

    from pixart.cli.main import make_out_folder, removed_if_left_empty
    from pixart.train.errors import TrainingError
    from pixart.train.loop import train

    main_rank = int(os.environ.get("RANK", "0")) == 0  # which makes the folder (two removing it would race)
    try:
        with removed_if_left_empty(args.run_dir) if main_rank else nullcontext():  # a refused run leaves none
            if main_rank and not args.run_dir.is_file():  # a file: check_start says what a run folder may be
                make_out_folder(args.run_dir, "--run-dir")  # /proc/x, a file on the way: one line naming the flag
            summary = train(config, args.run_dir, device=args.device, progress=not args.no_progress)
    except TrainingError as error:
        raise UserError(str(error)) from error
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise UserError(disk_full(args.run_dir, error.filename, config.keep_checkpoints)) from error
    except RuntimeError as error:
        if not another_process_left(error):
            raise
        # gloo's first sentence, without the source file it names: "Read error [host]:port: Connection reset by peer"
        said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        first = re.sub(r"^\[[^\]]*\.cc:\d+\]\s*", "", said).split(". ")[0][:200]
        raise UserError(
            f"another process of this job stopped or stalled (its output may say why), and this one could not go on "
            f"without it ({first}); rerun the same command to continue from the last checkpoint"
        ) from error
    if main_rank:  # strict JSON: a run that trained no step has no loss (NaN), said as null
        print(json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()}))
    if summary["status"] == "interrupted":  # not 0: a script's next step (convert its final weights) must not run
        return 128 + signal.Signals[summary["signal"]].value  # as a shell reports a command a signal ended
    return 0


def disk_full(run_dir: Path, unwritten: str | None, keep: int) -> str:
    """What a run that filled its disk says: the file it could not write (its temporary gone, older checkpoints
    kept), and the checkpoint the same command resumes from once there is room (review: it was torch's
    "enforce fail at inline_container.cc ... unexpected pos")."""
    from pixart.train.checkpoint import list_checkpoints

    saved = list_checkpoints(run_dir)
    resume = f"from {saved[-1][1]}, the last complete checkpoint" if saved else "from the start (no checkpoint saved)"
    # A save prunes once its checkpoint is written, so it needs room for one more than those on disk: a lower
    # keep_checkpoints frees nothing before it (one checkpoint kept was told to keep 2, and failed again).
    if len(saved) > 1:
        room = (
            f" (the checkpoints before {saved[-1][1].name} can go: the run resumes from it; --set keep_checkpoints=N "
            f"keeps fewer from then on, {keep} now, and a save needs room for N + 1)"
        )
    else:
        room = f" (a save needs room for one checkpoint more than the {len(saved)} on disk)"
    return (
        f"the disk is full: {unwritten or run_dir} could not be written (nothing half-written was kept); free some "
        f"space{room}, and rerun the same command to continue {resume}"
    )


# What gloo says when the process at the other end of a collective has gone (killed, crashed) or has not come
# within collective_timeout (stalled)
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Timed out waiting")


def another_process_left(error: RuntimeError) -> bool:
    """Whether `error` is a collective failing because another process of a torchrun job ended or stalled: the others
    printed a 20-line traceback through DDP's internals, which said nothing a user could act on (review)."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    return isinstance(error, dist.DistError) or any(words in str(error) for words in PEER_LOST)


def quiet(*args: object, **kwargs: object) -> None:
    """print's stand-in on the processes that do not show a dry run."""


def dry_run(config: TrainConfig, run_dir: Path | None = None) -> int:
    """Print the resolved config, the world and the learning rate, then make the checks a real run makes
    before its folder (a dry run that passes must start): refused there, refused here, after the config is
    shown. A recipe shown without its inputs (no data.root; its init_from not made yet) is told what a run
    needs, not refused. With `run_dir`, that folder's checks too (a run already past --steps, another
    config, another process count), reading it only."""
    import os

    from pixart import config as config_io
    from pixart.cli.main import UserError
    from pixart.train.checkpoint import list_checkpoints
    from pixart.train.checks import check_preview_steps, check_run_config, check_start
    from pixart.train.config import effective_lr
    from pixart.train.data import check_given_data
    from pixart.train.errors import TrainingError
    from pixart.train.init import resolve_init_path

    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_rank = config.data.batch_size * config.optim.grad_accum
    # Under torchrun every process checks, and the main one shows: the config was printed once a process
    show = print if int(os.environ.get("RANK", "0")) == 0 else quiet
    show(config_io.to_json(config), end="")
    show(
        f"world: {world} process(es) (torchrun sets WORLD_SIZE), {config.parallel}; batch {config.data.batch_size} "
        f"per rank x {config.optim.grad_accum} accumulation = {per_rank} per rank, {per_rank * world} global; "
        f"learning rate {effective_lr(config.optim, per_rank * world):.3g}"
        + (f" (optim.lr x sqrt({per_rank * world} / 256): auto_lr)" if config.optim.auto_lr else "")
    )
    shown_only = not (config.data.root or config.data.synthetic)
    warnings = ["no data.root: a run needs one (a folder made by pixart prepare)"] if shown_only else []
    try:
        check_preview_steps(config)
        if run_dir is not None:  # what the folder holds: check_start's refusals and a resume's (it writes nothing)
            warnings += check_start(config, run_dir) if not shown_only else []
            check_run_config(config, run_dir, world)
        elif not shown_only:
            warnings += check_given_data(config)
        resuming = run_dir is not None and bool(list_checkpoints(run_dir))
        if config.init_from and not resuming:  # a resume never reads it (check_start skips it too)
            resolve_init_path(config.init_from)
    except FileNotFoundError as error:  # init_from: the previous stage not trained (yet)
        if not shown_only:
            raise UserError(str(error)) from error
        warnings.append(f"{error}; a run needs it")
    except TrainingError as error:
        raise UserError(str(error)) from error
    for warning in warnings:
        show(f"warning: {warning}")
    return 0

"""`pixart demo [--out DIR] [--minutes M] [--quick]`: the embedded default, end to end on a CPU."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

DEMO_DIR = Path("runs/demo")  # `pixart serve` without --model looks for the demo's model here too
QUICK_DIR = Path("runs/demo-quick")  # a smoke run keeps out of the full run's folder


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output folder (default {DEMO_DIR}; {QUICK_DIR} with --quick)"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="wall-clock budget on a 2-core CPU, 5 to 600 (default 10; not with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of every step (about a minute)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from pixart.cli.main import UserError, folder_problem, make_out_folder, removed_if_left_empty
    from pixart.demo import run_demo
    from pixart.demo_folder import DemoError, DemoInterrupted
    from pixart.files import cache_dir
    from pixart.train.errors import TrainingError

    if args.quick and args.minutes is not None:
        raise UserError("--minutes sets the full demo's budget; --quick is a fixed smoke run: give one of them")
    if args.out is None:
        args.out = QUICK_DIR if args.quick else DEMO_DIR
    if args.quick:  # the smoke run stays as light as on the 2-core machine it is sized for
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    started = time.time()
    try:
        minutes = 10.0 if args.minutes is None else args.minutes
        with removed_if_left_empty(args.out):  # a demo refused before it starts leaves no folder behind
            make_out_folder(args.out)  # a file in the way: one line naming --out
            if not args.quick and (problem := folder_problem(cache_dir())) is not None:  # --quick's is in --out
                # said after the codec had trained, as "Not a directory: PATH"
                raise UserError(
                    f"cannot use the cache folder {cache_dir()} ($PIXART_CACHE, else ~/.cache/pixart): "
                    f"{problem[1] or 'a file is in the way'}; set PIXART_CACHE to a folder you can write"
                )
            report = run_demo(args.out, minutes=minutes, quick=args.quick, progress=not args.no_progress)
    except DemoInterrupted as error:  # Ctrl-C or SIGTERM, after the stage saved its checkpoint
        print(f"pixart demo: {error}", file=sys.stderr)
        return 128 + signal.Signals[error.signal].value  # as pixart train and a shell report it (130 for Ctrl-C)
    except DemoError as error:
        raise UserError(str(error)) from error
    except TrainingError as error:  # its advice names pixart train's --run-dir; here the folder is --out
        raise UserError(f"{error} (pixart demo: choose another --out, or delete {args.out})") from error
    probe = report["probe"]
    scores = (
        "A quick smoke run: every part ran, too briefly trained to score (pixart demo trains it in full)."
        if args.quick
        else f"Probe on generated images: colour {probe['color']:.2f}, shape {probe['shape']:.2f}, size "
        f"{probe['size']:.2f}, position {probe['position']:.2f}, two-object binding {probe['binding']:.2f}."
    )
    print(f"\npixart demo finished in {time.time() - started:.0f}s. {scores}")
    print(f"  {args.out}/samples.png  {args.out}/loss.png  {args.out}/report.md  {args.out}/report.json")
    print(
        f'  try: pixart generate "a large red circle in the centre, on a grey background" --model {args.out}/model '
        f"--out {args.out}/generated-centre    or: pixart serve --model {args.out}/model"
    )
    return 0

"""Entry point: builds the argument parser from the subcommand modules and dispatches.

Each subcommand module exposes `register(subparsers)`, which adds its parser and sets `run` as the
handler. Errors a user can fix (missing files, bad formats, bad settings, a path the system refuses) are
printed as one line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from pixart.quiet import silenced_library_progress_bars

# Subcommand name -> module under pixart.cli; imported lazily so `pixart --help` stays fast.
COMMANDS = {
    "convert": "Convert transformer weights between pixart, official and diffusers layouts (or from DiT).",
    "info": "Show the format, architecture and parameter count of a weights file or folder.",
    "generate": "Generate images from prompts with a pixart, diffusers or official model.",
    "prepare": "Extract VAE latents and text features from images and captions into a feature dataset.",
    "caption": "Re-caption images with a local LLaVA model, or (--stats) compare caption sets.",
    "demo": "Train the embedded default on the shapes world (all three stages) and score it, on a CPU.",
    "train": "Train a recipe (the paper's stages, or tiny) on one CPU, one GPU, or many under torchrun.",
    "serve": "Serve a web app (Gradio) that generates images with a model, on localhost by default.",
    "eval": "Score a model: shapes-world prompt following (probe), or FID and CLIP score on your prompts and images.",
}


class UserError(Exception):
    """An error caused by the user's input, printed without a traceback."""


def make_out_folder(out: Path, what: str = "--out") -> None:
    """Create an output folder and write a scratch file in it before any model loads, so a bad path (a file
    on the way, a read-only disk, /proc) fails in a second with one line, not once the images are made."""
    if (problem := folder_problem(out)) is not None:
        kind, reason = problem
        raise UserError(
            {
                "file": f"{what} {out} is a file, not a folder: choose a folder (it is created if missing)",
                "create": f"cannot create the folder {what} {out}: {reason}",
                "write": f"cannot write in the folder {what} {out}: {reason}",
            }[kind]
        )


def check_writable_folder(folder: Path, flag: str, value: Path) -> None:
    """Create `folder`, where `flag value` writes, and write a scratch file in it: a path the system refuses
    (a file on the way, a read-only disk, /proc) fails now, not after the work whose result goes there."""
    if (problem := folder_problem(folder)) is not None:
        kind, reason = problem
        said = f"{flag} {value}"
        raise UserError(
            {
                "file": f"{said}: {folder} is a file, not a folder; choose another {flag}",
                "create": f"{said}: cannot create {folder} ({reason}); choose another {flag}",
                "write": f"{said}: cannot write in {folder} ({reason}); choose another {flag}",
            }[kind]
        )


def folder_problem(folder: Path) -> tuple[str, str] | None:
    """Create `folder` and write a scratch file in it (a read-only disk, no permission: only a write tells).
    What stopped it, as (kind, the system's reason): kind "file" (a file on the way), "create" or "write"."""
    if folder.exists() and not folder.is_dir():
        return "file", ""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        return ("write" if folder.is_dir() else "create"), str(error.strerror or error)
    return None


def add_component_folders(parser: argparse.ArgumentParser) -> None:
    """--vae and --text-encoder: the folders that bare transformer weights need (generate, eval, serve)."""
    parser.add_argument(
        "--vae",
        type=Path,
        metavar="DIR",
        help="SD VAE folder, the shapes codec's file, or pixels (a model trained on pixels: no codec) (for bare "
        "transformer weights; replaces a run's)",
    )
    parser.add_argument(
        "--text-encoder",
        type=text_encoder_folder,
        metavar="DIR",
        help="T5 or MiniLM folder with its tokenizer, a pipeline's text_encoder/, or minilm (the bundled one) "
        "(for bare transformer weights or a model folder that names none; replaces a run's)",
    )


def text_encoder_folder(text: str) -> Path:
    """--text-encoder's folder: `minilm` names the bundled MiniLM (as caption --stats --tokenizer does), unless
    a folder of that name is here."""
    if text != "minilm":
        return Path(text)  # torch is not imported to read a path
    from pixart.encoders.text import named_text_encoder

    return named_text_encoder(text)


def check_device(text: str | None, what: str = "--device") -> None:
    """A --device value this machine can run on, checked before anything loads (None: the default)."""
    from pixart.devices import device_problem

    problem = device_problem(text)
    if problem is not None:
        raise UserError(f"{what} {problem}")


def build_parser() -> argparse.ArgumentParser:
    # No abbreviated options: `--prompt "a cat"` was taken as --prompts-file and failed on a file named "a cat"
    parser = argparse.ArgumentParser(
        prog="pixart", description="PixArt-alpha: train, generate, convert.", allow_abbrev=False
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"pixart.cli.{name}")
        sub = subparsers.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        module.register(sub)
        sub.set_defaults(handler=module.run)
    return parser


@contextmanager
def removed_if_left_empty(folder: Path) -> Iterator[None]:
    """Made early so that a bad path fails at once (make_out_folder), `folder` is removed again when the
    block fails before anything was written in it, unless it existed before: no empty folder is left behind."""
    made = [] if folder.exists() else [folder, *(p for p in folder.parents if not p.exists())]  # leaf first
    try:
        yield
    except BaseException:
        for path in made:  # the folders this call may make, as long as they hold nothing
            if not path.is_dir() or any(path.iterdir()):
                break
            path.rmdir()
        raise


# What a rerun does after Ctrl-C, for the commands that keep their work as they go
AFTER_AN_INTERRUPT = {
    "prepare": "; rerun the same command to continue (finished shards are kept)",
    "caption": "; rerun the same command to continue (the captions written are kept)",
    "train": "; rerun the same command to continue from the last checkpoint",
    "demo": "; rerun the same command to continue",
}

# What to ask for instead when a command runs out of GPU memory
LESS_MEMORY = {
    "generate": "a smaller --batch (1 at the largest sizes), a smaller size, or --vae-tiling",
    "eval": "a smaller --batch",
    "caption": "a smaller --batch-size",
    "prepare": "a smaller --batch-size",
    "serve": "fewer images or a smaller size",
    "train": (
        "--set gradient_checkpointing=true (a change a resume takes) and rerun the same command to continue "
        "from the last checkpoint; or a smaller data.batch_size, or more GPUs with parallel=fsdp, in a new --run-dir"
    ),
    "demo": "run it on the CPU, as it is made for: CUDA_VISIBLE_DEVICES= pixart demo ...",
}
# On the CPU: the same, but for what only a GPU has
LESS_CPU_MEMORY = {
    **LESS_MEMORY,
    "train": (
        "--set gradient_checkpointing=true (a change a resume takes) and rerun the same command to continue "
        "from the last checkpoint; or a smaller data.batch_size or model, in a new --run-dir"
    ),
    "demo": "close other programs (the demo is made for a laptop's memory), or pixart demo --quick",
}


# The optional packages (pyproject's extras) and the extra that installs each
EXTRA_OF = {
    "diffusers": "diffusers",
    "sentencepiece": "diffusers",
    "ftfy": "diffusers",
    "bs4": "diffusers",
    "accelerate": "diffusers",
    "bitsandbytes": "t5-8bit",
    "gradio": "app",
}


# Where the CPU's allocator says so (torch raises a plain RuntimeError there): a request beyond the machine's
# memory, on the machine this project runs first on, was a traceback
CPU_ALLOCATOR_FAILED = "DefaultCPUAllocator: can't allocate memory"


def out_of_memory(error: BaseException) -> str | None:
    """ "GPU" for torch's CUDA out-of-memory error, "CPU" for the CPU allocator's (and Python's MemoryError), None
    for anything else (torch is imported only once one is raised)."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return "GPU"
    if isinstance(error, MemoryError) or CPU_ALLOCATOR_FAILED in str(error):
        return "CPU"
    return None


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not valid UTF-8 holds lone surrogates, which a strict UTF-8 stream refuses:
        # printing one in a summary crashed a command after all its work was done. Only a strict stream:
        # under a C locale Python already writes such a name back as its own bytes (surrogateescape).
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    from pixart.files import Busy
    from pixart.weights import WeightsError

    quiet = silenced_library_progress_bars() if getattr(args, "no_progress", False) else nullcontext()
    try:
        with quiet:
            result = args.handler(args)
    except (UserError, FileNotFoundError, WeightsError, Busy) as error:
        print(f"pixart {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C where a command does not catch it itself: one line, not a traceback
        print(f"\npixart {args.command}: interrupted{AFTER_AN_INTERRUPT.get(args.command, '')}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a command Ctrl-C ended
    except BrokenPipeError:  # the reader left first (`pixart info X | head -3`): quiet, as other tools are
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's last flush would fail again
        return 1
    except OSError as error:  # a path the user gave: a folder where a file goes, no permission, a full disk
        where = f": {error.filename}" if error.filename else ""
        print(f"pixart {args.command}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:  # an optional package not installed: which, and the command that adds it
        package = error.name or ""
        if package not in EXTRA_OF:  # a submodule ("diffusers.x") of an installed package is a version problem
            raise
        print(
            f"pixart {args.command}: error: this needs the package {package!r}, which is not installed: "
            f"pip install 'pixart[{EXTRA_OF[package]}]' (./setup.sh installs every extra)",
            file=sys.stderr,
        )
        return 2
    except (RuntimeError, MemoryError) as error:  # out of memory: a request too large, not a bug (a traceback)
        if (memory := out_of_memory(error)) is None:
            raise
        said = str(error).strip()
        first = said.splitlines()[0][:300] if said else f"{type(error).__name__}"
        gpu = memory == "GPU"
        hint = (LESS_MEMORY if gpu else LESS_CPU_MEMORY).get(args.command, "a smaller batch or size")
        what = "GPU memory" if gpu else "memory"
        print(f"pixart {args.command}: error: out of {what} ({first}); ask for less: {hint}", file=sys.stderr)
        return 2
    return int(result or 0)

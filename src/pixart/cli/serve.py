"""`pixart serve [--model DIR]`: the web app (pixart.app) over one model loaded at startup.

It binds to 127.0.0.1 unless --host says otherwise, and runs one request at a time (gradio's
queue, concurrency 1): a second user waits instead of doubling the memory, and past QUEUE_SIZE waiting
requests a new one is told the queue is full (an open page could queue requests without end). Without --model it serves
the embedded demo model, training it first with `pixart demo` when it is not there yet.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from pixart.cli.demo import DEMO_DIR

DEMO_MODEL = DEMO_DIR / "model"  # where `pixart demo` leaves its model
DEFAULT_PORT = 7860
DEMO_NOTICE = "no model given; training the embedded demo model first with `pixart demo` (about 10 minutes)..."

QUEUE_SIZE = 16  # requests waiting behind the one generating; gradio turns the next away


def register(parser: argparse.ArgumentParser) -> None:
    from pixart.cli.main import add_component_folders

    parser.add_argument(
        "--model",
        type=Path,
        help=f"a pixart model folder, a diffusers pipeline folder, a finished pixart train run folder, or "
        f"transformer weights (with --vae and --text-encoder); default: the embedded demo model in {DEMO_MODEL}, "
        "trained first if missing",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 serves the whole network)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on, 1-65535 (default {DEFAULT_PORT})"
    )
    parser.add_argument("--out", type=Path, help="folder to keep the images in (default: a temporary one)")
    add_component_folders(parser)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def demo_model() -> Path:
    """The demo model's folder, trained by `pixart demo` first when it is not there yet."""
    if (DEMO_MODEL / "model.json").is_file():
        return DEMO_MODEL
    print(DEMO_NOTICE, flush=True)
    from pixart.cli.main import UserError, main  # looked up now: `demo` is a sibling subcommand

    status = main(["demo"])
    if status == 130:  # stopped (Ctrl-C): the demo said so, and that the same command (this one) continues it
        raise SystemExit(status)
    if status or not (DEMO_MODEL / "model.json").is_file():
        raise UserError(f"`pixart demo` did not leave a model in {DEMO_MODEL}; pass --model DIR instead")
    return DEMO_MODEL


LOCAL_HOSTS = "use 127.0.0.1 (this machine only), 0.0.0.0 (every network) or one of this machine's addresses"


def address_problem(host: str, port: int) -> str | None:
    """What stops a server listening on host:port, found by binding a socket there as uvicorn will, or None."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError):
        return f"--host {host} is not an address or a name this machine can resolve: {LOCAL_HOSTS}"
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
        try:
            sock.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is in use (another server?): choose another --port"
            if error.errno == errno.EADDRNOTAVAIL:
                return f"--host {host} is not an address of this machine: {LOCAL_HOSTS}"
            if error.errno == errno.EACCES:
                return f"--port {port} needs administrator rights (a port below 1024): choose one above 1023"
            return f"cannot listen on {host}:{port} ({error.strerror or error}): choose another --host or --port"
    return None


def check_out_holds_only_requests(out: Path) -> None:
    """The page serves every file under --out to whoever reaches it: a folder holding anything besides the
    numbered request folders it writes (a home folder, a project with its keys) is refused."""
    from pixart.cli.main import UserError
    from pixart.outputs import foreign_files, is_browser_metadata, is_numbered_folder, is_request_folder

    if not out.is_dir():
        return

    def named(path: Path) -> str:  # a request folder's name, with the first file in it that is not an image's
        return f"{path.name} (holding {foreign_files(path)[0]})" if is_numbered_folder(path) else path.name

    foreign = sorted(named(p) for p in out.iterdir() if not is_request_folder(p) and not is_browser_metadata(p))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(
            f"--out {out} holds {shown}, which the page would serve to whoever reaches it: give an empty folder "
            "(or a new one), or one only pixart serve writes to"
        )


def check_address(host: str, port: int) -> None:
    """--host and --port, checked before the model loads or the demo trains (a bad one failed after)."""
    from pixart.cli.main import UserError

    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a TCP port: choose one in 1-65535 (default {DEFAULT_PORT})")
    if ":" in host:  # gradio builds http://{host}:{port} without brackets and fails once the model has loaded
        raise UserError(f"--host {host}: IPv6 addresses are not served; {LOCAL_HOSTS}")
    problem = address_problem(host, port)
    if problem:
        raise UserError(problem)


def run(args: argparse.Namespace) -> int:
    # No usage reports or version checks: the server may have no network, and the page must not wait on it.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    from pixart.cli.main import UserError, check_device, make_out_folder, removed_if_left_empty
    from pixart.generate import TextToImage
    from pixart.generation_settings import GenerationError
    from pixart.modelfolder import as_recorded

    check_device(args.device)
    check_address(args.host, args.port)
    if args.out is not None:
        check_out_holds_only_requests(args.out)

    try:
        from pixart.app import build_app
    except ImportError as error:
        raise UserError(f"pixart serve needs gradio ({error}): pip install 'pixart[app]'") from error

    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="pixart-serve-"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
    with removed_if_left_empty(out):  # a model that fails to load leaves no empty --out behind
        make_out_folder(out)  # before the model loads, or the demo trains
        model = args.model or demo_model()
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:  # what generate says in one line (a text encoder of the wrong width, say) is said so here too
            pipe = TextToImage.from_path(model, vae=args.vae, text_encoder=args.text_encoder, device=device)
            pipe.text_encoder  # noqa: B018 -- load it now, so the first request is as fast as the others
            # what pixart generate records besides the model, so an image from the page can be made again
            given = (("vae", args.vae), ("text_encoder", args.text_encoder))
            extra = {key: as_recorded(path) for key, path in given if path}  # as pixart generate records them
            page = build_app(pipe, out, model_name=os.path.abspath(model), extra=extra or None)
        except GenerationError as error:
            raise UserError(str(error)) from error
    page.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    # SIGTERM (kill, systemd, docker stop) takes Ctrl+C's way out: gradio closes the server and the exit
    # handlers run, removing the temporary --out; by default it ended the process on the spot.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # The address to open, said here: gradio's own lines (quiet) add a share=True hint that a command line user
    # cannot act on
    everywhere = args.host in ("0.0.0.0", "")
    shown = "localhost" if everywhere else args.host
    kept = "" if args.out else " (removed when it stops: --out DIR keeps them)"
    print(
        f"loaded {model}; serving on http://{shown}:{args.port}/ (Ctrl+C stops it); images in {out}{kept}", flush=True
    )
    if everywhere:
        print(
            "note: --host 0.0.0.0 serves every network, with no password: anyone who reaches it can use it", flush=True
        )
    try:
        page.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(out.resolve())], quiet=True)
    except KeyboardInterrupt:  # a stop during gradio's start-up checks, before its own loop catches it
        page.close()
    except OSError as error:  # taken since the check; gradio's message would advise GRADIO_SERVER_PORT
        fallback = f"cannot serve on {args.host}:{args.port}: choose another --port, or check --host"
        raise UserError(address_problem(args.host, args.port) or fallback) from error
    from pixart.app import generating

    if generating():
        # Stopped while a request is being made: the interpreter's exit would tear torch down under the
        # worker thread (SIGABRT, "terminate called without an active exception"). Its finished batches are
        # written (each file whole or not at all); the one being sampled is abandoned.
        print("stopped during a request; its finished batches are kept, the rest abandoned", flush=True)
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
        sys.stderr.flush()
        os._exit(0)
    return 0

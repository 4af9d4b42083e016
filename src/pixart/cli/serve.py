"""`pixart serve [--model DIR]`: the web app (pixart.app) over one model loaded at startup.

It binds to 127.0.0.1 unless --host says otherwise, and runs one request at a time (gradio's
queue, concurrency 1): a second user waits instead of doubling the memory. Without --model it serves
the embedded demo model, training it first with `pixart demo` when it is not there yet.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile
from pathlib import Path

from pixart.cli.demo import DEMO_DIR

DEMO_MODEL = DEMO_DIR / "model"  # where `pixart demo` leaves its model
DEMO_NOTICE = "no model given; training the embedded demo model first with `pixart demo` (about 10 minutes)..."


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        help=f"a pixart model folder, a diffusers pipeline folder, or transformer weights (with --vae and "
        f"--text-encoder); default: the embedded demo model in {DEMO_MODEL}, trained first if missing",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 serves the whole network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--out", type=Path, help="folder to keep the images in (default: a temporary one)")
    parser.add_argument("--vae", type=Path, help="SD VAE folder (for bare transformer weights)")
    parser.add_argument(
        "--text-encoder",
        type=Path,
        help="T5 folder with its tokenizer (for bare transformer weights, or a model folder that names none)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def demo_model() -> Path:
    """The demo model's folder, trained by `pixart demo` first when it is not there yet."""
    if (DEMO_MODEL / "model.json").is_file():
        return DEMO_MODEL
    print(DEMO_NOTICE, flush=True)
    from pixart.cli.main import UserError, main  # looked up now: `demo` is a sibling subcommand

    status = main(["demo"])
    if status or not (DEMO_MODEL / "model.json").is_file():
        raise UserError(f"`pixart demo` did not leave a model in {DEMO_MODEL}; pass --model DIR instead")
    return DEMO_MODEL


def run(args: argparse.Namespace) -> int:
    # No usage reports or version checks: the server may have no network, and the page must not wait on it.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    from pixart.cli.main import UserError, make_out_folder
    from pixart.generate import TextToImage

    try:
        from pixart.app import build_app
    except ImportError as error:
        raise UserError(f"pixart serve needs gradio ({error}): pip install 'pixart[app]'") from error

    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="pixart-serve-"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
    make_out_folder(out)  # before the model loads, or the demo trains
    model = args.model or demo_model()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = TextToImage.from_path(model, vae=args.vae, text_encoder=args.text_encoder, device=device)
    pipe.text_encoder  # noqa: B018 -- load it now, so the first request is as fast as the others
    page = build_app(pipe, out, model_name=str(model))
    page.queue(default_concurrency_limit=1)
    print(f"loaded {model}; starting the web server on {args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    try:
        page.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(out.resolve())])
    except OSError as error:  # the port is taken, or the host is not an address of this machine
        raise UserError(f"cannot serve on {args.host}:{args.port}: {error}") from error
    return 0

"""The `pixart` entry point itself: device checks and the errors every subcommand shares."""

from __future__ import annotations

import pytest
import torch

from pixart.cli.main import UserError, check_device, main


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("bogus", "is not a device: use cpu, cuda or cuda:N"),
        ("mps", "pixart runs on cpu or cuda"),
        ("cuda:99", "CUDA device"),  # no CUDA at all, or not 100 of them
    ],
)
def test_a_device_this_machine_cannot_run_on_is_refused(device, message):
    with pytest.raises(UserError, match=message):
        check_device(device)
    check_device("cpu")
    check_device(None)  # the default: cuda when available


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused():
    with pytest.raises(UserError, match="sees no CUDA device; use cpu"):
        check_device("cuda")


def test_a_path_the_system_refuses_is_one_line_not_a_traceback(tmp_path, capsys):
    """An OSError of a user's path (here a file where the run folder goes) is the user's to fix."""
    (tmp_path / "file").write_text("not a folder")
    assert main(["train", "--recipe", "tiny", "--run-dir", str(tmp_path / "file" / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pixart train: error: ") and "Traceback" not in err and str(tmp_path / "file") in err


def test_no_progress_silences_the_bars_transformers_draws(tmp_path):
    """The tiny recipe encodes its synthetic captions with MiniLM: transformers drew "Loading weights"."""
    import subprocess
    import sys

    overrides = ["data.synthetic_count=8", "data.batch_size=4", "previews=false"]
    command = [sys.executable, "-m", "pixart", "train", "--recipe", "tiny", "--steps", "1", "--no-progress"]
    command += ["--run-dir", str(tmp_path / "run"), *(a for item in overrides for a in ("--set", item))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "done: 1 steps" in result.stdout
    assert "Loading weights" not in result.stderr and "it/s" not in result.stderr, result.stderr


def test_no_progress_reaches_a_transformers_imported_before_and_leaves_it_as_it_was(monkeypatch):
    """main() runs in-process in tests and notebooks: the bars come back once the command is done."""
    import os

    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as transformers_logging

    from pixart.cli.main import silenced_library_progress_bars

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert transformers_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    with silenced_library_progress_bars():
        assert not transformers_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
        assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ  # which would freeze a later import's bars
    assert transformers_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # a caller's own choice stays (transformers' switch is the hub's too)
    with silenced_library_progress_bars():
        pass
    assert not transformers_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    transformers_logging.enable_progress_bar()
    assert not are_progress_bars_disabled()


def test_no_progress_in_a_fresh_process_gives_the_bars_back_without_a_warning():
    """huggingface_hub and transformers first imported during the command: the hub read the environment
    variable the old switch set, kept its bars off for good and warned when they were given back."""
    import subprocess
    import sys

    script = (
        "import warnings; warnings.simplefilter('error')\n"
        "from pixart.cli.main import silenced_library_progress_bars\n"
        "with silenced_library_progress_bars():\n"
        "    import transformers.utils.logging as tl\n"
        "    assert not tl.is_progress_bar_enabled()\n"
        "from huggingface_hub.utils import are_progress_bars_disabled\n"
        "assert not are_progress_bars_disabled() and tl.is_progress_bar_enabled()\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize(
    ("command", "hint"),
    [("prepare", "; rerun the same command to continue (finished shards are kept)"), ("generate", "")],
)
def test_ctrl_c_is_one_line_saying_what_a_rerun_does(monkeypatch, capsys, command, hint):
    """Ctrl-C in prepare printed a traceback though its shards were safe and a rerun resumes."""
    import importlib

    module = importlib.import_module(f"pixart.cli.{command}")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run", interrupted)
    given = ["x", "--out", "o", "--resolution", "256"] if command == "prepare" else ["--model", "m", "--out", "o"]
    try:
        code = main([command, *given])
    except KeyboardInterrupt:  # caught here: out of the test it would end the whole pytest session
        pytest.fail("Ctrl-C escaped main() as a traceback")
    assert code == 130
    err = capsys.readouterr().err
    assert err.strip() == f"pixart {command}: interrupted{hint}", err


@pytest.mark.parametrize(
    ("command", "given", "hint"),
    [
        ("generate", ["--model", "m", "--out", "o"], "a smaller --batch (1 at the largest sizes)"),
        (
            "train",
            ["--recipe", "tiny", "--run-dir", "r"],
            "--set gradient_checkpointing=true (a change a resume takes)",
        ),
    ],
)
def test_out_of_gpu_memory_is_one_line_saying_what_to_ask_for(monkeypatch, capsys, command, given, hint):
    """A request too large for the GPU was a traceback of allocator internals; it is one line saying what to
    lower for this command. Another RuntimeError stays a traceback (a bug to report)."""
    import importlib

    module = importlib.import_module(f"pixart.cli.{command}")

    def out_of_memory(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore allocator detail")

    monkeypatch.setattr(module, "run", out_of_memory)
    assert main([command, *given]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"pixart {command}: error: out of GPU memory (CUDA out of memory. Tried to allocate 20.00 GiB)"
    )
    assert hint in err and "\n" not in err

    def a_bug(args):
        raise RuntimeError("shape mismatch")

    def a_submodule_missing(args):  # an installed package of another version: a traceback, not "install it"
        raise ModuleNotFoundError("No module named 'diffusers.models.gone'", name="diffusers.models.gone")

    monkeypatch.setattr(module, "run", a_submodule_missing)
    with pytest.raises(ModuleNotFoundError, match="diffusers.models.gone"):
        main([command, *given])

    monkeypatch.setattr(module, "run", a_bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main([command, *given])


def test_an_abbreviated_option_is_not_taken_for_a_longer_one(capsys):
    """`--prompt "a cat"` was argparse's abbreviation of --prompts-file: generate failed on a file named
    "a cat". Options are taken whole (every command), so an unknown one is named as such."""
    from pixart.cli.main import build_parser

    for argv in (["generate", "--prompt", "a cat", "--model", "m", "--out", "o"], ["demo", "--min", "5"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        assert f"unrecognized arguments: {argv[1]}" in capsys.readouterr().err

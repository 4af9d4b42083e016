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

    # the CPU's allocator raises a plain RuntimeError, and Python a MemoryError: the same line, for memory
    for raised in (
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried..."),
        MemoryError(),
    ):

        def out_of_cpu_memory(args, raised=raised):
            raise raised

        monkeypatch.setattr(module, "run", out_of_cpu_memory)
        assert main([command, *given]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"pixart {command}: error: out of memory (") and "ask for less: " in err, err
        assert "GPU" not in err and "\n" not in err

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


# --- a review of every command's arguments (twenty-seventh session) ---


def test_a_dry_run_refuses_a_device_as_the_run_would(capsys):
    """`train --dry-run --device foo` passed; the run refused it."""
    assert main(["train", "--recipe", "tiny", "--dry-run", "--device", "foo"]) == 2
    assert "--device" in capsys.readouterr().err


def test_a_flag_overruling_a_set_of_the_same_key_is_said(capsys):
    """`--steps 5 --set steps=7` trained 5 steps without a word; the flag still wins (scripts rely on it)."""
    assert main(["train", "--recipe", "tiny", "--steps", "5", "--set", "steps=7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "warning: --steps 5 overrules --set steps=7" in out and '"steps": 5,' in out
    assert main(["train", "--recipe", "tiny", "--steps", "5", "--set", "steps=5", "--dry-run"]) == 0
    assert "overrules" not in capsys.readouterr().out


def test_a_run_dir_the_system_refuses_is_one_line_naming_the_flag(tmp_path, capsys):
    """`--run-dir /proc/x` said "[Errno 2] No such file or directory: '/proc/x'", naming no flag."""
    (tmp_path / "a_file").write_text("x")
    for run_dir in ("/proc/pixart-nowhere", str(tmp_path / "a_file" / "sub")):
        assert main(["train", "--recipe", "tiny", "--run-dir", run_dir, "--steps", "1"]) == 2
        assert f"cannot create the folder --run-dir {run_dir}" in capsys.readouterr().err
    assert main(["train", "--recipe", "tiny", "--run-dir", str(tmp_path / "a_file"), "--steps", "1"]) == 2
    assert "is a file, not a folder: name a folder (new or a run's)" in capsys.readouterr().err


def test_an_override_that_is_not_utf8_or_too_deep_is_said_as_such():
    """Bytes that are not UTF-8 were told as a list to write another way (with the bytes in the advice), and a
    100,000-deep value was a MemoryError traceback."""
    from pixart import config as config_io
    from pixart.config import ConfigError
    from pixart.recipes import get_recipe

    with pytest.raises(ConfigError, match=r"is not UTF-8 text: write it in UTF-8"):
        config_io.apply_overrides(get_recipe("tiny"), ['sample_prompts=["caf\udce9"]'])
    with pytest.raises(ConfigError, match=r"steps: its value \(100,001 characters\) is too deeply nested"):
        config_io.apply_overrides(get_recipe("tiny"), ["steps=" + "-" * 100000 + "1"])
    assert config_io.apply_overrides(get_recipe("tiny"), ['sample_prompts=["café"]']).sample_prompts == ("café",)


def test_caption_refuses_a_seed_beyond_torchs_range_and_a_config_that_is_not_json(tmp_path, capsys):
    """A 23-digit --seed was an overflow traceback once the inputs were listed; a --model whose config.json is
    not JSON, a JSONDecodeError traceback."""
    images, model = tmp_path / "images", tmp_path / "model"
    images.mkdir()
    model.mkdir()
    base = ["caption", str(images), "--model", str(model), "--out", str(tmp_path / "c.jsonl"), "--temperature", "1"]
    assert main([*base, "--seed", str(2**64)]) == 2
    assert f"--seed must lie in 0..{2**63 - 1}, got {2**64}" in capsys.readouterr().err
    (model / "config.json").write_text("notjson")
    assert main(base) == 2
    assert f"no LLaVA model in {model}: its config.json cannot be read" in capsys.readouterr().err
    (model / "config.json").write_text("[1, 2]")
    assert main(base) == 2
    assert "its config.json holds no JSON object" in capsys.readouterr().err


def test_prepare_refuses_a_vae_with_the_pixels_codec(tmp_path, capsys):
    """`--codec pixels --vae DIR` ran to the end with the VAE ignored."""
    args = ["prepare", str(tmp_path), "--out", str(tmp_path / "out"), "--resolution", "256", "--codec", "pixels"]
    assert main([*args, "--vae", str(tmp_path / "vae"), "--text-encoder", "minilm"]) == 2
    assert "--vae" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_run_whose_config_is_not_json_or_whose_relative_data_lies_elsewhere(tmp_path, monkeypatch):
    """A run folder whose config.json was cut short was a JSONDecodeError traceback in generate; and a relative
    data.root, read from another folder, named whatever data lay there (the run drew with its codec)."""
    import json

    from pixart.modelfolder import run_spec

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"data": {"ro')
    with pytest.raises(FileNotFoundError, match=r"config.json holds no config this version can read"):
        run_spec(run)
    for folder, kind in (("a", "minilm"), ("b", "t5")):
        (tmp_path / folder / "feat").mkdir(parents=True)
        dataset = {"text_encoder": {"kind": kind, "max_length": 16}, "codec": {"kind": "pixels", "downsample": 1}}
        (tmp_path / folder / "feat" / "dataset.json").write_text(json.dumps(dataset))
    (run / "config.json").write_text(json.dumps({"data": {"root": "feat"}}))
    (run / "data.json").write_text(json.dumps({"samples": 8, "root": str(tmp_path / "a" / "feat")}))
    monkeypatch.chdir(tmp_path / "b")
    assert run_spec(run).text_encoder == "minilm"  # where the run trained, not b's
    (run / "data.json").unlink()  # without the record: the path as given, from here
    assert run_spec(run).text_encoder == "t5"

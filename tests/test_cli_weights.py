"""`pixart convert` and `pixart info` through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from helpers import randomize_
from test_dit_init import dit_checkpoint

from pixart.cli import main
from pixart.model import TINY, PixArt
from pixart.weights import load_transformer, save_transformer
from pixart.weights.io import NULL_CAPTION_FILE


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixart", *args], capture_output=True, text=True, timeout=120)


def test_convert_between_all_layouts(tmp_path):
    model = randomize_(PixArt(TINY)).eval()
    save_transformer(model, tmp_path / "a.safetensors")
    assert main(["convert", str(tmp_path / "a.safetensors"), "--to", "diffusers", "--out", str(tmp_path / "d")]) == 0
    assert main(["convert", str(tmp_path / "d"), "--to", "official", "--out", str(tmp_path / "o.pth")]) == 0
    (tmp_path / "tiny.json").write_text(json.dumps(TINY.to_dict()))
    assert (
        main(
            [
                "convert",
                str(tmp_path / "o.pth"),
                "--to",
                "pixart",
                "--out",
                str(tmp_path / "b.safetensors"),
                "--config",
                str(tmp_path / "tiny.json"),
            ]
        )
        == 0
    )
    back = load_transformer(tmp_path / "b.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_converting_weights_without_a_null_caption_to_official_warns(tmp_path, capsys):
    """A diffusers folder of diffusers' own (no null_caption sidecar) becomes a .pth whose null caption is zero."""
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "d", to="diffusers")
    assert main(["convert", str(tmp_path / "d"), "--to", "official", "--out", str(tmp_path / "ours.pth")]) == 0
    assert "warning" not in capsys.readouterr().err  # our folders keep the learned one beside the weights
    (tmp_path / "d" / NULL_CAPTION_FILE).unlink()
    assert main(["convert", str(tmp_path / "d"), "--to", "official", "--out", str(tmp_path / "theirs.pth")]) == 0
    assert "no learned null caption" in capsys.readouterr().err
    assert not torch.load(tmp_path / "theirs.pth", weights_only=True)["state_dict"]["y_embedder.y_embedding"].any()


def test_convert_dit_reparameterises(tmp_path, capsys):
    torch.save(dit_checkpoint(), tmp_path / "dit.pt")
    code = main(
        [
            "convert",
            str(tmp_path / "dit.pt"),
            "--to",
            "pixart",
            "--out",
            str(tmp_path / "init.safetensors"),
            "--caption-channels",
            "48",
            "--max-length",
            "8",
            "--num-heads",
            "3",
        ]
    )
    assert code == 0
    assert "re-parameterised from DiT" in capsys.readouterr().out
    assert load_transformer(tmp_path / "init.safetensors").config.depth == 3


def test_our_dit_weights_convert_with_their_stored_config(tmp_path):
    """The trainer's stage-1 safetensors say their head count and input size; shapes alone would guess 2 and 32."""
    from pixart.model.dit import DiT, DiTConfig
    from pixart.train.init import save_weights

    dit = DiTConfig(input_size=3, patch_size=1, in_channels=16, hidden_size=144, depth=2, num_heads=4, num_classes=10)
    save_weights(randomize_(DiT(dit)), tmp_path / "dit.safetensors")
    info = run_cli("info", str(tmp_path / "dit.safetensors"), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["config"]["num_heads"] == 4
    out = tmp_path / "init.safetensors"
    assert main(["convert", str(tmp_path / "dit.safetensors"), "--to", "pixart", "--out", str(out)]) == 0
    config = load_transformer(out).config
    assert (config.num_heads, config.input_size) == (4, 3)


def test_info_reports_format_config_and_parameters(tmp_path):
    model = PixArt(TINY)
    save_transformer(model, tmp_path / "m.safetensors")
    result = run_cli("info", str(tmp_path / "m.safetensors"), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format"] == "pixart"
    assert info["config"]["hidden_size"] == 96
    expected = sum(p.numel() for p in model.parameters())
    assert info["parameters"] == expected
    # a file missing a block's tensors was summarised as a healthy model of the config it stores
    from safetensors.torch import load_file, save_file

    from pixart.weights.io import safetensors_metadata

    state = {k: v for k, v in load_file(tmp_path / "m.safetensors").items() if not k.startswith("blocks.1.")}
    save_file(state, tmp_path / "cut.safetensors", metadata=safetensors_metadata(tmp_path / "m.safetensors"))
    result = run_cli("info", str(tmp_path / "cut.safetensors"))
    assert result.returncode == 2 and "blocks.1." in result.stderr and "Traceback" not in result.stderr


def test_cli_errors_are_one_clear_line(tmp_path):
    result = run_cli("info", str(tmp_path / "missing.pth"))
    assert result.returncode == 2
    assert "no such file or folder" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "notes.txt").write_text("x")
    result = run_cli("convert", str(tmp_path / "notes.txt"), "--to", "pixart", "--out", str(tmp_path / "o.safetensors"))
    assert result.returncode == 2
    assert "unknown weights format" in result.stderr
    torch.save(dit_checkpoint(), tmp_path / "dit.pt")
    save_transformer(PixArt(TINY), tmp_path / "m.safetensors")
    result = run_cli("convert", str(tmp_path / "m.safetensors"), "--to", "pixart", "--out", str(tmp_path / "x.pth"))
    assert result.returncode == 2
    assert "writes a .safetensors file" in result.stderr
    odd = {k: v for k, v in dit_checkpoint().items() if k != "pos_embed"}  # width 96 is 3 heads or 96/...: unknown
    odd = {k: torch.zeros(100, *v.shape[1:]) if k == "x_embedder.proj.weight" else v for k, v in odd.items()}
    torch.save(odd, tmp_path / "odd.pt")
    result = run_cli("info", str(tmp_path / "odd.pt"))
    assert result.returncode == 2, result.stderr
    assert "--num-heads" in result.stderr and "Traceback" not in result.stderr


def test_help_of_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "convert" in result.stdout


def test_a_config_file_that_is_not_a_pixart_config_is_a_one_line_error(tmp_path, capsys):
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "a.safetensors")
    cases = {
        '{"depth": 2,': "Expecting property name",  # cut short
        '{"depht": 2}': "unknown config keys ['depht']",
        "[2]": "expected a JSON object of PixArtConfig fields, got list",
        '{"depth": "two"}': "depth: 'two' is not a int",
    }
    for text, message in cases.items():
        (tmp_path / "c.json").write_text(text)
        out = ["convert", str(tmp_path / "a.safetensors"), "--to", "pixart", "--out", str(tmp_path / "b.safetensors")]
        assert main([*out, "--config", str(tmp_path / "c.json")]) == 2
        assert f"pixart convert: error: --config {tmp_path / 'c.json'}: {message}" in capsys.readouterr().err


def test_the_command_line_answers_help_without_loading_torch():
    """`pixart --help` used to take seconds: importing the package imported the model, and torch."""
    code = "import sys; from pixart.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()
        == "False"
    )


def test_convert_refuses_before_reading_what_would_replace_or_ignore_something(tmp_path, capsys):
    """An existing --out (the source above all), options the source's format ignores, an unwritable folder."""
    src = tmp_path / "a.safetensors"
    save_transformer(randomize_(PixArt(TINY)), src)
    (tmp_path / "taken.safetensors").write_text("my notes")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("mine")
    torch.save(dit_checkpoint(), tmp_path / "dit.pt")
    cases = [
        (["--to", "pixart", "--out", str(src)], f"--out {src} is the source itself"),
        (["--to", "pixart", "--out", str(tmp_path / "taken.safetensors")], "already exists; choose another --out"),
        (["--to", "diffusers", "--out", str(tmp_path / "d")], f"--out {tmp_path / 'd'} already exists"),
        (["--to", "pixart", "--out", str(tmp_path / "o.safetensors"), "--ema"], "--ema reads a .pth/.pt checkpoint"),
        (
            ["--to", "pixart", "--out", str(tmp_path / "o.safetensors"), "--num-heads", "7"],
            "--num-heads apply to a DiT",
        ),
        (["--to", "pixart", "--out", "/proc/pixart-test.safetensors"], "cannot write in /proc"),
    ]
    for options, message in cases:
        assert main(["convert", str(src), *options]) == 2, options
        assert message in capsys.readouterr().err, options
    assert (tmp_path / "taken.safetensors").read_text() == "my notes" and (
        tmp_path / "d" / "config.json"
    ).read_text() == "mine"
    out = ["--to", "pixart", "--out", str(tmp_path / "init.safetensors")]
    # a head count that does not divide the width
    assert main(["convert", str(tmp_path / "dit.pt"), *out, "--num-heads", "5"]) == 2
    assert "cannot build a PixArt from" in capsys.readouterr().err
    for zero in (["--max-length", "0"], ["--caption-channels", "0"]):  # 0 became the default 120 or 4096
        assert main(["convert", str(tmp_path / "dit.pt"), *out, "--num-heads", "3", *zero]) == 2, zero
        assert "must be at least 1" in capsys.readouterr().err, zero
    assert not (tmp_path / "init.safetensors").exists()


def test_a_config_the_tensors_contradict_is_refused_before_anything_is_written(tmp_path, capsys):
    """--config overrides what a file says of its architecture; one its tensors contradict (a depth the
    blocks do not have, learn_sigma off over a learned-sigma output) wrote weights no loader could read, or
    (to diffusers) left an empty folder behind a traceback."""
    import dataclasses

    save_transformer(randomize_(PixArt(TINY)), tmp_path / "a.safetensors")
    contradictions = {"depth": 1, "learn_sigma": False}
    for field, value in contradictions.items():
        (tmp_path / "c.json").write_text(json.dumps({**dataclasses.asdict(TINY), field: value}))
        for to, out in (("pixart", tmp_path / "b.safetensors"), ("diffusers", tmp_path / "d")):
            args = ["convert", str(tmp_path / "a.safetensors"), "--to", to, "--out", str(out)]
            assert main([*args, "--config", str(tmp_path / "c.json")]) == 2
            err = capsys.readouterr().err
            assert f"with the architecture of {tmp_path / 'c.json'}" in err and "keys" in err, err
            assert not out.exists() or not any(out.iterdir())  # at most the empty folder --out's check made
    (tmp_path / "c.json").write_text(json.dumps(dataclasses.asdict(TINY)))  # the file's own: converts
    assert (
        main(
            [
                "convert",
                str(tmp_path / "a.safetensors"),
                "--to",
                "diffusers",
                "--out",
                str(tmp_path / "d"),
                "--config",
                str(tmp_path / "c.json"),
            ]
        )
        == 0
    )


def test_info_names_a_training_checkpoint_as_one(tmp_path, capsys):
    """Its keys are in the official layout, and it was reported as "official weights"."""
    model = PixArt(TINY)
    params = {name: p.detach() for name, p in model.named_parameters()}
    config = {"stage": "t2i", "recipe": "tiny", "model": TINY.to_dict()}
    torch.save({"model": model.state_dict(), "ema": params, "config": config, "step": 14}, tmp_path / "step.pt")
    assert main(["info", str(tmp_path / "step.pt")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "a pixart train checkpoint (step 14, recipe tiny) in the official layout" in first
    assert main(["info", str(tmp_path / "step.pt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["training_checkpoint"] == {"step": 14, "recipe": "tiny", "stage": "t2i"}
    save_transformer(model, tmp_path / "official.pth", to="official")
    assert main(["info", str(tmp_path / "official.pth")]) == 0
    assert "official weights" in capsys.readouterr().out  # a file of the official code's kind stays so

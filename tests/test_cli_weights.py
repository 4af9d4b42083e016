"""`pixart convert` and `pixart info` through the real entry point."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import randomize_
from test_dit_init import dit_checkpoint

from pixart.cli import main
from pixart.model import TINY, PixArt
from pixart.weights import WeightsError, load_transformer, save_transformer
from pixart.weights.formats import NULL_CAPTION_FILE


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
    # a head count that differs from the stored one is refused by info (it was reported as the stored 4) and
    # by convert (it split the same attention weights into other heads: another model)
    info = run_cli("info", str(tmp_path / "dit.safetensors"), "--num-heads", "2")
    assert info.returncode == 2 and "--num-heads 2 differs from the 4 heads" in info.stderr, info.stderr
    other = [
        "convert",
        str(tmp_path / "dit.safetensors"),
        "--to",
        "pixart",
        "--out",
        str(tmp_path / "other.safetensors"),
    ]
    assert main([*other, "--num-heads", "2"]) == 2 and not (tmp_path / "other.safetensors").exists()
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

    from pixart.weights.formats import safetensors_metadata

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
    for heads in ("7", "0"):  # not dividing the width: a traceback from info (convert said it)
        for command in (["info", str(tmp_path / "dit.pt")], ["convert", str(tmp_path / "dit.pt"), "--to", "pixart"]):
            out = ["--out", str(tmp_path / "h.safetensors")] if command[0] == "convert" else []
            result = run_cli(*command, *out, "--num-heads", heads)
            assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
            assert f"with {heads} heads" in result.stderr or "with these options" in result.stderr, result.stderr


def test_help_of_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "convert" in result.stdout


def test_generates_steps_help_gives_every_samplers_default_steps():
    """The help is written out (the sampler table would import torch): it must not drift from the table."""
    from pixart.cli.main import build_parser
    from pixart.diffusion.schedulers import SAMPLERS

    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    steps = next(action.help for action in generate._actions if action.dest == "steps")
    listed = dict(re.findall(r"([a-z+-]+) (\d+)", steps.split("sampler's: ")[1]))
    assert listed == {name: str(sampler.default_steps) for name, sampler in SAMPLERS.items()}


def test_a_config_file_that_is_not_a_pixart_config_is_a_one_line_error(tmp_path, capsys):
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "a.safetensors")
    cases = {
        '{"depth": 2,': "Expecting property name",  # cut short
        '{"depht": 2}': "unknown config keys ['depht']; did you mean depth?",
        "[2]": "expected a JSON object of PixArtConfig fields, got list",
        '{"depth": "two"}': "depth: 'two' is not a int",
        # a key given twice was read as its last value without a word
        '{"num_heads": 3, "depth": 2, "num_heads": 4}': "the key 'num_heads' is given twice in one object",
    }
    for text, message in cases.items():
        (tmp_path / "c.json").write_text(text)
        out = ["convert", str(tmp_path / "a.safetensors"), "--to", "pixart", "--out", str(tmp_path / "b.safetensors")]
        assert main([*out, "--config", str(tmp_path / "c.json")]) == 2
        assert f"pixart convert: error: --config {tmp_path / 'c.json'}: {message}" in capsys.readouterr().err
    # JSON given inline, as the help's example read (review): the option takes a file, which is said
    assert main(["info", str(tmp_path / "a.safetensors"), "--config", '{"num_heads": 3}']) == 2
    said = capsys.readouterr().err
    assert "No such file or directory (--config takes a JSON file, not JSON itself: write it to a file)" in said
    assert main(["info", str(tmp_path / "a.safetensors"), "--config", str(tmp_path / "none.json")]) == 2
    assert "not JSON itself" not in capsys.readouterr().err  # a missing file is only that


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
        # through a folder not made yet: the writer made new/ and was stopped only by its last check
        (["--to", "pixart", "--out", str(tmp_path / "new" / ".." / src.name)], "is the source itself"),
        (["--to", "diffusers", "--out", str(tmp_path / "new" / ".." / "d")], "already exists"),
        (["--to", "pixart", "--out", str(tmp_path / "taken.safetensors")], "already exists; choose another --out"),
        (["--to", "diffusers", "--out", str(tmp_path / "d")], f"--out {tmp_path / 'd'} already exists"),
        (["--to", "pixart", "--out", str(tmp_path / "o.safetensors"), "--ema"], "--ema reads a .pth/.pt checkpoint"),
        (
            ["--to", "pixart", "--out", str(tmp_path / "o.safetensors"), "--num-heads", "7"],
            "--num-heads apply to a DiT",
        ),
        (["--to", "pixart", "--out", "/proc/pixart-test.safetensors"], "cannot write in /proc"),
        # a dangling link: converted in full, then blamed on "another process"
        (["--to", "pixart", "--out", str(tmp_path / "link.safetensors")], "is a link to"),
    ]
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "gone.safetensors")
    for options, message in cases:
        assert main(["convert", str(src), *options]) == 2, options
        assert message in capsys.readouterr().err, options
    assert (tmp_path / "taken.safetensors").read_text() == "my notes" and (
        tmp_path / "d" / "config.json"
    ).read_text() == "mine"
    assert not (tmp_path / "new").exists()
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

    # A file that stores no config (a bare state dict): one that does refuses any other (test below)
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "o.pth", to="official")
    torch.save(torch.load(tmp_path / "o.pth", weights_only=True)["state_dict"], tmp_path / "a.pth")
    contradictions = {"depth": 1, "learn_sigma": False}
    for field, value in contradictions.items():
        (tmp_path / "c.json").write_text(json.dumps({**dataclasses.asdict(TINY), field: value}))
        for to, out in (("pixart", tmp_path / "b.safetensors"), ("diffusers", tmp_path / "d")):
            args = ["convert", str(tmp_path / "a.pth"), "--to", to, "--out", str(out)]
            assert main([*args, "--config", str(tmp_path / "c.json")]) == 2
            err = capsys.readouterr().err
            assert f"with the architecture of {tmp_path / 'c.json'}" in err and "keys" in err, err
            assert not out.exists()  # nor the folder --out's check made
    (tmp_path / "c.json").write_text(json.dumps(dataclasses.asdict(TINY)))  # the file's own: converts
    assert (
        main(
            [
                "convert",
                str(tmp_path / "a.pth"),
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


def test_a_flow_model_folder_converts_with_its_objective(tmp_path, capsys):
    """A model folder keeps its objective in model.json (the demo's is a flow model): converting it to a
    file dropped it, and the file then sampled as an eps model; to official it now warns, as from a file."""
    from pixart.modelfolder import ModelSpec, sampling_of, save_model_folder

    spec = ModelSpec(text_encoder="minilm", objective="flow", flow_shift=3.0, sampler="flow-dpm-solver")
    save_model_folder(tmp_path / "folder", randomize_(PixArt(TINY)), spec)
    # its transformer file alone, given as bare weights, samples as the folder does (it sampled as eps)
    assert sampling_of(tmp_path / "folder" / "transformer.safetensors")["objective"] == "flow"
    assert main(["convert", str(tmp_path / "folder"), "--to", "pixart", "--out", str(tmp_path / "x.safetensors")]) == 0
    recorded = sampling_of(tmp_path / "x.safetensors")
    assert (recorded["objective"], recorded["flow_shift"], recorded["sampler"]) == ("flow", 3.0, "flow-dpm-solver")
    assert main(["convert", str(tmp_path / "folder"), "--to", "official", "--out", str(tmp_path / "x.pth")]) == 0
    assert "trained with the flow objective" in capsys.readouterr().err


def test_a_stored_config_of_another_tool_or_type_is_one_line_naming_the_file(tmp_path, capsys):
    """A .pth whose "config" is another tool's, a number stored as text, a config.json that is a list: each
    ended in a traceback. --config replaces a .pth's stored config, so a foreign one is no obstacle then."""
    model = randomize_(PixArt(TINY))
    save_transformer(model, tmp_path / "ours.safetensors")
    save_transformer(model, tmp_path / "d", to="diffusers")
    official = {k: v for k, v in torch.load(_official(model, tmp_path), weights_only=True)["state_dict"].items()}
    torch.save({"state_dict": official, "config": {"lr": 1e-4, "model": "something"}}, tmp_path / "foreign.pth")
    from safetensors.torch import load_file, save_file

    bad = {**TINY.to_dict(), "hidden_size": "96"}
    save_file(
        load_file(tmp_path / "ours.safetensors"),
        tmp_path / "text.safetensors",
        {"format": "pixart", "config": json.dumps(bad)},
    )
    diffusers_config = json.loads((tmp_path / "d" / "config.json").read_text())
    for name, written in {"as_text": {**diffusers_config, "num_layers": "2"}, "a_list": [diffusers_config]}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(written))
        (tmp_path / name / "diffusion_pytorch_model.safetensors").write_bytes(
            (tmp_path / "d" / "diffusion_pytorch_model.safetensors").read_bytes()
        )
    cases = {
        "foreign.pth": "its stored config is not a PixArtConfig (unknown PixArtConfig fields",
        "text.safetensors": "hidden_size must be int, got '96'",
        "as_text": "config.json is not a PixArt transformer's config: depth must be int, got '2'",
        "a_list": "config.json is not a PixArt transformer's config: expected a JSON object",
    }
    for name, message in cases.items():
        assert main(["info", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert message in err and str(tmp_path / name) in err and "Traceback" not in err, err
    (tmp_path / "tiny.json").write_text(json.dumps(TINY.to_dict()))
    args = ["--to", "pixart", "--out", str(tmp_path / "back.safetensors"), "--config", str(tmp_path / "tiny.json")]
    assert main(["convert", str(tmp_path / "foreign.pth"), *args]) == 0
    assert torch.equal(
        load_transformer(tmp_path / "back.safetensors").blocks[0].mlp.fc1.weight, model.blocks[0].mlp.fc1.weight
    )


def _official(model: PixArt, folder) -> object:
    save_transformer(model, folder / "official.pth", to="official")
    return folder / "official.pth"


def test_a_failed_conversion_leaves_no_folder_behind_and_out_is_a_file_not_a_folder(tmp_path, capsys):
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 not a whole zip")
    for to, out in (("pixart", tmp_path / "a" / "b" / "x.safetensors"), ("diffusers", tmp_path / "d")):
        assert main(["convert", str(tmp_path / "cut.pth"), "--to", to, "--out", str(out)]) == 2, to
        assert "cannot read" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.pth"]  # --out's check made a, a/b and d
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "w.safetensors")
    (tmp_path / "taken.pth").mkdir()  # an empty folder: the diffusers layout may fill one, a file cannot
    assert (
        main(["convert", str(tmp_path / "w.safetensors"), "--to", "official", "--out", str(tmp_path / "taken.pth")])
        == 2
    )
    assert f"--out {tmp_path / 'taken.pth'} is a folder; --to official writes a file" in capsys.readouterr().err


def test_ema_of_a_bare_state_dict_is_refused_not_ignored(tmp_path, capsys):
    """A bare state dict holds one set of weights, as a .safetensors file does: --ema converted it silently."""
    official = torch.load(_official(randomize_(PixArt(TINY)), tmp_path), weights_only=True)["state_dict"]
    torch.save(official, tmp_path / "bare.pth")
    torch.save(dit_checkpoint(), tmp_path / "dit.pt")
    out = ["--to", "pixart", "--out", str(tmp_path / "x.safetensors"), "--ema"]
    (tmp_path / "tiny.json").write_text(json.dumps(TINY.to_dict()))
    for source, extra in (("bare.pth", ["--config", str(tmp_path / "tiny.json")]), ("dit.pt", ["--num-heads", "3"])):
        assert main(["convert", str(tmp_path / source), *out, *extra]) == 2, source
        assert "is a bare state dict, one set of weights (no state_dict_ema): drop --ema" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_a_diffusers_conversion_cut_short_leaves_no_partial_folder_and_a_rerun_works(tmp_path, monkeypatch, capsys):
    """The folder's files are written beside it and renamed into place together: a conversion that stops
    after the weights (a full disk, a kill) left --out holding them, and a rerun refused that --out."""
    import pixart.weights.save as weights_save

    save_transformer(randomize_(PixArt(TINY)), tmp_path / "w.safetensors")
    real_save_file, calls = weights_save.save_file, []

    def full_disk_on_the_second_file(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save_file(*args, **kwargs)

    monkeypatch.setattr(weights_save, "save_file", full_disk_on_the_second_file)
    command = ["convert", str(tmp_path / "w.safetensors"), "--to", "diffusers", "--out", str(tmp_path / "d")]
    assert main(command) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no --out, no temporary
    monkeypatch.setattr(weights_save, "save_file", real_save_file)
    assert main(command) == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(
        ["config.json", "diffusion_pytorch_model.safetensors", NULL_CAPTION_FILE]
    )
    torch.testing.assert_close(
        load_transformer(tmp_path / "d").state_dict(), load_transformer(tmp_path / "w.safetensors").state_dict()
    )


def _training_state(model: PixArt, objective: str = "flow") -> dict:
    """What the trainer's checkpoints hold: weights, EMA (parameters only), optimizer state, step, config."""
    params = {name: p.detach() + 1.0 for name, p in model.named_parameters()}  # an EMA unlike the weights
    moments = {name: {"exp_avg": torch.randn_like(p)} for name, p in params.items()}
    diffusion = {"objective": objective, "flow_shift": 3.0, "shift_base_tokens": 256}
    config = {"stage": "t2i", "recipe": "tiny", "model": TINY.to_dict(), "diffusion": diffusion}
    return {"model": model.state_dict(), "ema": params, "optimizer": {"state": moments}, "config": config, "step": 9}


def test_a_sharded_training_checkpoint_reads_as_its_pt_twin_does(tmp_path, capsys):
    """parallel=fsdp checkpoints (step-N.dcp folders) were "a folder but holds neither..." to info, convert
    and load_transformer; and a training checkpoint converted to a file lost its flow objective."""
    import torch.distributed.checkpoint as dcp

    from pixart.modelfolder import sampling_of

    model = randomize_(PixArt(TINY))
    state = _training_state(model)
    torch.save(state, tmp_path / "step-0000009.pt")
    dcp.save(state, checkpoint_id=str(tmp_path / "step-0000009.dcp"))  # one process: no group needed
    expected_ema = {**model.state_dict(), **state["ema"]}
    for name in ("step-0000009.pt", "step-0000009.dcp"):
        path = tmp_path / name
        assert main(["info", str(path), "--json"]) == 0, name
        info = json.loads(capsys.readouterr().out)
        assert info["training_checkpoint"] == {"step": 9, "recipe": "tiny", "stage": "t2i"}, name
        assert info["ema_set"] is True and info["dtype"] == "float32", name
        assert info["sampling"] == {"objective": "flow", "flow_shift": 3.0, "shift_base_tokens": 256}, name
        assert sampling_of(path)["sampler"] == "flow-dpm-solver", name  # generate, given it as bare weights
        ema = load_transformer(path, use_ema=True).state_dict()
        for key, value in expected_ema.items():
            assert torch.equal(ema[key], value), (name, key)
        out = tmp_path / f"{path.suffix[1:]}.safetensors"
        assert main(["convert", str(path), "--ema", "--to", "pixart", "--out", str(out)]) == 0, name
        said = capsys.readouterr().out  # it was "read official weights"
        assert said.startswith("read the EMA weights of a pixart train checkpoint (step 9); wrote pixart"), said
        assert sampling_of(out)["objective"] == "flow" and sampling_of(out)["flow_shift"] == 3.0, name
        assert torch.equal(
            load_transformer(out).state_dict()["blocks.0.attn.qkv.weight"], ema["blocks.0.attn.qkv.weight"]
        )
    capsys.readouterr()
    (tmp_path / "step-0000009.dcp" / "__0_0.distcp").write_bytes(b"cut")  # a shard cut short
    assert main(["info", str(tmp_path / "step-0000009.dcp")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "step-0000009.dcp" / "__0_0.distcp").unlink()  # every shard lost: still a sharded checkpoint
    assert main(["info", str(tmp_path / "step-0000009.dcp")]) == 2
    assert f"cannot read {tmp_path / 'step-0000009.dcp'} as a sharded checkpoint" in capsys.readouterr().err


class _RunsCode:
    """Unpickling this runs a command: what a folder from elsewhere could hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # dcp.save in one process, as it says
def test_a_sharded_checkpoint_is_read_without_running_code(tmp_path, capsys):
    """DCP unpickles a checkpoint's .metadata with pickle.load and its non-tensor entries with
    torch.load(weights_only=False): any folder holding a .metadata file (a diffusers folder included) ran
    whatever it held on info, convert, generate; a .metadata cut short was a traceback."""
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "code-ran"
    state = _training_state(randomize_(PixArt(TINY)))
    dcp.save({**state, "extra": _RunsCode(marker)}, checkpoint_id=str(tmp_path / "entry.dcp"))
    dcp.save(state, checkpoint_id=str(tmp_path / "meta.dcp"))
    (tmp_path / "meta.dcp" / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
    for name in ("entry.dcp", "meta.dcp"):
        assert main(["info", str(tmp_path / name)]) == 2, name
        said = capsys.readouterr().err
        assert f"cannot read {tmp_path / name} as a sharded checkpoint" in said and "Traceback" not in said, said
        with pytest.raises(WeightsError, match="as a sharded checkpoint"):
            load_transformer(tmp_path / name, use_ema=True)
        assert not marker.exists(), name
    assert "names posix.system, which no checkpoint's record holds" in str(_refusal(tmp_path / "meta.dcp"))
    said = str(_refusal(tmp_path / "entry.dcp"))  # torch's tensor-only loader; its advice (weights_only=False) left out
    assert "entry 'extra' holds Python objects besides tensors" in said and "weights_only" not in said, said
    # a .metadata cut short
    dcp.save(state, checkpoint_id=str(tmp_path / "cut.dcp"))
    metadata = tmp_path / "cut.dcp" / ".metadata"
    metadata.write_bytes(metadata.read_bytes()[:200])
    assert main(["info", str(tmp_path / "cut.dcp")]) == 2
    assert "cannot read" in capsys.readouterr().err
    # a diffusers folder with a stray .metadata beside it is a diffusers folder, its .metadata never read
    folder = tmp_path / "diffusers"
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "weights.safetensors")
    assert main(["convert", str(tmp_path / "weights.safetensors"), "--to", "diffusers", "--out", str(folder)]) == 0
    (folder / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
    assert main(["info", str(folder)]) == 0
    assert not marker.exists()


def _refusal(path: Path) -> WeightsError:
    with pytest.raises(WeightsError) as refused:
        load_transformer(path, use_ema=True)
    return refused.value


def test_info_says_dtype_ema_and_null_caption_and_takes_a_config(tmp_path, capsys):
    model = randomize_(PixArt(TINY))
    save_transformer(model.to(torch.bfloat16), tmp_path / "half.safetensors")
    assert main(["info", str(tmp_path / "half.safetensors"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["dtype"], info["ema_set"], "sampling" in info, "null_caption" in info) == (
        "bfloat16",
        False,
        False,
        False,
    )
    model, ema = randomize_(PixArt(TINY)), randomize_(PixArt(TINY), seed=1)
    save_transformer(model, tmp_path / "two.pth", to="official", ema_state=dict(ema.named_parameters()))
    # the parameters' EMA lacked the null caption (a buffer): the file's EMA set could not be loaded
    loaded = load_transformer(tmp_path / "two.pth", use_ema=True).state_dict()
    assert torch.equal(loaded["blocks.0.attn.qkv.weight"], ema.state_dict()["blocks.0.attn.qkv.weight"])
    assert torch.equal(loaded["y_embedder.y_embedding"], model.y_embedder.y_embedding)
    holed = {k: v for k, v in ema.named_parameters() if k != "blocks.0.mlp.fc1.weight"}
    with pytest.raises(
        ValueError, match=r"ema_state lacks 1 parameter\(s\) the weights hold: \['blocks.0.mlp.fc1.weight'\]"
    ):
        save_transformer(model, tmp_path / "holed.pth", to="official", ema_state=holed)
    assert main(["info", str(tmp_path / "two.pth"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ema_set"] is True
    assert main(["info", str(tmp_path / "two.pth")]) == 0
    assert "  convert --ema: reads its EMA weights" in capsys.readouterr().out
    # EMA weights alone: the file's one set, read either way, so --ema has nothing more to read
    state = torch.load(tmp_path / "two.pth", weights_only=True)
    torch.save({"state_dict_ema": state["state_dict"], "config": state["config"]}, tmp_path / "ema.pth")
    assert main(["info", str(tmp_path / "ema.pth")]) == 0
    assert "  convert --ema: nothing to read (one set of weights)" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "half.safetensors")]) == 0
    assert "  convert --ema: nothing to read (one set of weights)" in capsys.readouterr().out
    save_transformer(model, tmp_path / "d", to="diffusers")
    (tmp_path / "d" / NULL_CAPTION_FILE).unlink()  # as diffusers' own weights are
    assert main(["info", str(tmp_path / "d")]) == 0
    assert "null_caption: none learned (all zeros)" in capsys.readouterr().out
    # the same zeros in a run's own final weights (a run started from diffusers weights trains with them as
    # its dropped caption): generate guides with them as the run does, and info says nothing of the sort
    from pixart.modelfolder import guides_with_empty_prompt

    zeros = load_transformer(tmp_path / "d")
    save_transformer(zeros, tmp_path / "alone.safetensors")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"stage": "t2i", "steps": 1}))
    save_transformer(zeros, tmp_path / "run" / "final_ema.safetensors")
    assert guides_with_empty_prompt(tmp_path / "alone.safetensors", learned_null_caption=False)
    assert not guides_with_empty_prompt(tmp_path / "run" / "final_ema.safetensors", learned_null_caption=False)
    assert not guides_with_empty_prompt(tmp_path / "alone.safetensors", learned_null_caption=True)
    assert main(["info", str(tmp_path / "run" / "final_ema.safetensors")]) == 0
    assert "null_caption" not in capsys.readouterr().out
    # A bare state dict of a model whose head dim is not 72: only --config says its head count
    bare = {**torch.load(tmp_path / "two.pth", weights_only=True)["state_dict"]}
    torch.save(bare, tmp_path / "bare.pth")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY.to_dict()))
    assert main(["info", str(tmp_path / "bare.pth"), "--config", str(tmp_path / "tiny.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["num_heads"] == TINY.num_heads
    # width 144, 3 heads: read off the shapes, the count is width / 72 = 2, a guess said as one (not a fact)
    wide = dataclasses.replace(TINY, hidden_size=144, num_heads=3)
    save_transformer(randomize_(PixArt(wide)), tmp_path / "wide.pth", to="official")
    assert main(["info", str(tmp_path / "wide.pth")]) == 0  # it stores its config: no guess
    assert "  num_heads: 3\n" in capsys.readouterr().out
    torch.save(torch.load(tmp_path / "wide.pth", weights_only=True)["state_dict"], tmp_path / "wide-bare.pth")
    assert main(["info", str(tmp_path / "wide-bare.pth")]) == 0
    assert "  num_heads: 2 (a guess: width / 72, the official family's head size: --config FILE" in (
        capsys.readouterr().out
    )


def test_info_on_a_folder_says_how_generate_runs_it(tmp_path, capsys):
    """A model folder's info showed its transformer alone: not the text encoder, codec, sampler defaults and
    buckets its model.json gives generate (a diffusers pipeline's: its subfolders and diffusers' guidance)."""
    from pixart.modelfolder import ModelSpec, save_model_folder

    spec = ModelSpec(
        text_encoder="minilm",
        text_max_length=48,
        codec="pixels",
        objective="flow",
        sampler="flow-euler",
        steps=12,
        cfg_scale=3.0,
        buckets={"1.0": [32, 32], "0.5": [32, 64]},
    )
    model = randomize_(PixArt(TINY))
    save_model_folder(tmp_path / "folder", model, spec)
    assert main(["info", str(tmp_path / "folder"), "--json"]) == 0
    generation = json.loads(capsys.readouterr().out)["generation"]
    assert generation == {
        "folder": "a pixart model folder",
        "text_encoder": "minilm (the bundled MiniLM), 16 tokens",  # cut to the model's null caption, as generate does
        "codec": "pixels",
        "defaults": {"sampler": "flow-euler", "steps": 12, "cfg": 3.0, "null caption": "learned"},
        "buckets": "1.0 (32x32), 0.5 (32x64)",
    }
    assert main(["info", str(tmp_path / "folder")]) == 0
    assert "  defaults: sampler flow-euler, steps 12, cfg 3.0, null caption learned" in capsys.readouterr().out
    save_transformer(model, tmp_path / "pipe" / "transformer", to="diffusers")
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    assert main(["info", str(tmp_path / "pipe"), "--json"]) == 0
    generation = json.loads(capsys.readouterr().out)["generation"]
    assert (generation["folder"], generation["text_encoder"], generation["codec"]) == (
        "a diffusers pipeline",
        f"t5 ({tmp_path / 'pipe' / 'text_encoder'}: not there; generate needs --text-encoder DIR), 120 tokens",
        f"sd-vae ({tmp_path / 'pipe' / 'vae'}: not there; generate needs --vae PATH)",  # info named them as there
    )
    (tmp_path / "pipe" / "text_encoder").mkdir()
    (tmp_path / "pipe" / "vae").mkdir()
    assert main(["info", str(tmp_path / "pipe"), "--json"]) == 0
    generation = json.loads(capsys.readouterr().out)["generation"]
    assert (generation["text_encoder"], generation["codec"]) == (
        f"t5 ({tmp_path / 'pipe' / 'text_encoder'}), 120 tokens",
        f"sd-vae ({tmp_path / 'pipe' / 'vae'})",
    )
    assert generation["defaults"] == {
        "sampler": "dpm-solver++",
        "steps": 20,
        "cfg": 4.5,
        "null caption": "empty-prompt",
    }
    assert generation["buckets"] == "the official table"
    (tmp_path / "pipe" / "scheduler").mkdir()  # its own scheduler: what generate then samples with, 20 steps
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text("{}")
    assert main(["info", str(tmp_path / "pipe"), "--json"]) == 0
    defaults = json.loads(capsys.readouterr().out)["generation"]["defaults"]
    assert (defaults["sampler"], defaults["steps"]) == ("folder (its scheduler/)", 20)
    save_transformer(model, tmp_path / "bare.safetensors")  # bare weights: nothing more to say
    assert main(["info", str(tmp_path / "bare.safetensors"), "--json"]) == 0
    assert "generation" not in json.loads(capsys.readouterr().out)


def test_info_piped_into_a_reader_that_stops_early_is_quiet(tmp_path):
    """`pixart info X | head -3` ended in "pixart info: error: Broken pipe" (rc 2), as a failure would."""
    save_transformer(PixArt(TINY), tmp_path / "m.safetensors")
    # `true` reads nothing and is gone long before Python has started: every write meets a closed pipe
    command = f"{sys.executable} -m pixart info {tmp_path / 'm.safetensors'} | true; echo ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.stderr == "", result.stderr
    assert result.stdout == "1\n"  # not 0: the output was not all read, as for any tool whose reader left


def test_a_config_other_than_the_one_a_file_stores_is_refused(tmp_path, capsys):
    """The tensors cannot tell a head count: --config 8 heads over a file that stores 4 silently made
    another model (and wrote it out as such)."""
    import dataclasses

    save_transformer(randomize_(PixArt(TINY)), tmp_path / "m.safetensors")
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "m.pth", to="official")
    other = dataclasses.replace(TINY, num_heads=TINY.num_heads * 2)
    (tmp_path / "other.json").write_text(json.dumps(other.to_dict()))
    (tmp_path / "same.json").write_text(json.dumps(TINY.to_dict()))
    for source in ("m.safetensors", "m.pth"):
        command = ["convert", str(tmp_path / source), "--to", "pixart", "--out", str(tmp_path / "x.safetensors")]
        assert main([*command, "--config", str(tmp_path / "other.json")]) == 2, source
        error = capsys.readouterr().err
        assert f"num_heads {other.num_heads} vs {TINY.num_heads}" in error and "drop --config" in error, error
        assert main(["info", str(tmp_path / source), "--config", str(tmp_path / "other.json")]) == 2, source
        assert "drop --config" in capsys.readouterr().err
        assert main(["info", str(tmp_path / source), "--config", str(tmp_path / "same.json")]) == 0, source
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(WeightsError, match="config= differs from the architecture"):
        load_transformer(tmp_path / "m.safetensors", config=other)


def test_a_partial_config_says_only_what_the_shapes_cannot(tmp_path, capsys):
    """--config {"num_heads": 3}, as the error for a width-96 state dict (not 72 per head) advises, was
    refused: every field it left out took XL's default (hidden 1152, input size 64), not the file's shapes,
    so a user had to write out the whole architecture. A field the tensors contradict is still refused."""
    official = torch.load(_official(randomize_(PixArt(TINY)), tmp_path), weights_only=True)["state_dict"]
    bare = str(tmp_path / "bare.pth")
    torch.save(official, bare)
    assert main(["info", bare]) == 2
    assert "cannot infer the head count of a width-96 model" in (err := capsys.readouterr().err)
    assert "--config FILE to pixart convert or info (a JSON of the PixArtConfig fields the shapes do not say" in err
    (tmp_path / "heads.json").write_text('{"num_heads": 3}')
    assert main(["info", bare, "--config", str(tmp_path / "heads.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"] == TINY.to_dict()
    out = tmp_path / "w.safetensors"
    assert main(["convert", bare, "--to", "pixart", "--out", str(out), "--config", str(tmp_path / "heads.json")]) == 0
    assert load_transformer(out).config == TINY
    (tmp_path / "deep.json").write_text('{"num_heads": 3, "depth": 5}')
    assert main(["info", bare, "--config", str(tmp_path / "deep.json")]) == 2
    assert "does not match the architecture: missing keys" in capsys.readouterr().err
    # without a pos_embed the sample size must be given; the interpolation scale then follows the official
    # convention (input_size // 64, at least 1: 2 at 1024 px), not the default 1 (another position embedding)
    torch.save({k: v for k, v in official.items() if k != "pos_embed"}, tmp_path / "nopos.pth")
    assert main(["info", str(tmp_path / "nopos.pth"), "--config", str(tmp_path / "heads.json")]) == 2
    assert 'with its input_size (the latent side: {"input_size": 128} for 1024 px)' in capsys.readouterr().err
    (tmp_path / "large.json").write_text('{"num_heads": 3, "input_size": 128}')
    assert main(["info", str(tmp_path / "nopos.pth"), "--config", str(tmp_path / "large.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["interpolation_scale"] == 2.0
    (tmp_path / "null.json").write_text('{"num_heads": 3, "input_size": null}')  # a traceback from int()
    assert main(["info", str(tmp_path / "nopos.pth"), "--config", str(tmp_path / "null.json")]) == 2
    assert "input_size: None is not a int" in capsys.readouterr().err
    (tmp_path / "typo.json").write_text('{"num_heads": "3"}')  # a type error names the file, as before
    assert main(["info", bare, "--config", str(tmp_path / "typo.json")]) == 2
    assert f"--config {tmp_path / 'typo.json'}: num_heads: '3' is not a int" in capsys.readouterr().err


def test_info_reads_a_dit_of_any_width_with_num_heads(tmp_path, capsys):
    """A DiT of width 96 (neither 72 nor 64 per head): info's error ended mid-sentence ("or num_heads=") and
    pointed to a --num-heads that info lacked, and refused --config, "which says its own" (it did not)."""
    torch.save(dit_checkpoint(), tmp_path / "dit.pt")
    assert main(["info", str(tmp_path / "dit.pt")]) == 2
    assert "pass --num-heads N to pixart convert or info, or num_heads= to infer_dit_config" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "dit.pt"), "--num-heads", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["num_heads"] == 3
    (tmp_path / "heads.json").write_text('{"num_heads": 3}')
    assert main(["info", str(tmp_path / "dit.pt"), "--config", str(tmp_path / "heads.json")]) == 2
    assert "--num-heads N says its head count" in capsys.readouterr().err
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "w.safetensors")
    assert main(["info", str(tmp_path / "w.safetensors"), "--num-heads", "3"]) == 2
    assert "--num-heads applies to a DiT checkpoint" in capsys.readouterr().err


def test_convert_refuses_an_out_its_layout_would_not_read_back_as_before_reading(tmp_path, capsys):
    """--to diffusers --out x.pt read the whole source, then failed in save_transformer with a traceback."""
    src = save_transformer(randomize_(PixArt(TINY)), tmp_path / "a.safetensors")
    assert main(["convert", str(src), "--to", "diffusers", "--out", str(tmp_path / "x.pt")]) == 2
    said = capsys.readouterr().err
    assert f"--out {tmp_path / 'x.pt'}: the diffusers layout writes a folder, not a .pt file: name a folder" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]

"""Stage-1 re-parameterisation: a DiT becomes a PixArt whose modulation equals DiT's at t = 500."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import randomize_

from pixart.model import DiT, DiTConfig, PixArt
from pixart.weights import load_transformer
from pixart.weights.dit_init import dit_to_pixart
from pixart.weights.errors import WeightsError

DIT = DiTConfig(input_size=16, hidden_size=96, depth=3, num_heads=3, num_classes=10)


def dit_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """A DiT-repo-layout state dict (with its stored pos_embed), every tensor random."""
    state = randomize_(DiT(DIT), seed=seed).state_dict()
    state["pos_embed"] = torch.zeros(1, (DIT.input_size // 2) ** 2, DIT.hidden_size)
    return state


def modulation_gap(pixart: PixArt, dit: DiT, t: float = 500.0) -> float:
    """Largest |PixArt modulation - DiT null-class modulation| over blocks and the final layer."""
    with torch.no_grad():
        tt = torch.tensor([t])
        c = dit.t_embedder(tt) + dit.y_embedder(torch.tensor([dit.config.null_class]))
        temb = pixart.t_embedder(tt)
        t0 = pixart.t_block(temb)
        gaps = []
        for ours, theirs in zip(pixart.blocks, dit.blocks, strict=True):
            gaps.append((ours.modulation(t0, t0.dtype)[0] - theirs.adaLN_modulation(c).reshape(6, -1)).abs().max())
        final_ours = pixart.final_layer.scale_shift_table + temb
        final_theirs = dit.final_layer.adaLN_modulation(c).reshape(2, -1)
        gaps.append((final_ours - final_theirs).abs().max())
    return max(g.item() for g in gaps)


def build(state_dict_seed=0):
    dit_state = dit_checkpoint(state_dict_seed)
    dit = DiT(DIT)
    dit.load_state_dict({k: v for k, v in dit_state.items() if k != "pos_embed"})
    config, pixart_state = dit_to_pixart(dit_state, caption_channels=48, max_length=8, num_heads=3)
    pixart = PixArt(config)
    pixart.load_state_dict(pixart_state, strict=True)
    return dit.eval(), pixart.eval()


def test_modulation_at_t500_equals_dit_null_class():
    dit, pixart = build()
    assert modulation_gap(pixart, dit) < 1e-5
    assert modulation_gap(pixart, dit, t=100.0) > 1e-3  # exact at t* only, by design


def test_a_wrong_table_fails_the_check():
    dit, pixart = build()
    with torch.no_grad():
        pixart.blocks[1].scale_shift_table[4, 7] += 1e-2
    assert modulation_gap(pixart, dit) > 5e-3


def test_whole_model_at_t500_is_dit_null_class():
    """Cross-attention starts at zero, so PixArt(x, 500, any caption) == DiT(x, 500, null class)."""
    dit, pixart = build()
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        theirs = dit(x, torch.tensor([500, 500]), torch.tensor([DIT.null_class] * 2))
        ours = pixart(x, torch.tensor([500, 500]), torch.randn(2, 5, 48), torch.ones(2, 5))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_micro_conditioned_pixart_at_t500_is_dit_null_class_too():
    """PixArtMS's size and aspect embedders are new: at random they moved the output at t* (6e-2 here)."""
    dit_state = dit_checkpoint()
    dit = DiT(DIT)
    dit.load_state_dict({k: v for k, v in dit_state.items() if k != "pos_embed"})
    config, state = dit_to_pixart(dit_state, caption_channels=48, max_length=8, num_heads=3, micro_conditions=True)
    pixart = PixArt(config)
    pixart.load_state_dict(state, strict=True)
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        theirs = dit.eval()(x, torch.tensor([500, 500]), torch.tensor([DIT.null_class] * 2))
        ours = pixart.eval()(
            x,
            torch.tensor([500, 500]),
            torch.randn(2, 5, 48),
            torch.ones(2, 5),
            img_hw=torch.tensor([[128.0, 256.0]] * 2),
            aspect_ratio=torch.tensor([0.5, 0.5]),
        )
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_shared_weights_are_copied_and_new_ones_fresh():
    dit_state = dit_checkpoint()
    _, state = dit_to_pixart(dit_state, caption_channels=48, max_length=8, num_heads=3)
    for key in (
        "x_embedder.proj.weight",
        "t_embedder.mlp.2.bias",
        "blocks.2.attn.qkv.weight",
        "blocks.0.mlp.fc2.weight",
        "final_layer.linear.weight",
    ):
        assert torch.equal(state[key], dit_state[key]), key
    assert torch.count_nonzero(state["blocks.0.cross_attn.proj.weight"]) == 0


def test_loading_a_dit_as_pixart_points_to_convert(tmp_path):
    torch.save(dit_checkpoint(), tmp_path / "DiT-XL-2-256x256.pt")
    # the command as it stands makes a T5-XXL-wide PixArt: a MiniLM stage could not start from it
    match = "(?s)stage 1.*draws no image from text.*pixart convert.*--caption-channels and --max-length.*init_from"
    with pytest.raises(WeightsError, match=match):
        load_transformer(tmp_path / "DiT-XL-2-256x256.pt")


def test_convert_takes_a_dit_training_checkpoints_ema_with_ema_and_refuses_config(tmp_path, capsys):
    """`pixart convert step-N.pt --ema` used to convert the raw weights of a stage-1 checkpoint."""
    import dataclasses

    from safetensors.torch import load_file

    from pixart.cli.main import main

    model, ema = randomize_(DiT(DIT), seed=1), randomize_(DiT(DIT), seed=2)
    checkpoint = tmp_path / "step-0000010.pt"
    config = {"stage": "class", "dit": dataclasses.asdict(DIT)}
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "config": config}, checkpoint)
    for flags, name in (([], "raw"), (["--ema"], "ema")):
        assert (
            main(["convert", str(checkpoint), "--to", "pixart", "--out", str(tmp_path / f"{name}.safetensors"), *flags])
            == 0
        )
    raw, converted = load_file(tmp_path / "raw.safetensors"), load_file(tmp_path / "ema.safetensors")
    key = "blocks.0.attn.qkv.weight"  # copied from the DiT as it is
    assert torch.equal(converted[key], ema.state_dict()[key]) and torch.equal(raw[key], model.state_dict()[key])
    (tmp_path / "config.json").write_text("{}")
    code = main(
        [
            "convert",
            str(checkpoint),
            "--to",
            "pixart",
            "--out",
            str(tmp_path / "x.safetensors"),
            "--config",
            str(tmp_path / "config.json"),
        ]
    )
    assert code == 2 and "--config is for PixArt weights" in capsys.readouterr().err


def test_a_dit_state_dict_without_pos_embed_or_config_is_refused(tmp_path, capsys):
    """Its sample size was guessed as 32 (this DiT's is 16): the PixArt then differed from the DiT's null
    class at t=500 by about half its output. Now refused, naming what would tell the size."""
    from pixart.cli.main import main

    bare = {k: v for k, v in dit_checkpoint().items() if k != "pos_embed"}  # what torch.save(dit.state_dict()) holds
    with pytest.raises(WeightsError, match="holds no pos_embed, so its sample size is unknown"):
        dit_to_pixart(bare, caption_channels=48, max_length=8, num_heads=3)
    torch.save(bare, tmp_path / "dit_bare.pt")
    out = tmp_path / "x.safetensors"
    code = main(["convert", str(tmp_path / "dit_bare.pt"), "--to", "pixart", "--out", str(out), "--num-heads", "3"])
    assert code == 2 and "holds no pos_embed" in capsys.readouterr().err
    assert not out.exists()


def test_a_dit_missing_or_adding_weights_is_refused_by_name(tmp_path, capsys):
    """A DiT without a shared weight converted "successfully", that weight left at PixArt's fresh init; one
    without an adaLN weight ended in a KeyError traceback; another variant's extra keys were dropped unsaid."""
    from pixart.cli.main import main

    cases = {
        "blocks.1.attn.qkv.weight": "missing keys (1): ['blocks.1.attn.qkv.weight']",
        "final_layer.adaLN_modulation.1.weight": "missing keys (1): ['final_layer.adaLN_modulation.1.weight']",
    }
    for key, named in cases.items():
        state = {k: v for k, v in dit_checkpoint().items() if k != key}
        with pytest.raises(
            WeightsError, match=re.escape(f"the DiT checkpoint does not match the architecture: {named}")
        ):
            dit_to_pixart(state, caption_channels=48, max_length=8, num_heads=3)
        torch.save(state, tmp_path / "dit.pt")
        out = tmp_path / "x.safetensors"
        assert main(["convert", str(tmp_path / "dit.pt"), "--to", "pixart", "--out", str(out), "--num-heads", "3"]) == 2
        assert named in capsys.readouterr().err and not out.exists()
    extra = {**dit_checkpoint(), "blocks.0.attn.q_norm.weight": torch.ones(32)}
    with pytest.raises(WeightsError, match=re.escape("unexpected keys (1): ['blocks.0.attn.q_norm.weight']")):
        dit_to_pixart(extra, caption_channels=48, max_length=8, num_heads=3)

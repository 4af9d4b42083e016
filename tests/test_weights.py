"""Weights: equality with diffusers on the same random weights, lossless round trips, strict errors."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import randomize_, varied_mask
from safetensors.torch import load_file, save_file
from test_model import numpy_pos_embed

from pixart.model import TINY, TINY_MS, PixArt
from pixart.weights import WeightsError, detect_format, load_transformer, save_transformer

diffusers = pytest.importorskip("diffusers")

CASES = [
    # (config, latent h, w, micro-conditions)
    (TINY, 16, 16),
    (TINY, 12, 20),
    (dataclasses.replace(TINY, interpolation_scale=2.0), 16, 24),
    (TINY_MS, 16, 16),
    (dataclasses.replace(TINY_MS, interpolation_scale=1.0), 20, 12),
]


@pytest.mark.parametrize(("config", "h", "w"), CASES)
def test_output_equals_diffusers_with_same_random_weights(tmp_path, config, h, w):
    ours = randomize_(PixArt(config), seed=h * w).eval()
    save_transformer(ours, tmp_path, to="diffusers")
    reference = diffusers.PixArtTransformer2DModel.from_pretrained(tmp_path).eval()

    generator = torch.Generator().manual_seed(0)
    B, L = 4, 10
    x = torch.randn(B, 4, h, w, generator=generator)
    y = torch.randn(B, L, config.caption_channels, generator=generator)
    mask = varied_mask(B, L, [10, 6, 3, 1])  # includes a single valid (EOS-only) token
    t = torch.tensor([0.0, 17.5, 503.25, 999.0])  # float timesteps
    hw = torch.tensor([[128.0, 128.0], [96.0, 160.0], [256.0, 64.0], [512.0, 512.0]])  # distinct per sample
    ar = torch.tensor([1.0, 0.6, 4.0, 1.0])
    with torch.no_grad():
        got = ours(x, t, y, mask, img_hw=hw, aspect_ratio=ar)
        added = {"resolution": hw, "aspect_ratio": ar[:, None]} if config.micro_conditions else None
        expected = reference(
            x,
            encoder_hidden_states=y,
            timestep=t,
            encoder_attention_mask=mask,
            added_cond_kwargs=added or {"resolution": None, "aspect_ratio": None},
        ).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_diffusers_folder_loads_strictly_in_diffusers(tmp_path):
    ours = randomize_(PixArt(TINY_MS)).eval()
    save_transformer(ours, tmp_path, to="diffusers")
    reference = diffusers.PixArtTransformer2DModel.from_pretrained(tmp_path)
    from safetensors.torch import load_file

    written = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    theirs = reference.state_dict()
    assert set(written) == set(theirs)  # nothing missing, nothing extra
    for key, value in written.items():
        assert torch.equal(theirs[key], value), key


def official_state(config, seed=0) -> dict[str, torch.Tensor]:
    """A synthetic official checkpoint: every tensor random, plus the official numpy pos_embed."""
    state = randomize_(PixArt(config), seed=seed).state_dict()
    grid = config.base_size
    pos = numpy_pos_embed(config.hidden_size, grid, grid, grid, config.interpolation_scale)
    state["pos_embed"] = torch.from_numpy(pos).float()[None]
    return state


def test_an_official_file_without_a_null_caption_loads_with_zeros_as_diffusers_weights_do(tmp_path):
    """PixArt-Sigma's diffusers-to-official converter writes no y_embedding (the official loader is not strict):
    such a .pth could not be read at all, even with --config. It reads as diffusers weights do: zeros there,
    which generate reads as "guide with the encoded empty prompt"."""
    original = official_state(TINY)
    del original["y_embedder.y_embedding"]
    torch.save({"state_dict": original}, tmp_path / "no-null.pth")
    model = load_transformer(tmp_path / "no-null.pth", config=TINY)
    state = model.state_dict()
    assert not state["y_embedder.y_embedding"].any() and state["y_embedder.y_embedding"].shape == (16, 48)
    assert all(torch.equal(state[key], original[key]) for key in original if key != "pos_embed")
    inferred = load_transformer(tmp_path / "no-null.pth", config=dataclasses.replace(TINY, max_length=120))
    assert inferred.config.max_length == 120  # the length the config says (else the official family's 120)


@pytest.mark.parametrize(
    ("config", "dtype"),
    [(TINY, torch.float32), (TINY_MS, torch.float32), (TINY, torch.float16), (TINY, torch.bfloat16)],
)
def test_round_trip_official_ours_diffusers_official_is_identity(tmp_path, config, dtype):
    """Every tensor and its dtype (an fp16 file's pos_embed came back fp32)."""
    original = {key: value.to(dtype) for key, value in official_state(config).items()}
    torch.save({"state_dict": original}, tmp_path / "official.pth")

    first = load_transformer(tmp_path / "official.pth", config=config)
    save_transformer(first, tmp_path / "ours.safetensors", to="pixart")
    second = load_transformer(tmp_path / "ours.safetensors")
    assert second.config == config
    save_transformer(second, tmp_path / "diffusers", to="diffusers")
    third = load_transformer(tmp_path / "diffusers")
    assert third.config == config
    save_transformer(third, tmp_path / "back.pth", to="official")

    back = torch.load(tmp_path / "back.pth", weights_only=True)["state_dict"]
    assert set(back) == set(original)
    for key, value in original.items():
        assert back[key].dtype == value.dtype, key
        assert torch.equal(back[key], value), key


def test_official_config_is_read_from_shapes(tmp_path):
    # A width-144 model (2 heads of 72) at "1024 px": interpolation 2 and micro-conditions inferred.
    config = dataclasses.replace(TINY_MS, hidden_size=144, num_heads=2, input_size=128, interpolation_scale=2.0)
    state = official_state(config)
    torch.save({"state_dict": state, "state_dict_ema": state}, tmp_path / "ms.pth")
    model = load_transformer(tmp_path / "ms.pth", use_ema=True)
    assert model.config == config
    state.pop("csize_embedder.mlp.0.weight")  # fewer keys: not micro-conditions any more -> mismatch
    torch.save(state, tmp_path / "bare.pth")
    with pytest.raises(WeightsError, match=r"missing keys .*csize_embedder"):
        load_transformer(tmp_path / "bare.pth", config=config)


def test_an_official_checkpoint_gives_its_raw_or_its_ema_weights_as_asked(tmp_path):
    """The official trainer saves both sets; the test above holds the same tensors in each, so a swap of the
    two would pass it."""
    raw, ema = official_state(TINY, seed=1), official_state(TINY, seed=2)  # every tensor differs but pos_embed
    torch.save({"state_dict": raw, "state_dict_ema": ema}, tmp_path / "both.pth")
    for use_ema, expected in ((False, raw), (True, ema)):
        state = load_transformer(tmp_path / "both.pth", config=TINY, use_ema=use_ema).state_dict()
        assert torch.equal(state["blocks.1.mlp.fc2.weight"], expected["blocks.1.mlp.fc2.weight"]), use_ema
        assert torch.equal(state["y_embedder.y_embedding"], expected["y_embedder.y_embedding"]), use_ema


def test_dtype_and_bare_state_dict(tmp_path):
    torch.save(official_state(TINY), tmp_path / "bare.pth")
    model = load_transformer(tmp_path / "bare.pth", config=TINY, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_mismatch_names_missing_unexpected_and_misshaped_keys(tmp_path):
    state = official_state(TINY)
    state.pop("blocks.0.attn.proj.bias")
    state["blocks.0.extra.weight"] = torch.zeros(1)
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(3, 3)
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as info:
        load_transformer(tmp_path / "bad.pth", config=TINY)
    message = str(info.value)
    assert "missing keys (1): ['blocks.0.attn.proj.bias']" in message
    assert "unexpected keys (1): ['blocks.0.extra.weight']" in message
    assert "blocks.1.mlp.fc1.weight: checkpoint (3, 3) vs model (384, 96)" in message


def test_errors_for_missing_unknown_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_transformer(tmp_path / "nope.pth")
    (tmp_path / "weights.txt").write_text("hello")
    with pytest.raises(WeightsError, match="unknown weights format"):
        detect_format(tmp_path / "weights.txt")
    save_file({"encoder.layer.0.weight": torch.zeros(2)}, tmp_path / "bert.safetensors")
    with pytest.raises(WeightsError, match="does not hold a PixArt transformer"):
        load_transformer(tmp_path / "bert.safetensors")
    (tmp_path / "pickle.pth").write_bytes(b"not a zip or pickle")
    with pytest.raises(WeightsError, match="cannot read"):
        load_transformer(tmp_path / "pickle.pth")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(WeightsError, match="neither"):
        load_transformer(tmp_path / "empty_dir")
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "run" / "final_ema.safetensors")  # a training run
    with pytest.raises(WeightsError, match="is a training run: give its weights, .*final_ema.safetensors"):
        load_transformer(tmp_path / "run")
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "demo" / "model" / "transformer.safetensors")
    demo_folder = r"demo is not a model but holds one \(a demo's folder\?\): give .*demo/model$"
    with pytest.raises(WeightsError, match=demo_folder):
        load_transformer(tmp_path / "demo")  # `pixart demo`'s --out, whose model is model/ (review)


def test_code_in_a_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="holds Python objects besides tensors, which pixart never unpickles") as e:
        load_transformer(tmp_path / "evil.pth")
    assert "if you trust the file, keep its weights alone" in str(e.value)  # and how to get at them
    torch.save({"state_dict": Evil()}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError, match="holds Python objects besides tensors, which pixart never unpickles"):
        load_transformer(tmp_path / "legacy.pth")  # a pickle: not taken for text


def test_a_file_that_is_no_torch_file_at_all_says_what_it_is(tmp_path):
    """A failed download's HTML page saved as PixArt-XL-2-512x512.pth was refused as a file holding Python
    objects that "could run code" (review): torch's weights-only refusal of any bytes it cannot unpickle."""
    page = tmp_path / "PixArt-XL-2-512x512.pth"
    page.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    with pytest.raises(WeightsError, match=r"is an HTML page, not a checkpoint .a download that saved an error"):
        load_transformer(page)
    (tmp_path / "notes.pth").write_text("lr 1e-4, 12k steps")
    with pytest.raises(WeightsError, match=r"is text, not a torch checkpoint: it starts 'lr 1e-4, 12k steps'"):
        load_transformer(tmp_path / "notes.pth")
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "weights.safetensors")
    (tmp_path / "weights.safetensors").rename(tmp_path / "weights.pth")
    with pytest.raises(WeightsError, match=r"is a safetensors file: rename it to weights.safetensors"):
        load_transformer(tmp_path / "weights.pth")
    (tmp_path / "binary.pth").write_bytes(bytes([0xFF, 0xFE, 0x00, 0x81]) * 8)
    with pytest.raises(WeightsError, match=r"not a torch checkpoint .neither a zip archive nor a pickle"):
        load_transformer(tmp_path / "binary.pth")


def test_a_diffusers_folder_of_another_model_is_named_by_its_class(tmp_path):
    """A pipeline's vae/ given as the model was taken for transformer weights (config.json beside
    diffusion_pytorch_model.safetensors) and asked for --vae and --text-encoder (review)."""
    from tiny_models import tiny_vae

    tiny_vae().save_pretrained(tmp_path / "vae")
    with pytest.raises(WeightsError, match=r"vae holds a diffusers AutoencoderKL, not a PixArt transformer: pass it"):
        detect_format(tmp_path / "vae")
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "transformer", to="diffusers")
    assert detect_format(tmp_path / "transformer") == "diffusers"
    config = json.loads((tmp_path / "transformer" / "config.json").read_text())
    assert config["_class_name"] == "PixArtTransformer2DModel"
    for older in ("Transformer2DModel", None):  # diffusers before 0.28 named it so; a config without a name
        (tmp_path / "transformer" / "config.json").write_text(json.dumps({**config, "_class_name": older}))
        assert detect_format(tmp_path / "transformer") == "diffusers"


def test_corrupt_and_cut_short_files_are_one_error_naming_them(tmp_path):
    """Each a WeightsError (the CLI prints it as one line) that names the file; the safetensors and JSON
    parse errors used to escape as tracebacks, and torch's advice to set weights_only=False was passed on."""
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "whole.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "whole.safetensors").read_bytes()[:50])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04" + bytes(range(100)))
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "d", to="diffusers")
    (tmp_path / "d" / "config.json").write_text('{"num_layers": 2,')
    cases = {
        "cut.safetensors": "cut.safetensors: Error while deserializing header",
        "empty.pth": "empty.pth as a tensor-only checkpoint: the file is empty",
        "corrupt.pth": "corrupt.pth as a tensor-only checkpoint: RuntimeError: PytorchStreamReader failed",
        "d": "d/config.json: Expecting property name",
    }
    for name, message in cases.items():
        with pytest.raises(WeightsError, match=message) as caught:
            load_transformer(tmp_path / name)
        assert "weights_only=False" not in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"), [("norm_eps", 0.01), ("activation_fn", "gelu"), ("upcast_attention", True)]
)
def test_a_diffusers_config_computing_another_model_is_refused(tmp_path, field, value):
    """These fields were not read: such a folder loaded as a PixArt that computes otherwise (norm_eps 1e-2
    moved the output by 1.25 against diffusers' own model of the folder)."""
    save_transformer(randomize_(PixArt(TINY)), tmp_path / "d", to="diffusers")
    load_transformer(tmp_path / "d")  # as written: loads
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    (tmp_path / "d" / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(WeightsError, match=f"diffusers config has {field}={value!r}; PixArt computes with"):
        load_transformer(tmp_path / "d")


def test_a_diffusers_folder_with_pickled_weights_loads(tmp_path):
    """diffusion_pytorch_model.bin (save_pretrained without safetensors): the file was read as safetensors
    ("header too large, a corrupt file") and the folder was "neither" format."""
    from safetensors.torch import load_file

    model = randomize_(PixArt(TINY), seed=4)
    save_transformer(model, tmp_path / "d", to="diffusers")
    torch.save(
        load_file(tmp_path / "d" / "diffusion_pytorch_model.safetensors"),
        tmp_path / "d" / "diffusion_pytorch_model.bin",
    )
    (tmp_path / "d" / "diffusion_pytorch_model.safetensors").unlink()
    for path in (tmp_path / "d", tmp_path / "d" / "diffusion_pytorch_model.bin"):
        loaded = load_transformer(path)
        for key, value in model.state_dict().items():  # the null caption from null_caption.safetensors
            assert torch.equal(loaded.state_dict()[key], value), (path, key)


def test_pipeline_folder_with_transformer_subfolder(tmp_path):
    model = randomize_(PixArt(TINY)).eval()
    save_transformer(model, tmp_path / "transformer", to="diffusers")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    loaded = load_transformer(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_a_diffusers_weights_file_is_read_with_the_config_beside_it(tmp_path):
    """The file diffusers names diffusion_pytorch_model.safetensors, given alone; used to be a TypeError."""
    import shutil

    model = randomize_(PixArt(TINY)).eval()
    save_transformer(model, tmp_path / "transformer", to="diffusers")
    loaded = load_transformer(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    for key, value in model.state_dict().items():
        if key != "y_embedder.y_embedding":  # diffusers has no slot for it; the sidecar is the folder's
            assert torch.equal(loaded.state_dict()[key], value), key
    # a variant's file under its own name reads with the config.json beside it (it was "without their config")
    variant = tmp_path / "transformer" / "diffusion_pytorch_model.fp16.safetensors"
    (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").rename(variant)
    assert torch.equal(load_transformer(variant).state_dict()[key], loaded.state_dict()[key])
    (tmp_path / "alone").mkdir()
    shutil.copy(variant, tmp_path / "alone" / "w.safetensors")
    with pytest.raises(WeightsError, match="diffusers transformer weights without their config.json"):
        load_transformer(tmp_path / "alone" / "w.safetensors")


@pytest.mark.parametrize("sample_size", [32, 64, 128])
def test_a_diffusers_config_without_interpolation_scale_gets_diffusers_own(tmp_path, sample_size):
    """Published configs may leave interpolation_scale unset (null): diffusers then derives it from
    sample_size, max(sample_size // 64, 1), 2 at 1024 px; the position embedding must be the one diffusers
    builds for that model (its pos_embed buffer, read from a diffusers model made here)."""
    from pixart.model.pos_embed import position_embedding
    from pixart.weights.configs import diffusers_config_to_ours

    theirs = diffusers.PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=12,  # width 24: micro-conditions (sample_size 128) split it in three
        in_channels=4,
        out_channels=8,
        cross_attention_dim=24,
        caption_channels=12,
        interpolation_scale=None,
    )
    data = {**theirs.config, "interpolation_scale": None}
    ours = diffusers_config_to_ours(data)
    assert ours.interpolation_scale == max(sample_size // 64, 1)
    grid = sample_size // 2
    built = position_embedding(
        24, grid, grid, ours.base_size, ours.interpolation_scale, device="cpu", dtype=torch.float32
    )
    torch.testing.assert_close(built.reshape(-1, 24), theirs.pos_embed.pos_embed.reshape(-1, 24), atol=1e-5, rtol=1e-5)


def test_the_samplers_are_configured_as_pixart_alpha_ships_them():
    """The schedulers' settings, against what PixArt-alpha's diffusers folders ship (scheduler_config.json:
    DPMSolverMultistepScheduler, order 2, dpmsolver++, linear betas 1e-4..0.02 over 1000 steps, epsilon)
    and the official sampler's order=2: the parity tests build both sides with build_scheduler, so a
    changed order or algorithm passed them."""
    from pixart.diffusion import build_scheduler

    config = build_scheduler("dpm-solver++").config
    expected = {
        "solver_order": 2,
        "algorithm_type": "dpmsolver++",
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
    }
    assert {key: config[key] for key in expected} == expected
    sa = build_scheduler("sa-solver").config
    assert (sa["predictor_order"], sa["corrector_order"], sa["algorithm_type"]) == (2, 2, "data_prediction")


def test_diffusers_config_without_out_channels_means_8_as_in_diffusers():
    from pixart.weights.configs import diffusers_config_to_ours

    base = {"caption_channels": 48, "sample_size": 8, "num_attention_heads": 2, "attention_head_dim": 8}
    assert diffusers_config_to_ours(base).learn_sigma  # 8 = 2 x 4 latent channels
    assert not diffusers_config_to_ours({**base, "out_channels": None}).learn_sigma  # null: in_channels
    assert diffusers.PixArtTransformer2DModel(**base, num_layers=1).out_channels == 8


def test_diffusers_folder_without_null_caption_gets_zeros(tmp_path):
    model = randomize_(PixArt(TINY)).eval()
    save_transformer(model, tmp_path, to="diffusers")
    (tmp_path / "null_caption.safetensors").unlink()
    loaded = load_transformer(tmp_path)
    assert np.count_nonzero(loaded.y_embedder.y_embedding.numpy()) == 0


def test_official_round_trip_keeps_what_shapes_cannot_say(tmp_path):
    """Head count of a non-XL width, caption_norm: the .pth we write carries our config, and loading prefers it."""
    config = dataclasses.replace(TINY_MS, hidden_size=144, num_heads=4, caption_norm=True)  # 4 heads of 36
    model = randomize_(PixArt(config)).eval()
    save_transformer(model, tmp_path / "ours.pth", to="official")
    back = load_transformer(tmp_path / "ours.pth")
    assert back.config == config
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_interpolation_scale_is_read_from_pos_embed_and_a_contradicting_config_refused(tmp_path):
    xl_heads = dataclasses.replace(TINY_MS, hidden_size=144, num_heads=2)  # 72 per head, as the official family
    for config in (xl_heads, dataclasses.replace(xl_heads, input_size=128, interpolation_scale=1.0)):
        torch.save({"state_dict": official_state(config)}, tmp_path / "o.pth")  # no stored config: shapes only
        assert load_transformer(tmp_path / "o.pth").config.interpolation_scale == config.interpolation_scale
    wrong = dataclasses.replace(config, input_size=64)
    with pytest.raises(WeightsError, match="pos_embed .* is not the one the given config computes"):
        load_transformer(tmp_path / "o.pth", config=wrong)


def test_training_checkpoints_and_legacy_torch_files_load(tmp_path):
    from pixart import config as config_io
    from pixart.train.config import TrainConfig

    model, ema = randomize_(PixArt(TINY), seed=1), randomize_(PixArt(TINY), seed=2)
    ema.y_embedder.y_embedding.copy_(model.y_embedder.y_embedding)  # a buffer: the EMA's is the model's
    step = {
        "model": model.state_dict(),
        "ema": {n: p.detach().clone() for n, p in ema.named_parameters()},  # as the trainer keeps it
        "optimizer": {},
        "step": 10,
        "config": config_io.to_dict(TrainConfig(model=TINY)),
    }
    torch.save(step, tmp_path / "step-0000010.pt")
    for use_ema, expected in ((False, model), (True, ema)):
        loaded = load_transformer(tmp_path / "step-0000010.pt", use_ema=use_ema)
        assert loaded.config == TINY
        for key, value in expected.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    torch.save({"state_dict": official_state(TINY)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert load_transformer(tmp_path / "legacy.pth", config=TINY).config == TINY


def test_a_stage_at_a_higher_resolution_starts_from_an_official_file_of_a_lower_one(tmp_path):
    """stage3-aesthetic-1024 from the released 512 px .pth: its stored pos_embed was checked against the
    new stage's grid and refused, though the pos_embed is computed, not loaded."""
    from pixart.train.config import TrainConfig
    from pixart.train.init import initialize_from

    torch.save({"state_dict": official_state(TINY, seed=3)}, tmp_path / "low.pth")
    higher = dataclasses.replace(TINY, input_size=2 * TINY.input_size)
    model = PixArt(higher)
    note = initialize_from(model, TrainConfig(model=higher, init_from=str(tmp_path / "low.pth")))
    assert note.startswith("official weights from")
    expected = official_state(TINY, seed=3)
    for key, value in model.state_dict().items():
        if key != "pos_embed":
            assert torch.equal(value, expected[key]), key


def test_models_diffusers_cannot_hold_are_refused_at_save(tmp_path):
    with pytest.raises(WeightsError, match="mlp_ratio 4"):
        save_transformer(PixArt(dataclasses.replace(TINY, mlp_ratio=2.0)), tmp_path / "d", to="diffusers")
    # a bare state dict with a key diffusers has no place for: refused, not dropped from the folder
    state = {**PixArt(TINY).state_dict(), "blocks.0.attn.q_norm.weight": torch.ones(32)}
    with pytest.raises(ValueError, match=r"keys with no diffusers equivalent: \['blocks.0.attn.q_norm.weight'\]"):
        save_transformer(state, tmp_path / "e", to="diffusers", config=TINY)
    assert not (tmp_path / "e").exists()


def test_use_ema_on_a_single_set_of_weights_is_refused_not_ignored(tmp_path):
    """A .safetensors file or a folder holds one set: the library used to hand back the raw weights silently."""
    from pixart.weights.io import read_dit

    path = tmp_path / "w.safetensors"
    save_transformer(PixArt(TINY), path)
    assert set(load_transformer(path).state_dict()) == set(PixArt(TINY).state_dict())
    with pytest.raises(WeightsError, match="holds one set of weights"):
        load_transformer(path, use_ema=True)
    with pytest.raises(WeightsError, match="holds one set of weights"):
        read_dit(path, use_ema=True)
    # diffusers' pickled .bin beside its config.json (a folder saved with safe_serialization=False): one set
    # too, where the file given alone was converted with --ema ignored
    save_transformer(PixArt(TINY), tmp_path / "d", to="diffusers")
    weights = tmp_path / "d" / "diffusion_pytorch_model.safetensors"
    bin_file = tmp_path / "d" / "diffusion_pytorch_model.bin"
    torch.save(load_file(weights), bin_file)
    weights.unlink()
    assert set(load_transformer(bin_file).state_dict()) == set(PixArt(TINY).state_dict())
    with pytest.raises(WeightsError, match="holds one set of weights"):
        load_transformer(bin_file, use_ema=True)


@pytest.mark.parametrize("damage", ["garbage", "cut"])
def test_a_corrupt_dit_safetensors_file_is_one_error_naming_it(tmp_path, damage):
    """A DiT's .safetensors (stage 2's init_from) is read by read_dit: a raw SafetensorError named no file."""
    from pixart.model.dit import DiT, DiTConfig
    from pixart.weights.io import read_dit

    path = tmp_path / "dit.safetensors"
    save_file(DiT(DiTConfig(input_size=8, depth=1, hidden_size=32, num_heads=2)).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(b"not weights at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(WeightsError, match=f"cannot read {path}: .*corrupt or cut-short"):
        read_dit(path)


def test_files_that_lack_what_their_format_holds_are_weights_errors(tmp_path):
    """A pixart file without its stored config or with another tool's fields, an official-looking file
    missing a tensor: KeyError and ValueError tracebacks before, now one WeightsError naming the file."""
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, tmp_path / "p.safetensors", metadata={"format": "pixart"})
    save_file(
        {"a": torch.zeros(1)}, tmp_path / "q.safetensors", metadata={"format": "pixart", "config": '{"depthx": 1}'}
    )
    torch.save(
        {"x_embedder.proj.weight": torch.zeros(8, 4, 2, 2), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)},
        tmp_path / "o.pth",
    )
    cases = {
        "p.safetensors": "it has no 'config'",
        "q.safetensors": "its stored config is not a PixArtConfig: unknown PixArtConfig fields \\['depthx'\\]",
        "o.pth": "it has no 'final_layer.linear.weight'",
    }
    for name, message in cases.items():
        with pytest.raises(WeightsError, match=f"{tmp_path / name}.*{message}"):
            load_transformer(tmp_path / name)


def test_a_diffusers_variant_folder_loads_as_diffusers_loads_it(tmp_path):
    """save_pretrained(variant="fp16") names its files diffusion_pytorch_model.fp16.safetensors, or shards
    listed by diffusion_pytorch_model.safetensors.index.fp16.json: such folders were "neither" a model."""
    import diffusers

    model = randomize_(PixArt(TINY_MS)).eval()
    save_transformer(model, tmp_path / "d", to="diffusers")
    theirs = diffusers.PixArtTransformer2DModel.from_pretrained(tmp_path / "d")
    theirs.save_pretrained(tmp_path / "single", variant="fp16")  # the name only: the weights stay fp32
    theirs.save_pretrained(tmp_path / "sharded", variant="fp16", max_shard_size="200KB")
    shards = sorted((tmp_path / "sharded").glob("*-of-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    for folder in ("single", "sharded"):
        assert detect_format(tmp_path / folder) == "diffusers", folder
        loaded = load_transformer(tmp_path / folder).state_dict()
        for key, value in model.state_dict().items():
            if key != "y_embedder.y_embedding":  # diffusers' folders carry no learned null caption
                assert torch.equal(loaded[key], value), (folder, key)
    with pytest.raises(WeightsError, match="is one shard of several: pass the folder"):
        load_transformer(shards[0])
    theirs.save_pretrained(tmp_path / "single", variant="bf16")
    with pytest.raises(WeightsError, match="several variants"):
        load_transformer(tmp_path / "single")


def test_a_config_field_of_the_wrong_type_is_refused_by_name():
    """A stored config of another tool (a number written as text) built a model that failed far away."""
    with pytest.raises(ValueError, match="hidden_size must be int, got '96'"):
        dataclasses.replace(TINY, hidden_size="96")
    with pytest.raises(ValueError, match="micro_conditions must be bool, got 1"):
        dataclasses.replace(TINY, micro_conditions=1)
    with pytest.raises(ValueError, match="depth must be int, got 2.0"):
        dataclasses.replace(TINY, depth=2.0)
    assert dataclasses.replace(TINY, interpolation_scale=2).interpolation_scale == 2  # a whole number is a number


def test_a_folder_with_shards_and_a_single_file_loads_the_shards_as_diffusers_does(tmp_path):
    """diffusers takes the index (and its shards) over a diffusion_pytorch_model.safetensors beside it; we
    read the single file, so the two loaded different weights from one folder without a word."""
    import diffusers

    single, sharded = randomize_(PixArt(TINY), seed=1).eval(), randomize_(PixArt(TINY), seed=2).eval()
    save_transformer(single, tmp_path / "both", to="diffusers")
    save_transformer(sharded, tmp_path / "d", to="diffusers")
    diffusers.PixArtTransformer2DModel.from_pretrained(tmp_path / "d").save_pretrained(
        tmp_path / "sharded", max_shard_size="100KB"
    )
    for part in (tmp_path / "sharded").iterdir():  # the shards and their index join the single file
        if part.name != "config.json":
            shutil.copy(part, tmp_path / "both" / part.name)
    theirs = diffusers.PixArtTransformer2DModel.from_pretrained(tmp_path / "both").state_dict()
    ours = load_transformer(tmp_path / "both").state_dict()
    assert torch.equal(theirs["proj_out.bias"], sharded.state_dict()["final_layer.linear.bias"])  # what diffusers takes
    assert torch.equal(ours["final_layer.linear.bias"], sharded.state_dict()["final_layer.linear.bias"])


def test_official_files_wrapped_otherwise_are_read_or_named_with_their_fix(tmp_path):
    """A None entry was a TypeError traceback; EMA weights alone were refused even with --ema; a {'model': ...}
    wrapper or DDP's 'module.' keys were 'not a state dict' with no way out named."""
    model = randomize_(PixArt(TINY)).eval()
    save_transformer(model, tmp_path / "o.pth", to="official")
    state = torch.load(tmp_path / "o.pth", weights_only=True)["state_dict"]
    torch.save({"state_dict_ema": state}, tmp_path / "ema-only.pth")
    for use_ema in (False, True):  # its one set, either way (as a bare state dict's)
        loaded = load_transformer(tmp_path / "ema-only.pth", use_ema=use_ema, config=TINY).state_dict()
        assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())
    cases = {
        "none.pth": ({"state_dict": None}, False, "its 'state_dict' entry is NoneType, not a state dict of tensors"),
        "ema-none.pth": ({"state_dict": state, "state_dict_ema": None}, True, "'state_dict_ema' entry is NoneType"),
        "wrapped.pth": (
            {"model": state, "step": 3},
            False,
            r"\(its entries: 'model', 'step'\); its 'model' entry holds tensors: save that entry alone",
        ),
        "ddp.pth": ({f"module.{k}": v for k, v in state.items()}, False, "every key starts with 'module.'"),
    }
    for name, (data, use_ema, message) in cases.items():
        torch.save(data, tmp_path / name)
        with pytest.raises(WeightsError, match=message):
            load_transformer(tmp_path / name, use_ema=use_ema, config=TINY)


def test_a_bare_official_state_dict_with_an_odd_pos_embed_is_one_error():
    """The training resolution is read off pos_embed: a non-square grid or another width was a RuntimeError
    traceback from inside the scale's comparison."""
    from pixart.weights.configs import infer_official_config, official_pos_embed

    config = dataclasses.replace(TINY, hidden_size=144, num_heads=2)  # 72 per head: the count is inferred
    state = {**PixArt(config).state_dict(), "pos_embed": official_pos_embed(config)}  # as official files hold it
    assert infer_official_config(state).input_size == config.input_size
    for shape in ((1, 50, 144), (64, 144), (1, 64, 96)):
        with pytest.raises(WeightsError, match=rf"pos_embed {re.escape(str(shape))} is not \(1, grid \* grid, 144\)"):
            infer_official_config({**state, "pos_embed": torch.zeros(shape)})


def test_save_transformer_refuses_names_it_could_not_read_back_and_folders_it_would_fill(tmp_path):
    """Python users (review): an official .pth named .safetensors read back as "header too large", our file
    without a suffix as "unknown weights format"; a second diffusers save into the same folder wrote every
    file, then failed renaming a hidden temporary onto it ("Directory not empty")."""
    from pixart.files import atomic_write

    model = randomize_(PixArt(TINY))
    for to, name in [("official", "w.safetensors"), ("pixart", "w"), ("pixart", "w.pth"), ("diffusers", "d.pth")]:
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / name))):
            save_transformer(model, tmp_path / name, to=to)
    with pytest.raises(ValueError, match=r"unknown weights layout 'onnx'; choose one of \('pixart', 'official'"):
        save_transformer(model, tmp_path / "w.onnx", to="onnx")
    with pytest.raises(TypeError, match="takes a PixArt or its state dict, got str"):
        save_transformer("model.pth", tmp_path / "w.pth", to="official")
    assert list(tmp_path.iterdir()) == []

    folder = save_transformer(model, tmp_path / "d", to="diffusers")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(FileExistsError, match=r"d is a folder holding files; .*choose another name"):
        save_transformer(randomize_(PixArt(TINY), seed=1), folder, to="diffusers")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and sorted(tmp_path.iterdir()) == [folder]
    (tmp_path / "empty").mkdir()  # an empty folder is written into, as before
    assert load_transformer(save_transformer(model, tmp_path / "empty", to="diffusers")).config == model.config

    # replace=False on a file that was there before: said so, not "appeared while this was written"
    (tmp_path / "mine.pth").write_text("my notes")
    with pytest.raises(FileExistsError, match="mine.pth already exists; it was kept and nothing was written"):
        atomic_write(tmp_path / "mine.pth", lambda tmp: Path(tmp).write_text("x"), replace=False)
    assert (tmp_path / "mine.pth").read_text() == "my notes"


def test_a_compiled_model_or_its_state_dict_saves_as_the_model(tmp_path):
    """torch.compile's wrapper was "needs config= when given a bare state dict", and its state dict's
    `_orig_mod.` keys were saved as they were, then refused on loading (every key missing and unexpected)."""
    model = randomize_(PixArt(TINY))
    compiled = torch.compile(model)
    save_transformer(compiled, tmp_path / "a.safetensors")
    save_transformer(compiled.state_dict(), tmp_path / "b.safetensors", config=model.config)
    for name in ("a.safetensors", "b.safetensors"):
        loaded = load_transformer(tmp_path / name).state_dict()
        assert loaded.keys() == model.state_dict().keys()
        assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())


def test_load_transformer_takes_a_dtype_by_name(tmp_path):
    """dtype="bfloat16" (as a config file says it) was torch's TypeError from deep in .to() (review)."""
    path = save_transformer(PixArt(TINY), tmp_path / "w.safetensors")
    assert load_transformer(path, dtype="bfloat16").dtype == load_transformer(path, dtype=torch.bfloat16).dtype
    assert load_transformer(path, dtype="torch.float16").dtype == torch.float16
    with pytest.raises(ValueError, match="dtype 'bf16' is not a torch dtype: e.g. torch.bfloat16 or 'bfloat16'"):
        load_transformer(path, dtype="bf16")


def test_the_sampling_record_is_read_from_a_model_folder_and_a_bad_one_is_named(tmp_path):
    """A model folder (the demo's model/, a flow model) loaded with load_transformer came without its record,
    so sample() drew it as an eps model; a hand-edited record was a JSONDecodeError, and a partial one
    (shift_base_tokens left out) failed later, in save_transformer (review)."""
    from pixart.modelfolder import ModelSpec, save_model_folder
    from pixart.weights.formats import SAMPLING_FILE

    model = randomize_(PixArt(TINY))
    spec = ModelSpec(text_encoder="minilm", objective="flow", sampler="flow-dpm-solver", flow_shift=3.0)
    folder = save_model_folder(tmp_path / "folder", model, spec)
    assert load_transformer(folder).sampling == {"objective": "flow", "flow_shift": 3.0, "shift_base_tokens": 0}

    diffusers_folder = save_transformer(load_transformer(folder), tmp_path / "d", to="diffusers")
    (diffusers_folder / SAMPLING_FILE).write_text('{"objective": "flow", "flow_shift": 2}')  # partial: defaults
    partial = load_transformer(diffusers_folder)
    assert partial.sampling == {"objective": "flow", "flow_shift": 2.0, "shift_base_tokens": 0}
    partial.sampling = {"objective": "flow"}  # set by hand, partly: saved with the defaults filled in
    assert load_transformer(save_transformer(partial, tmp_path / "p.safetensors")).sampling["flow_shift"] == 1.0
    for junk in [
        "{not json",
        '{"objective": "velocity"}',
        '{"objective": "flow", "flow_shift": -1}',
        "[]",
        '{"flow_shift": Infinity}',
    ]:
        (diffusers_folder / SAMPLING_FILE).write_text(junk)
        with pytest.raises(WeightsError, match=re.escape(f"{diffusers_folder} records how it samples as")):
            load_transformer(diffusers_folder)

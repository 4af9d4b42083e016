"""Text to image end to end on tiny offline models: diffusers folders, our folders, official weights."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import randomize_
from PIL import Image
from tiny_models import save_tiny_pipeline, save_tiny_t5, tiny_vae

from pixart.cli import main
from pixart.generate import TextToImage, micro_conditions
from pixart.generation_settings import GenerationError, Settings, check_request
from pixart.model import TINY, TINY_MS, PixArt
from pixart.modelfolder import ModelSpec, read_spec, save_model_folder
from pixart.outputs import CONTACT_SHEET
from pixart.weights import save_transformer

diffusers = pytest.importorskip("diffusers")
main_module = importlib.import_module("pixart.cli.main")


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-pixart")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pixart", *args], capture_output=True, text=True, timeout=300)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_generate_command_on_a_diffusers_folder_is_reproducible(pipeline_folder, tmp_path, monkeypatch):
    args = [
        "generate",
        "a red circle",
        "a blue square on the left",
        "--model",
        str(pipeline_folder),
        "--steps",
        "4",
        "--seed",
        "7",
        "--num-images",
        "2",
    ]
    first = run_cli(*args, "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    pngs = sorted((tmp_path / "a").glob("*.png"))
    assert len([p for p in pngs if p.name != "contact_sheet.png"]) == 4
    assert (tmp_path / "a" / "contact_sheet.png").is_file()
    image = sorted((tmp_path / "a").glob("0000-*.png"))[0]
    meta = json.loads(Image.open(image).text["parameters"])
    assert meta["prompt"] == "a red circle" and meta["seed"] == 7 and meta["steps"] == 4
    assert meta["dtype"] == "float32"  # a bf16 transformer draws another image from the same seed
    sidecar = json.loads(image.with_suffix(".json").read_text())
    assert sidecar == meta
    monkeypatch.chdir(pipeline_folder.parent)  # --model as typed relative to here: recorded absolute
    relative = [pipeline_folder.name if arg == str(pipeline_folder) else arg for arg in args]
    assert main([*relative, "--out", str(tmp_path / "b"), "--batch", "1"]) == 0  # other batching, same pixels
    for a in (tmp_path / "a").glob("0*.png"):
        assert np.array_equal(pixels(a), pixels(tmp_path / "b" / a.name)), a.name
    assert json.loads((tmp_path / "b" / image.name).with_suffix(".json").read_text())["model"] == str(pipeline_folder)


@pytest.mark.parametrize(("negative", "cfg"), [("", 4.5), ("a blurry photo", 4.5), ("", 0.5)])
def test_decoded_image_equals_diffusers_pipeline(pipeline_folder, negative, cfg):
    """Same folder, seed, negative prompt and guidance scale: identical uint8 pixels. Below 1 diffusers
    does not guide (the conditional branch alone), and neither do we on its models.

    Tolerance: 1 grey level. The transformer matches diffusers to ~1e-6 and the rest of the path is the
    same diffusers VAE and scheduler, so only a rounding flip at a .5 boundary could differ.
    """
    prompts = ["a red circle at the top left", "a green triangle"]
    ours = TextToImage.from_path(pipeline_folder).generate(
        prompts, Settings(steps=6, negative=negative or None, cfg_scale=cfg), seed=11, progress=False
    )
    pipe = diffusers.PixArtAlphaPipeline.from_pretrained(pipeline_folder)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        prompts,
        negative_prompt=negative,
        num_inference_steps=6,
        guidance_scale=cfg,
        height=32,
        width=32,
        generator=[torch.Generator().manual_seed(11 + k) for k in range(2)],
        clean_caption=False,
        use_resolution_binning=False,
    ).images
    for a, b in zip(ours, theirs, strict=True):
        assert np.abs(np.asarray(a.image).astype(int) - np.asarray(b).astype(int)).max() <= 1


def test_aspect_ratio_condition_is_the_bucket_key_officially_and_height_over_width_for_diffusers(tmp_path):
    """At a non-square size a PixArtMS diffusers folder must get what diffusers' pipeline sends (read here from
    its transformer call), not the bucket key official inference sends: 0.57 against 768/1344 = 0.5714."""
    folder = save_tiny_pipeline(tmp_path / "ms", config=dataclasses.replace(TINY_MS, input_size=128))
    pipe = diffusers.PixArtAlphaPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    sent = []
    pipe.transformer.register_forward_pre_hook(
        lambda _, args, kwargs: sent.append(kwargs["added_cond_kwargs"]), with_kwargs=True
    )
    pipe(
        "a red circle",
        height=24,
        width=40,
        num_inference_steps=2,
        guidance_scale=1.0,
        output_type="latent",
        use_resolution_binning=False,
        clean_caption=False,
    )
    ours = micro_conditions(read_spec(folder)[0], "0.57", 24, 40)
    torch.testing.assert_close(ours["aspect_ratio"].reshape(-1), sent[0]["aspect_ratio"].reshape(-1).float())
    torch.testing.assert_close(ours["img_hw"], sent[0]["resolution"].float())
    official = micro_conditions(ModelSpec(), "0.57", 768, 1344)
    assert official["aspect_ratio"].item() == pytest.approx(0.57)
    assert official["img_hw"].tolist() == [[768.0, 1344.0]]


def test_our_folder_and_official_weights_with_vae_and_text_encoder(tmp_path):
    """The same weights as an official .pth (its config read off its tensors) with --vae and --text-encoder, and
    as our model folder: the same images, pixel for pixel (official semantics in both: learned null caption)."""
    save_tiny_t5(tmp_path / "t5")
    tiny_vae().save_pretrained(tmp_path / "vae")
    model = randomize_(PixArt(TINY), std=0.05).eval()
    save_transformer(model, tmp_path / "official.pth", to="official")
    spec = ModelSpec(
        text_encoder="t5", text_encoder_path=str(tmp_path / "t5"), codec="sd-vae", codec_path="vae", text_max_length=16
    )
    (tmp_path / "ours").mkdir()
    tiny_vae().save_pretrained(tmp_path / "ours" / "vae")
    save_model_folder(tmp_path / "ours", model, spec)
    official = TextToImage.from_path(tmp_path / "official.pth", vae=tmp_path / "vae", text_encoder=tmp_path / "t5")
    ours = TextToImage.from_path(tmp_path / "ours")
    assert official.transformer.config == ours.transformer.config == TINY
    settings = Settings(steps=3)
    a = ours.generate(["a cat", "a red dog"], settings, seed=1, progress=False)
    b = official.generate(["a cat", "a red dog"], settings, seed=1, progress=False)
    for mine, theirs in zip(a, b, strict=True):
        assert mine.image.size == (32, 32) and mine.settings["sampler"] == theirs.settings["sampler"] == "dpm-solver++"
        assert np.array_equal(np.asarray(mine.image), np.asarray(theirs.image))
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(a[1].image))  # the prompts do reach the images


def learned_null_folder(tmp_path, **spec):
    """Our model folder (learned null caption, official semantics) with a tiny VAE; T5 at tmp_path/t5."""
    save_tiny_t5(tmp_path / "t5")
    model = randomize_(PixArt(TINY), std=0.05).eval()
    folder = tmp_path / "m"
    (folder / "vae").mkdir(parents=True)
    tiny_vae().save_pretrained(folder / "vae")
    save_model_folder(
        folder, model, ModelSpec(**{"text_encoder_path": str(tmp_path / "t5"), "codec_path": "vae", **spec})
    )
    return folder


def test_learned_null_and_empty_prompt_semantics_differ(tmp_path):
    pipe = TextToImage.from_path(learned_null_folder(tmp_path, text_max_length=16))
    learned = pipe.generate(["a dog"], Settings(steps=3), progress=False)[0]
    empty = pipe.with_spec(null_caption="empty-prompt").generate(["a dog"], Settings(steps=3), progress=False)[0]
    assert not np.array_equal(np.asarray(learned.image), np.asarray(empty.image))
    # A blank negative prompt is no negative prompt: the learned null caption, as the app's blank box.
    for blank in ("", "   "):
        result = pipe.generate(["a dog"], Settings(steps=3, negative=blank), progress=False)[0]
        assert np.array_equal(np.asarray(result.image), np.asarray(learned.image)), repr(blank)
        assert result.settings["negative"] is None
    # An empty prompt is the unconditional image: the learned null caption in both branches, so the guidance
    # scale changes nothing (it was the text encoder's features of "", which guidance pushed towards)
    unguided = np.asarray(pipe.generate([""], Settings(steps=3, cfg_scale=0.0), progress=False)[0].image)
    for prompt, cfg in (("", 4.5), ("  ", 7.0)):
        image = np.asarray(pipe.generate([prompt], Settings(steps=3, cfg_scale=cfg), progress=False)[0].image)
        assert np.abs(image.astype(int) - unguided).max() <= 1, (repr(prompt), cfg)


def test_sizes_aspects_and_their_errors(pipeline_folder):
    pipe = TextToImage.from_path(pipeline_folder)
    key, bucket, out = pipe.resolve_size(Settings(aspect="1:2"))
    assert float(key) == pytest.approx(0.5, abs=0.03) and out == bucket
    key, bucket, out = pipe.resolve_size(Settings(height=40, width=24))
    assert out == (40, 24)
    image = pipe.generate(["a cat"], Settings(height=40, width=24, steps=2), progress=False)[0].image
    assert image.size == (24, 40)
    # an output size: any side in 8..4096 (a multiple of 8 was asked for, refusing a 36x72 model's own sizes)
    assert pipe.resolve_size(Settings(height=1000, width=770))[2] == (1000, 770)
    for height, width in ((4, 64), (64, 5000)):
        with pytest.raises(GenerationError, match=f"each side of the size must lie in 8..4096 pixels, got {height}x"):
            pipe.resolve_size(Settings(height=height, width=width))
    with pytest.raises(GenerationError, match="unknown sampler"):
        pipe.generate(["x"], Settings(sampler="nope"), progress=False)
    with pytest.raises(GenerationError, match="is for flow models"):
        pipe.generate(["x"], Settings(sampler="flow-euler"), progress=False)
    with pytest.raises(GenerationError, match="steps must lie"):
        pipe.generate(["x"], Settings(steps=0), progress=False)


def test_empty_prompt_and_truncation_warning(pipeline_folder, tmp_path):
    long_prompt = " ".join(["red circle"] * 80)
    result = run_cli(
        "generate", "", long_prompt, "--model", str(pipeline_folder), "--out", str(tmp_path), "--steps", "2"
    )
    assert result.returncode == 0, result.stderr
    assert "longer than 120 tokens" in result.stderr and "tokens were dropped" in result.stderr


def test_cli_errors_name_the_fix(pipeline_folder, tmp_path, capsys):
    result = run_cli("generate", "x", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "new"))
    assert result.returncode == 2
    assert "huggingface-cli download" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "new").exists()  # refused before --out was made
    assert main(["generate", "x", "--model", str(pipeline_folder), "--out", str(tmp_path), "--size", "1000x7"]) == 2
    assert "each side of the size must lie in 8..4096 pixels, got 1000x7" in capsys.readouterr().err
    weights = tmp_path / "w.safetensors"
    save_transformer(PixArt(TINY), weights)
    assert main(["generate", "x", "--model", str(weights), "--out", str(tmp_path / "new" / "images")]) == 2
    err = capsys.readouterr().err
    assert "--vae" in err
    assert "--text-encoder" in err
    assert not (tmp_path / "new").exists()  # made, then removed again with its parent: the run failed
    (tmp_path / "kept").mkdir()
    assert main(["generate", "x", "--model", str(weights), "--out", str(tmp_path / "kept")]) == 2
    assert (tmp_path / "kept").is_dir()  # a folder that was there before stays
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()  # neither a model folder nor weights: said as such, not "pass --vae"
    assert main(["generate", "x", "--model", str(empty), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{empty} is a folder but holds neither transformer.safetensors" in err and "--vae" not in err


def test_minilm_loads_offline_with_token_features():
    from pixart.encoders import MiniLMEncoder

    encoder = MiniLMEncoder(max_length=12)
    out = encoder.encode(["a red circle", "a large blue square at the top left of the picture", ""])
    assert out.features.shape == (3, 12, 384)
    assert out.mask.tolist()[0] == [1] * 5 + [0] * 7  # [CLS] a red circle [SEP]
    assert out.mask[2].sum() == 2 and out.dropped[1] > 0
    # A real pretrained encoder, not random weights: related captions are closer than unrelated ones.
    texts = encoder.encode(["a red circle", "a crimson disc", "the quarterly tax report"])
    pooled = [(f * m[:, None]).sum(0) / m.sum() for f, m in zip(texts.features, texts.mask)]
    related = torch.cosine_similarity(pooled[0], pooled[1], dim=0)
    unrelated = torch.cosine_similarity(pooled[0], pooled[2], dim=0)
    assert related > unrelated + 0.1


def test_a_prompt_beyond_the_encoders_positions_is_counted_without_transformers_indexing_warning(capfd):
    """MiniLM has 512 positions; the untruncated count of a longer prompt is ours to report, not an error."""
    from pixart.encoders import MiniLMEncoder

    capfd.readouterr()
    out = MiniLMEncoder(max_length=12).encode(["word " * 600])
    assert out.dropped == [602 - 12]  # [CLS] + 600 words + [SEP], 12 kept
    assert "indexing errors" not in capfd.readouterr().err


def test_low_memory_frees_the_text_encoder_and_changes_nothing(pipeline_folder):
    pipe = TextToImage.from_path(pipeline_folder)
    normal = pipe.generate(["a red circle"], Settings(steps=3), seed=2, progress=False)[0]
    assert pipe._text_encoder is not None
    frugal = pipe.generate(["a red circle"], Settings(steps=3), seed=2, progress=False, low_memory=True)[0]
    assert pipe._text_encoder is None
    assert np.array_equal(np.asarray(normal.image), np.asarray(frugal.image))


@pytest.mark.slow
def test_compiled_transformer_draws_the_same_images(pipeline_folder):
    pipe = TextToImage.from_path(pipeline_folder)
    eager = pipe.generate(["a red circle", "two blue squares"], Settings(steps=3), seed=4, progress=False)
    pipe.compile()
    assert pipe.transformer._compiled_call_impl is not None  # nn.Module.compile: in place
    compiled = pipe.generate(["a red circle", "two blue squares"], Settings(steps=3), seed=4, progress=False)
    for a, b in zip(eager, compiled):
        assert np.abs(pixels_of(a) - pixels_of(b)).max() <= 1  # rounding of fused kernels, at most one level


def test_a_bf16_transformer_samples_from_an_fp32_state(pipeline_folder, monkeypatch):
    """The sampler's latents (and a solver's history) were kept in the transformer's dtype: in bf16 every
    step rounded them, 4-10x further from the exact path than an fp32 state (as the official inference
    keeps it) on the deterministic samplers. The model runs in bf16; what it returns is the sampler's fp32."""
    import pixart.generate as generate_module

    pipe = TextToImage.from_path(pipeline_folder, dtype=torch.bfloat16)
    seen = []
    real_sample = generate_module.sample

    def watched(model, noise, *args, **kwargs):
        latents = real_sample(model, noise, *args, **kwargs)
        seen.append((noise.dtype, latents.dtype))
        return latents

    monkeypatch.setattr(generate_module, "sample", watched)
    [image] = pipe.generate(["a red circle"], Settings(steps=2), seed=4, progress=False)
    assert pipe.transformer.dtype == torch.bfloat16 and image.settings["dtype"] == "bfloat16"
    assert seen == [(torch.float32, torch.float32)]


@pytest.mark.slow
def test_compiling_on_a_gpu_compiles_each_block_and_draws_the_same_images(pipeline_folder, monkeypatch):
    """On CUDA, compile() compiles the blocks, not the whole model (measured faster there; BENCHMARKS.md).

    No GPU here: the transformer only claims to be on one while compile() chooses, then draws on the CPU.
    """
    pipe = TextToImage.from_path(pipeline_folder)
    eager = pipe.generate(["a red circle"], Settings(steps=3), seed=4, progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(type(pipe.transformer), "device", property(lambda self: torch.device("cuda")))
        pipe.compile()
    assert pipe.transformer._compiled_call_impl is None
    assert all(block._compiled_call_impl is not None for block in pipe.transformer.blocks)
    compiled = pipe.generate(["a red circle"], Settings(steps=3), seed=4, progress=False)
    assert np.abs(pixels_of(eager[0]) - pixels_of(compiled[0])).max() <= 1


def pixels_of(result) -> np.ndarray:
    return np.asarray(result.image.convert("RGB")).astype(np.int16)


def test_vae_tiling_decodes_a_large_image_tile_by_tile(pipeline_folder, monkeypatch):
    """--vae-tiling: latents wider than the VAE's tile decode in overlapping tiles, blended at the seams."""
    settings = Settings(steps=2)  # the tiny model's 32 px bucket: 16x16 latents
    plain = TextToImage.from_path(pipeline_folder).generate(["a cat"], settings, seed=3, progress=False)[0]
    pipe = TextToImage.from_path(pipeline_folder, vae_tiling=True)
    vae, shapes = pipe.codec.vae, []
    vae.tile_latent_min_size, vae.tile_sample_min_size = 8, 16  # tiles of 8 latents: a 16x16 latent needs 3x3
    original = vae.tiled_decode
    monkeypatch.setattr(vae, "tiled_decode", lambda z, *a, **k: shapes.append(tuple(z.shape)) or original(z, *a, **k))
    tiled = pipe.generate(["a cat"], settings, seed=3, progress=False)[0]
    other = pipe.generate(["a cat"], settings, seed=4, progress=False)[0]  # tiled too, another seed
    assert shapes == [(1, 4, 16, 16)] * 2 and tiled.image.size == plain.image.size
    # each tile's GroupNorms see only their tile, so the image differs from the untiled one, but far
    # less than another seed's image does
    to_plain, to_other = (np.abs(pixels_of(tiled) - pixels_of(image)).mean() for image in (plain, other))
    assert to_plain < 0.4 * to_other, (to_plain, to_other)  # measured 7.1 against 40.3 levels


def test_t5_in_8_bits_encodes_close_to_full_precision(pipeline_folder):
    """--t5-8bit: bitsandbytes int8 linear layers (on a CPU too), features within a few percent of fp32."""
    import bitsandbytes

    full = TextToImage.from_path(pipeline_folder)
    eight = TextToImage.from_path(pipeline_folder, load_in_8bit=True)
    prompt = ["a red cube to the left of a blue sphere"]
    reference, quantized = full.text_encoder.encode(prompt), eight.text_encoder.encode(prompt)
    query = eight.text_encoder.model.encoder.block[0].layer[0].SelfAttention.q
    assert isinstance(query, bitsandbytes.nn.Linear8bitLt) and query.weight.dtype == torch.int8
    error = (quantized.features - reference.features).abs().max() / reference.features.abs().max()
    assert 0 < error < 0.05, error  # measured 1.5% of the largest feature
    image = eight.generate(["a cat"], Settings(steps=2), progress=False)[0].image
    assert image.size == (32, 32)


def test_samplers_that_cannot_denoise_in_one_step_refuse_it(pipeline_folder, tmp_path, capsys):
    pipe = TextToImage.from_path(pipeline_folder)
    with pytest.raises(GenerationError, match="sampler 'ddim' needs at least 10 steps, got 1"):
        pipe.generate(["x"], Settings(sampler="ddim", steps=1), progress=False)
    assert pipe.resolve_sampler(Settings(sampler="ddim", steps=10)) == ("ddim", 10)
    assert pipe.resolve_sampler(Settings(sampler="dpm-solver++", steps=1)) == ("dpm-solver++", 1)
    args = [
        "generate",
        "x",
        "--model",
        str(pipeline_folder),
        "--out",
        str(tmp_path),
        "--sampler",
        "euler",
        "--steps",
        "1",
    ]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "sampler 'euler' needs at least 2 steps, got 1" in error
    # checked before the model is known: a one-step sampler for each kind of model (a flow model's user was
    # sent to dpm-solver++, which the model then refused)
    assert "for eps (iddpm) models, dpm-solver++, sa-solver; for flow models, flow-euler, flow-dpm-solver" in error


def test_a_folders_own_scheduler_is_refused_a_step_count_that_samples_only_timestep_0(pipeline_folder, tmp_path):
    """A folder shipping DDIM took --steps 1 (its schedule [0]: the image was the starting noise), and 251
    (starting at t=750), where --sampler ddim refuses both."""
    import diffusers

    from pixart.diffusion.schedulers import training_schedule

    folder = tmp_path / "ddim-folder"
    shutil.copytree(pipeline_folder, folder)
    shutil.rmtree(folder / "scheduler")
    diffusers.DDIMScheduler(**training_schedule()).save_pretrained(folder / "scheduler")
    pipe = TextToImage.from_path(folder)
    with pytest.raises(GenerationError, match="samples only at timestep 0 at 1 steps, which does not denoise"):
        pipe.resolve_sampler(Settings(steps=1))
    assert pipe.resolve_sampler(Settings(steps=2)) == ("folder", 2)
    # leading spacing that starts low: 251 steps start at t=750, a quarter of the noise left in the image
    scheduler = diffusers.DDIMScheduler(**training_schedule())
    scheduler.set_timesteps(251)
    assert int(scheduler.timesteps.max()) == 750  # diffusers' own spacing, not only our reading of it
    with pytest.raises(GenerationError, match="starts at timestep 750 of 1000 at 251 steps .* use 250 steps"):
        pipe.resolve_sampler(Settings(steps=251))
    assert pipe.resolve_sampler(Settings(steps=250)) == ("folder", 250)
    assert pipe.resolve_sampler(Settings(steps=20)) == ("folder", 20)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the command gets as far as loading the model."""

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(TextToImage, "from_path", load)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--num-images", "0", "the number of images per prompt must be at least 1, got 0"),
        ("--batch", "0", "the batch size must be at least 1, got 0"),
        ("--size", "0x8", "--size: each side of a size must be positive, got '0x8'"),
        ("--size", "4x16", "each side of the size must lie in 8..4096 pixels, got 4x16"),
        ("--size", "8192x512", "each side of the size must lie in 8..4096 pixels, got 8192x512"),
        ("--cfg", "nan", "the guidance scale must be a finite number >= 0, got nan"),  # black images
        ("--cfg", "inf", "the guidance scale must be a finite number >= 0, got inf"),
        ("--seed", "-1", f"the seed must lie in 0..{2**63 - 1}, got -1"),
        ("--seed", str(2**63), f"the seed must lie in 0..{2**63 - 1}, got {2**63}"),  # overflowed after loading
        ("--device", "bogus", "--device 'bogus' is not a device"),
    ],
)
def test_bad_numbers_are_one_line_errors_before_the_model_loads(
    tmp_path, capsys, no_model_load, option, value, message
):
    assert main(["generate", "x", "--model", str(tmp_path), "--out", str(tmp_path / "out"), option, value]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--sampler", "ddim", "--steps", "1"], "sampler 'ddim' needs at least 10 steps, got 1"),
        (["--sampler", "dpm-solver"], "unknown sampler 'dpm-solver'"),
        (["--sampler", "dpmpp"], "flow-dpm-solver (or folder: a diffusers pipeline folder's own scheduler)"),
        (["--steps", "5000"], "steps must lie in 1..1000, got 5000"),  # the model's default sampler
        (["--aspect", "wide"], "aspect must look like H:W (e.g. 3:4), got 'wide'"),
        # the last image's seed would pass torch's range: said why the bound is lower (it was a bare range)
        (["--seed", str(2**63 - 1), "--num-images", "2"], f"0..{2**63 - 2} for 2 image(s) (image k takes seed + k)"),
    ],
)
def test_a_sampler_and_steps_that_cannot_work_are_refused_before_the_model_loads(
    tmp_path, capsys, no_model_load, options, message
):
    assert main(["generate", "x", "--model", str(tmp_path), "--out", str(tmp_path / "out"), *options]) == 2
    assert message in capsys.readouterr().err


def test_library_refuses_counts_that_make_nothing(pipeline_folder):
    pipe = TextToImage.from_path(pipeline_folder)
    with pytest.raises(GenerationError, match="number of images per prompt must be at least 1"):
        pipe.generate(["x"], Settings(steps=2), num_images=0, progress=False)
    with pytest.raises(GenerationError, match="batch size must be at least 1"):
        pipe.generate(["x"], Settings(steps=2), batch_size=0, progress=False)


def test_out_that_is_a_file_is_refused_before_the_model_loads(tmp_path, capsys, no_model_load):
    (tmp_path / "taken").write_text("")
    assert main(["generate", "x", "--model", str(tmp_path), "--out", str(tmp_path / "taken")]) == 2
    assert f"--out {tmp_path / 'taken'} is a file, not a folder" in capsys.readouterr().err


def test_out_that_takes_no_files_is_refused_before_the_model_loads(tmp_path, capsys, no_model_load):
    """A folder that exists but takes no file (/proc here; a read-only disk alike) used to pass the early
    check, so the images were made and only their saving failed."""
    assert main(["generate", "x", "--model", str(tmp_path), "--out", "/proc"]) == 2
    assert "cannot write in the folder --out /proc" in capsys.readouterr().err


def test_a_new_run_does_not_mix_with_an_earlier_one(pipeline_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a folder with other files is fine
    args = ["generate", "a red circle", "--model", str(pipeline_folder), "--steps", "2", "--out", str(out)]
    assert main([*args, "--num-images", "2"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "contact_sheet.png" in before and len(before) == 6
    capsys.readouterr()
    assert main([*args, "--seed", "9"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} already holds 5 file(s) of an earlier run" in err and "choose another --out" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing overwritten


def test_a_stopped_run_keeps_the_images_it_made(pipeline_folder, tmp_path, capsys, monkeypatch):
    """Every image was held until the last batch: a Ctrl-C or an out-of-memory error at batch N lost batches 1
    to N-1, and the emptied --out was removed. Each batch is written as it comes now, and the stop names the
    --skip that makes the rest (of several prompts too, stopped within a prompt)."""
    real = TextToImage.generate_batches

    def stopped_after_two(self, *args, **kwargs):
        for number, batch in enumerate(real(self, *args, **kwargs)):
            if number == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(TextToImage, "generate_batches", stopped_after_two)
    out = tmp_path / "out"
    args = ["generate", "a red circle", "a blue square", "--model", str(pipeline_folder), "--steps", "2"]
    args += ["--num-images", "3", "--batch", "2", "--out"]
    assert main([*args, str(out)]) == 130
    said = capsys.readouterr().err
    assert f"kept the 4 of 6 image(s) made before this stop in {out}; make the other 2 with the same command " in said
    assert "--skip 4 into another --out" in said
    whole_names = [f"000{k}-a-{'red-circle' if k < 3 else 'blue-square'}-seed{k}.png" for k in range(6)]
    made = sorted(p.name for p in out.glob("0*.png"))
    assert made == whole_names[:4], made
    assert all((out / name).with_suffix(".json").is_file() for name in made) and (out / CONTACT_SHEET).is_file()
    monkeypatch.setattr(TextToImage, "generate_batches", real)  # the same images as a run that was not stopped
    assert main([*args, str(tmp_path / "whole")]) == 0
    assert sorted(p.name for p in (tmp_path / "whole").glob("0*.png")) == whole_names
    for name in made:
        assert np.array_equal(pixels(out / name), pixels(tmp_path / "whole" / name)), name
    # ... and the command it suggests makes the rest: the whole run's last two, under the same names
    assert main([*args, str(tmp_path / "rest"), "--skip", "4"]) == 0
    assert sorted(p.name for p in (tmp_path / "rest").glob("0*.png")) == whole_names[4:]
    for name in whole_names[4:]:
        assert np.array_equal(pixels(tmp_path / "rest" / name), pixels(tmp_path / "whole" / name)), name
    # a stop of that rest counts from its own skip
    monkeypatch.setattr(TextToImage, "generate_batches", stopped_after_two)
    assert main([*args, str(tmp_path / "rest-of-rest"), "--skip", "1", "--batch", "1"]) == 130
    said = capsys.readouterr().err
    assert "kept the 2 of 5 image(s)" in said and "make the other 3 with the same command and --skip 3" in said
    # a stop at the contact sheet, every image made: nothing is left to make
    monkeypatch.setattr(TextToImage, "generate_batches", real)
    from pixart.outputs import ImageWriter

    real_finish, stops = ImageWriter.finish, []

    def stopped_once(self):
        if not stops:
            stops.append(True)
            raise KeyboardInterrupt
        return real_finish(self)

    monkeypatch.setattr(ImageWriter, "finish", stopped_once)
    assert main([*args, str(tmp_path / "all-made"), "--skip", "4"]) == 130
    said = capsys.readouterr().err
    assert "kept the 2 of 2 image(s) made before this stop" in said and "--skip" not in said, said


@pytest.mark.parametrize("skip", ["-1", "6"])
def test_skip_beyond_the_run_is_refused_before_the_model_loads(skip, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--num-images", "3", "--skip", skip, "--model", str(tmp_path / "none"), "--out", str(out)]
    code = main(["generate", "a", "b", *args])
    assert code == 2
    assert f"cannot skip {skip} of the run's 6 image(s): skip 0 to 5" in capsys.readouterr().err
    assert not out.exists()


def test_two_runs_into_one_folder_at_once_do_not_overwrite_each_other(pipeline_folder, tmp_path, capsys, monkeypatch):
    """Both passed the earlier-run check when they started together and wrote over each other's images."""
    import pixart.cli.generate as generate_command

    out = tmp_path / "out"
    args = ["generate", "a red circle", "--model", str(pipeline_folder), "--steps", "2", "--out", str(out)]
    assert main([*args, "--cfg", "2", "--num-images", "2"]) == 0
    theirs = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    monkeypatch.setattr(generate_command, "prepare_out", lambda out: None)  # started before the other wrote
    assert main([*args, "--cfg", "7", "--num-images", "2"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: {out / '0000-a-red-circle-seed0.png'} already exists; it was kept" in err, err
    assert "give each run its own --out" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == theirs
    # Runs of other prompts or seeds share no name: the run writing there holds --out, and a second is refused
    import fcntl

    from pixart.cli.generate import OUT_LOCK

    other = tmp_path / "other"
    other.mkdir()
    with open(other / OUT_LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run writing there holds it
        assert main([*args[:-1], str(other), "--seed", "5"]) == 2
    assert f"--out {other} is being written by another pixart generate run" in capsys.readouterr().err
    assert main([*args[:-1], str(other), "--seed", "5"]) == 0  # once it has let go
    assert not (other / OUT_LOCK).exists()  # the lock goes with the run


def test_the_contact_sheet_shows_thumbnails_of_the_first_images(tmp_path, monkeypatch):
    """200 images of 1024 px made a 230-megapixel sheet that Pillow refused to open (and the app spent half
    a request drawing one of eight 4096 px images)."""
    import pixart.outputs as outputs
    from pixart.generation_settings import GeneratedImage

    monkeypatch.setattr(outputs, "SHEET_IMAGES", 5)
    colours = [(255, 0, 0), (0, 255, 0)]
    results = [GeneratedImage(Image.new("RGB", (1024, 512), colours[k % 2]), "p", k, {}) for k in range(7)]
    paths = outputs.write_images(results, tmp_path)
    sheet = Image.open(tmp_path / CONTACT_SHEET)
    assert len(paths) == 7 and max(sheet.size) < 3 * outputs.SHEET_CELL + 100, sheet.size  # 3 x 2 cells
    assert sheet.getpixel((4 + 128, 4 + 128)) == (255, 0, 0)  # the first thumbnail, 256x128 in its cell
    assert sheet.getpixel((4 + 256 + 4 + 128, 4 + 128)) == (0, 255, 0)
    # small images (the demo's 36 px) drawn in cells wide enough for their labels: in a 36 px cell a label
    # wrapped at 8 characters and cut every seed from 10 on
    small = [GeneratedImage(Image.new("RGB", (36, 36), colours[k % 2]), "a red circle", k, {}) for k in range(4)]
    outputs.write_images(small, tmp_path / "small")
    sheet = Image.open(tmp_path / "small" / CONTACT_SHEET)
    assert sheet.width >= 2 * outputs.SHEET_MIN_CELL, sheet.size  # 2 x 2 cells
    assert sheet.getpixel((4 + 127, 4 + 64)) == (255, 0, 0)  # the first image fills its 128 px cell


@pytest.mark.parametrize(
    ("missing", "library", "cli", "given"),
    [
        ("text_encoder_path", "no T5 is bundled\\): pass --text-encoder DIR", "pass --text-encoder DIR", "t5"),
        # codec_path null (ModelSpec's default) with the SD VAE: a traceback once the transformer had loaded
        ("codec_path", "names the sd-vae codec but no folder or file for it", "pass --vae PATH", "vae"),
    ],
)
def test_a_model_folder_without_its_t5_or_codec_says_so_before_loading(
    tmp_path, capsys, monkeypatch, missing, library, cli, given
):
    from pixart import modelfolder

    folder = learned_null_folder(tmp_path, **{missing: None}, text_max_length=16)
    with monkeypatch.context() as patch:  # the spec alone decides: no weights are read
        patch.setattr(modelfolder, "load_transformer", lambda *a, **k: pytest.fail("weights loaded"))
        with pytest.raises(FileNotFoundError, match=library):
            modelfolder.load_components(folder)
    assert main(["generate", "x", "--model", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert cli in capsys.readouterr().err
    # --text-encoder / --vae fills the gap
    folders = {"t5": {"text_encoder": tmp_path / "t5"}, "vae": {"vae": folder / "vae"}}[given]
    pipe = TextToImage.from_path(folder, **folders)
    assert pipe.generate(["a dog"], Settings(steps=2), progress=False)[0].image.size == (32, 32)


def test_blank_lines_of_a_prompts_file_are_skipped(tmp_path, capsys):
    from pixart.cli.generate import read_prompts

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n   \na dog\n", encoding="utf-8")
    args = argparse.Namespace(prompts=["", "a cat"], prompts_file=prompts)
    assert read_prompts(args) == ["", "a cat", "a red circle", "a dog"]  # "" given explicitly stays
    assert f"skipped 2 blank line(s) of {prompts}" in capsys.readouterr().err
    prompts.write_bytes("a red car\u2028by the sea\r\nsecond\x0cprompt\n".encode())  # lines end at \n only
    assert read_prompts(argparse.Namespace(prompts=[], prompts_file=prompts)) == [
        "a red car\u2028by the sea",
        "second\x0cprompt",
    ]
    prompts.write_text("a red circle\nsecond\n", encoding="utf-8-sig")  # as Notepad saves: a byte-order mark first
    assert read_prompts(argparse.Namespace(prompts=[], prompts_file=prompts)) == ["a red circle", "second"]
    prompts.write_text("\n\n", encoding="utf-8")
    with pytest.raises(main_module.UserError, match=f"--prompts-file {prompts} holds no prompt"):
        read_prompts(argparse.Namespace(prompts=[], prompts_file=prompts))
    prompts.write_bytes(b"caf\xe9\n")  # Latin-1
    with pytest.raises(main_module.UserError, match=f"--prompts-file {prompts}: not UTF-8 text .*save it as UTF-8"):
        read_prompts(argparse.Namespace(prompts=[], prompts_file=prompts))
    # Windows' "Unicode" (UTF-16 little-endian) and big-endian UTF-16, each after its byte-order mark: refused before
    for data in (b"\xff\xfe" + "café\r\ndog\r\n".encode("utf-16-le"), b"\xfe\xff" + "café\ndog\n".encode("utf-16-be")):
        prompts.write_bytes(data)
        assert read_prompts(argparse.Namespace(prompts=[], prompts_file=prompts)) == ["café", "dog"]
    with pytest.raises(main_module.UserError, match=f"--prompts-file {tmp_path}: Is a directory"):
        read_prompts(argparse.Namespace(prompts=[], prompts_file=tmp_path))
    latin1 = b"caf\xe9 red circle".decode("utf-8", "surrogateescape")  # as Python hands over a shell's Latin-1
    from pixart.generation_settings import check_request

    with pytest.raises(GenerationError, match=r"the prompt 'caf\\udce9 red circle' is not UTF-8 text"):
        check_request(Settings(), prompts=["a cat", latin1])  # the CLI, the app and generate() all call it

    with pytest.raises(GenerationError, match=r"the negative prompt 'caf\\udce9 red circle' is not UTF-8 text"):
        check_request(Settings(negative=latin1))  # before loading: the tokenizer failed on it after


def test_a_text_encoder_that_does_not_fit_the_model_is_refused_before_sampling(tmp_path, monkeypatch):
    """MiniLM (384 wide) with a transformer reading 48-wide captions: once a shape error mid-sampling."""
    folder = learned_null_folder(tmp_path, text_encoder="minilm", text_encoder_path=None)
    import pixart.generate as generate_module

    loaded = []
    original = generate_module.load_components
    monkeypatch.setattr(generate_module, "load_components", lambda *a, **k: loaded.append(a) or original(*a, **k))
    with pytest.raises(GenerationError, match="8-bit loading is for T5; this model's text encoder is minilm"):
        TextToImage.from_path(folder, load_in_8bit=True)  # it was ignored, yet recorded with the images
    pixels = learned_null_folder(tmp_path / "pixels", text_encoder="minilm", text_encoder_path=None, codec="pixels")
    with pytest.raises(GenerationError, match="tiled decoding is for the SD VAE; this model's codec is pixels"):
        TextToImage.from_path(pixels, vae_tiling=True)  # the same: the shapes codec and pixels decode whole
    with pytest.raises(FileNotFoundError, match="generates pixels, with no codec: it takes no --vae"):
        TextToImage.from_path(pixels, vae=tmp_path / "some-vae")  # ignored, yet recorded with the images (review)
    assert loaded == []  # refused before the weights load
    TextToImage.from_path(folder)
    assert len(loaded) == 1  # (the count is of real loads)
    with pytest.raises(GenerationError, match="gives 384-wide features; this transformer reads 48-wide captions"):
        TextToImage.from_path(folder).generate(["x"], Settings(steps=2), progress=False)


def test_resize_and_crop_equals_diffusers_binning():
    """--size's final resize to the requested size: the same pixels as diffusers' resolution binning."""
    from diffusers.image_processor import PixArtImageProcessor

    from pixart.generate import resize_cover_crop_tensor

    images = torch.rand(1, 3, 256, 304, generator=torch.Generator().manual_seed(0))
    for height, width in [(448, 544), (300, 290), (256, 304), (512, 392), (1000, 40)]:
        ours = resize_cover_crop_tensor(images, height, width)
        theirs = PixArtImageProcessor.resize_and_crop_tensor(images, width, height)
        assert ours.shape == theirs.shape == (1, 3, height, width)
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    # 304 * (500 / 304) truncates to 499: diffusers' crop then keeps 1 column; ours keeps the full width.
    assert PixArtImageProcessor.resize_and_crop_tensor(images, 500, 333).shape[-1] == 1
    assert resize_cover_crop_tensor(images, 333, 500).shape == (1, 3, 333, 500)


def test_a_folders_scheduler_gets_the_step_range_then_the_repeat_check(pipeline_folder):
    """The diffusers folder's own DPM-Solver++: out of range is named as such (it was a numpy error from
    setting the scheduler), and 1000 steps, which repeat a noise level, are refused before sampling."""
    pipe = TextToImage.from_path(pipeline_folder)
    assert pipe.default_sampler() == "folder"
    for steps in (-3, 5000):
        with pytest.raises(GenerationError, match=f"steps must lie in 1..1000, got {steps}"):
            pipe.resolve_sampler(Settings(steps=steps))
    with pytest.raises(GenerationError, match="repeats a noise level at 1000 steps"):
        pipe.resolve_sampler(Settings(steps=1000))
    assert pipe.resolve_sampler(Settings(steps=999)) == ("folder", 999)


def test_samplers_the_model_cannot_drive_are_refused_before_sampling(pipeline_folder):
    """Both used to fail inside the sampling loop, after the prompts were encoded, with a TypeError."""
    pipe = TextToImage.from_path(pipeline_folder)
    pipe.scheduler_folder = None  # as one of our model folders, or bare weights: no scheduler of its own
    with pytest.raises(GenerationError, match="sampler 'folder' is a diffusers folder's own scheduler"):
        pipe.resolve_sampler(Settings(sampler="folder"))
    pipe.transformer.config = dataclasses.replace(pipe.transformer.config, learn_sigma=False)
    with pytest.raises(GenerationError, match="needs the learned variance this model does not predict"):
        pipe.resolve_sampler(Settings(sampler="iddpm"))
    assert pipe.resolve_sampler(Settings(sampler="dpm-solver++"))[0] == "dpm-solver++"


def test_a_folder_scheduler_that_needs_a_learned_variance_is_refused_without_one(pipeline_folder, tmp_path):
    """A folder's DDPM scheduler with learned_range variance over a transformer that predicts none failed
    inside diffusers' step (None + 1, a TypeError) after the prompts were encoded."""
    import diffusers

    from pixart.diffusion.schedulers import training_schedule

    pipe = TextToImage.from_path(pipeline_folder)
    diffusers.DDPMScheduler(**training_schedule(), variance_type="learned_range").save_pretrained(tmp_path)
    pipe.scheduler_folder = tmp_path
    assert pipe.resolve_sampler(Settings(sampler="folder", steps=10)) == ("folder", 10)  # it predicts one
    pipe.transformer.config = dataclasses.replace(pipe.transformer.config, learn_sigma=False)
    with pytest.raises(GenerationError, match=r"variance_type learned_range\) needs the learned variance"):
        pipe.resolve_sampler(Settings(sampler="folder", steps=10))


def test_a_folder_scheduler_refusing_the_step_count_is_a_generation_error(pipeline_folder, tmp_path):
    """PixArt-LCM ships an LCMScheduler, which takes at most 50 steps: its own ValueError escaped the CLI as a
    traceback (exit 1) after every check had passed."""
    import diffusers

    from pixart.diffusion.schedulers import training_schedule

    pipe = TextToImage.from_path(pipeline_folder)
    diffusers.LCMScheduler(**training_schedule()).save_pretrained(tmp_path)
    pipe.scheduler_folder = tmp_path
    assert pipe.resolve_sampler(Settings(steps=4)) == ("folder", 4)
    with pytest.raises(GenerationError, match=r"this model's scheduler \(LCMScheduler\) refuses 60 steps: .*50"):
        pipe.resolve_sampler(Settings(steps=60))


def test_a_step_count_that_is_not_a_whole_number_is_refused_before_a_model_loads():
    """Settings(steps=2.5) passed the range check and failed inside diffusers as a TypeError."""
    for steps in (2.5, True, "20"):
        with pytest.raises(GenerationError, match=re.escape(f"steps must be a whole number, got {steps!r}")):
            check_request(Settings(sampler="dpm-solver++", steps=steps))
        with pytest.raises(GenerationError, match="steps must be a whole number"):
            check_request(Settings(steps=steps))  # the sampler not known yet (the model's default)
    check_request(Settings(steps=np.int64(20)))  # a whole number of another type is one


def test_a_diffusers_transformer_as_bare_weights_draws_what_its_folder_draws(pipeline_folder, tmp_path):
    """diffusers weights carry no learned null caption: guidance must use the empty prompt, as in the folder.

    It used to guide against the all-zero y_embedding they load with (images off by up to 10 levels).
    """
    import shutil

    shutil.copytree(pipeline_folder / "text_encoder", tmp_path / "t5")
    for file in (pipeline_folder / "tokenizer").iterdir():  # a T5 folder for --text-encoder holds its tokenizer
        shutil.copy(file, tmp_path / "t5" / file.name)
    folder = TextToImage.from_path(pipeline_folder)
    weights, vae = pipeline_folder / "transformer", pipeline_folder / "vae"
    bare = TextToImage.from_path(weights, vae=vae, text_encoder=tmp_path / "t5")
    assert (bare.spec.null_caption, bare.spec.aspect_condition) == ("empty-prompt", "exact")
    settings = Settings(sampler="ddim", steps=10)
    a = folder.generate(["a red circle"], settings, seed=3, progress=False)[0]
    b = bare.generate(["a red circle"], settings, seed=3, progress=False)[0]
    assert np.abs(pixels_of(a) - pixels_of(b)).max() == 0


def test_a_sidecar_records_the_inputs_beside_the_model(tmp_path):
    """--vae, --text-encoder and --t5-8bit change the image: the PNG and its sidecar say them."""
    from pixart.generation_settings import GeneratedImage
    from pixart.outputs import write_images

    result = GeneratedImage(Image.new("RGB", (8, 8)), "a cat", 3, {"steps": 2, "dtype": "bfloat16"})
    extra = {"vae": "/models/vae", "text_encoder": "/models/t5", "t5_8bit": True}
    path = write_images([result], tmp_path, model="/models/weights.pth", extra=extra)[0]
    record = json.loads(path.with_suffix(".json").read_text())
    assert record == {
        "prompt": "a cat",
        "seed": 3,
        "steps": 2,
        "dtype": "bfloat16",
        "model": "/models/weights.pth",
        **extra,
    }
    assert json.loads(Image.open(path).text["parameters"]) == record


def test_file_names_call_only_an_empty_prompt_unconditional(tmp_path):
    """A prompt in another script (no ASCII letter) was named "...-unconditional-seedN.png"."""
    from pixart.generation_settings import GeneratedImage
    from pixart.outputs import OUTPUT_NAME, write_images

    results = [GeneratedImage(Image.new("RGB", (8, 8)), prompt, 3, {}) for prompt in ("一只猫", " ", "A red cat!")]
    names = [path.name for path in write_images(results, tmp_path)]
    assert names == ["0000-prompt-seed3.png", "0001-unconditional-seed3.png", "0002-a-red-cat-seed3.png"]
    assert all(OUTPUT_NAME.fullmatch(name) for name in names)


def test_every_option_that_changes_the_pixels_goes_into_the_sidecar():
    from pixart.cli.generate import register, remake_inputs

    parser = argparse.ArgumentParser()
    register(parser)
    plain = parser.parse_args(["a cat", "--model", "m", "--out", "o"])
    assert remake_inputs(plain) == {}
    given = parser.parse_args(["a cat", "--model", "m", "--out", "o", "--vae", "v", "--text-encoder", "t", "--t5-8bit"])
    absolute = {"vae": os.path.abspath("v"), "text_encoder": os.path.abspath("t")}  # sidecars outlive the cwd
    assert remake_inputs(given) == {**absolute, "t5_8bit": True}
    tiled = parser.parse_args(["a cat", "--model", "m", "--out", "o", "--vae-tiling"])
    assert remake_inputs(tiled) == {"vae_tiling": True}


def test_trainer_weights_say_how_they_sample(tmp_path, capsys):
    """Our trainer's final weights record the objective and flow shift they trained with: bare, a flow
    model's weights sampled as an eps model (and refused the flow samplers). Other weights keep the defaults."""
    from pixart.diffusion.objective import DiffusionConfig, shift_at
    from pixart.modelfolder import load_components
    from pixart.sample import sample
    from pixart.train.init import save_weights

    model = randomize_(PixArt(TINY), std=0.05)  # not the official init's zero output, which any shift keeps
    flow = DiffusionConfig(objective="flow", flow_shift=2.0, shift_base_tokens=64)
    save_weights(model, tmp_path / "flow.safetensors", diffusion=flow)
    save_weights(model, tmp_path / "plain.safetensors")
    folders = {"vae": tmp_path, "text_encoder": tmp_path}  # read later by the caller; not opened here
    spec, transformer = load_components(tmp_path / "flow.safetensors", **folders)[:2]
    assert (spec.objective, spec.sampler, spec.flow_shift, spec.shift_base_tokens) == (
        "flow",
        "flow-dpm-solver",
        2.0,
        64,
    )
    # the loaded transformer knows it too: pixart.sample.sample(pipe.transformer, ...) draws it as trained
    assert transformer.sampling == {"objective": "flow", "flow_shift": 2.0, "shift_base_tokens": 64}
    noise, cond = torch.randn(1, 4, 32, 32), torch.randn(1, 16, 48)  # 256 tokens: shift 2 * sqrt(256 / 64)
    mask = torch.ones(1, 16, dtype=torch.long)
    steps = {"steps": 3, "progress": False}
    own = sample(transformer, noise, cond, mask, cond, mask, **steps)
    assert torch.equal(
        own, sample(transformer, noise, cond, mask, cond, mask, scheduler="flow-dpm-solver", flow_shift=4.0, **steps)
    )
    assert not torch.equal(own, sample(transformer, noise, cond, mask, cond, mask, flow_shift=2.0, **steps))
    assert shift_at(spec.flow_shift, spec.shift_base_tokens, 256) == pytest.approx(
        4.0
    )  # 2 * sqrt(256 / 64), as training shifts
    assert shift_at(spec.flow_shift, 0, 256) == 2.0
    plain = load_components(tmp_path / "plain.safetensors", **folders)[0]
    assert (plain.objective, plain.sampler, plain.flow_shift) == ("iddpm", "dpm-solver++", 1.0)
    # pixart convert to our layout keeps the record (it wrote the config alone)
    assert (
        main(
            ["convert", str(tmp_path / "flow.safetensors"), "--to", "pixart", "--out", str(tmp_path / "c.safetensors")]
        )
        == 0
    )
    assert load_components(tmp_path / "c.safetensors", **folders)[0].objective == "flow"
    # the official and diffusers layouts keep it where their own readers never look (they sampled as eps
    # models), and the warning says those readers would still sample an eps model
    for to, out, where in (("official", "o.pth", "its 'sampling' entry"), ("diffusers", "d", "pixart_sampling.json")):
        capsys.readouterr()
        assert main(["convert", str(tmp_path / "flow.safetensors"), "--to", to, "--out", str(tmp_path / out)]) == 0
        assert f"trained with the flow objective (flow shift 2.0): pixart generate reads that from {where}" in (
            capsys.readouterr().err
        )
        spec = load_components(tmp_path / out, **folders)[0]
        assert (spec.objective, spec.sampler, spec.flow_shift, spec.shift_base_tokens) == (
            "flow",
            "flow-dpm-solver",
            2.0,
            64,
        )
    # and converted back to our layout, it still says so (and pixart info says it), from the diffusers
    # folder's weights file too (its sidecar is in the folder: the file alone sampled as an eps model)
    for source in ("o.pth", "d", "d/diffusion_pytorch_model.safetensors"):
        back = tmp_path / f"back-{source.replace('/', '-')}.safetensors"
        assert main(["convert", str(tmp_path / source), "--to", "pixart", "--out", str(back)]) == 0
        assert load_components(back, **folders)[0].objective == "flow", source
        capsys.readouterr()
        assert main(["info", str(tmp_path / source), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["sampling"]["objective"] == "flow", source


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"sampler": "ddim"', "Expecting ',' delimiter"),  # the closing brace left off
        ('{"text_encoder_dir": "t5"}', "unknown fields in model.json: ['text_encoder_dir']"),
        ("[]", "expected a JSON object of ModelSpec fields, got list"),
        ('{"steps": 20, "steps": 40}', "the key 'steps' is given twice in one object"),  # was read as 40
        # sampling settings read as they were: black images with exit 0, a traceback, or another step count
        ('{"cfg_scale": NaN}', "cfg_scale must be a finite number >= 0 (1: no guidance), got nan"),
        ('{"cfg_scale": -3}', "cfg_scale must be a finite number >= 0"),
        ('{"flow_shift": -1}', "flow_shift must be a positive number (1 shifts nothing), got -1"),
        ('{"flow_shift": 0}', "flow_shift must be a positive number"),
        ('{"steps": 0}', "steps must be a whole number in 1..1000, or null for the sampler's own"),
        ('{"steps": 2.5}', "steps must be a whole number in 1..1000"),
        ('{"sampler": "dpm"}', "unknown sampler 'dpm'"),
        ('{"objective": "v"}', "objective must be one of iddpm, flow, got 'v'"),
        ('{"shift_base_tokens": -4}', "shift_base_tokens must be 0 (a fixed shift) or more"),
        ('{"text_max_length": 0}', "text_max_length must be a whole number of tokens"),
    ],
)
def test_a_model_json_edited_wrong_is_a_one_line_error(tmp_path, capsys, text, message):
    """README tells users to set text_encoder_path in model.json: a mistake there was a traceback."""
    save_model_folder(tmp_path / "ours", PixArt(TINY), ModelSpec(text_encoder="minilm"))
    (tmp_path / "ours" / "model.json").write_text(text)
    assert main(["generate", "x", "--model", str(tmp_path / "ours"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ours' / 'model.json'}: " in err and message in err and "Traceback" not in err, err


def test_a_model_without_recorded_buckets_offers_only_buckets_it_can_draw(tmp_path):
    """128 px (an 8x codec, patch 2) with no recorded buckets: the fallback table rounded sides to 4, so
    --aspect 1:3 chose 64x232 (a 8x29 latent, which patch 2 does not divide) and failed after encoding."""
    import diffusers
    from transformers import AutoTokenizer, T5EncoderModel

    scratch, folder = tmp_path / "parts", tmp_path / "f8"
    save_tiny_t5(scratch / "t5")
    save_transformer(
        randomize_(PixArt(dataclasses.replace(TINY, input_size=16)), std=0.05), scratch / "tr", to="diffusers"
    )
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),  # four levels: an 8x codec, as SD's
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    diffusers.PixArtAlphaPipeline(
        tokenizer=AutoTokenizer.from_pretrained(scratch / "t5"),
        text_encoder=T5EncoderModel.from_pretrained(scratch / "t5"),
        vae=vae,
        transformer=diffusers.PixArtTransformer2DModel.from_pretrained(scratch / "tr"),
        scheduler=diffusers.DPMSolverMultistepScheduler(),
    ).save_pretrained(folder)
    pipe = TextToImage.from_path(folder)
    assert pipe.resolution == 128
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in pipe.table.values()), pipe.table
    image = pipe.generate(["a cat"], Settings(steps=2, aspect="1:3"), progress=False)[0]
    assert image.image.size[0] > 2 * image.image.size[1]  # drawn, wide


def test_a_pipelines_text_encoder_folder_takes_the_tokenizer_beside_it(pipeline_folder, tmp_path):
    """--text-encoder PIPELINE/text_encoder holds no tokenizer: transformers would build an untrained one from
    the encoder's config alone and read most words as unknown. The pipeline's tokenizer/ is used instead;
    an encoder folder alone is refused, as is a folder holding another diffusers component."""
    from pixart.encoders.text import T5Encoder

    beside = T5Encoder(pipeline_folder / "text_encoder", max_length=8)
    given = T5Encoder(pipeline_folder / "text_encoder", tokenizer_folder=pipeline_folder / "tokenizer", max_length=8)
    prompt = "a red cat on a blue square"
    assert beside.tokenizer(prompt)["input_ids"] == given.tokenizer(prompt)["input_ids"]
    assert given.tokenizer.unk_token_id not in given.tokenizer(prompt)["input_ids"]  # the words are known
    alone = tmp_path / "encoder"
    shutil.copytree(pipeline_folder / "text_encoder", alone)
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        T5Encoder(alone, max_length=8)
    with pytest.raises(FileNotFoundError, match="describes a diffusers AutoencoderKL"):
        T5Encoder(pipeline_folder / "vae", max_length=8)


def test_the_tokenizer_beside_is_found_from_a_relative_encoder_path(pipeline_folder, monkeypatch):
    from pixart.encoders.text import find_tokenizer

    monkeypatch.chdir(pipeline_folder / "text_encoder")
    assert find_tokenizer(Path(".")) == (pipeline_folder / "tokenizer").resolve()


def test_a_folder_of_another_model_is_refused_before_it_loads(pipeline_folder, tmp_path):
    """transformers loads a T5 from a BERT folder with fresh random weights (a dataset of noise features, exit
    0), and a BERT from a T5 folder fails at the first prompt; diffusers' VAE loader takes any component."""
    from pixart.encoders.codecs import SDVAE
    from pixart.encoders.text import MiniLMEncoder, T5Encoder, minilm_folder

    with pytest.raises(FileNotFoundError, match="describes a bert model.*choose the minilm text encoder kind"):
        T5Encoder(minilm_folder(), max_length=8)
    with pytest.raises(FileNotFoundError, match="describes a t5 model.*choose the t5 text encoder kind"):
        MiniLMEncoder(pipeline_folder / "text_encoder", max_length=8)
    with pytest.raises(FileNotFoundError, match="describes a PixArtTransformer2DModel"):
        SDVAE(pipeline_folder / "transformer")
    umt5 = tmp_path / "umt5"  # T5EncoderModel would load it without complaint, and wrongly
    shutil.copytree(pipeline_folder / "text_encoder", umt5)
    config = json.loads((umt5 / "config.json").read_text())
    (umt5 / "config.json").write_text(json.dumps({**config, "model_type": "umt5"}))
    with pytest.raises(FileNotFoundError, match="describes a umt5 model"):
        T5Encoder(umt5, tokenizer_folder=pipeline_folder / "tokenizer", max_length=8)
    from pixart.encoders.codecs import load_codec

    weights_file = next((pipeline_folder / "vae").glob("*.safetensors"))  # an SD VAE is its folder, not a file
    with pytest.raises(FileNotFoundError, match="is not a shapes codec file"):
        load_codec("shapes-ae", weights_file)
    assert SDVAE(pipeline_folder).latent_channels == SDVAE(pipeline_folder / "vae").latent_channels  # both accepted


def test_a_minilm_folder_of_ones_own_is_recorded_the_bundled_one_is_not(tmp_path):
    """Every MiniLM folder was recorded as the bundled one: a run on another BERT generated with the bundled."""
    from pixart.encoders.text import minilm_folder, recorded_path

    assert recorded_path("minilm", None) is None and recorded_path("minilm", minilm_folder()) is None
    assert recorded_path("minilm", tmp_path) == str(tmp_path.resolve())
    assert recorded_path("t5", tmp_path) == str(tmp_path.resolve())


def test_bare_weights_of_a_minilm_model_run_with_the_minilm_folder_given(tmp_path):
    """`pixart prepare --text-encoder-kind minilm` then train gave weights generate could not run: bare weights
    were always taken as T5's, and the MiniLM folder was refused as a BERT."""
    from pixart.encoders.text import minilm_folder

    model = randomize_(PixArt(dataclasses.replace(TINY, caption_channels=384)), std=0.05).eval()
    save_transformer(model, tmp_path / "w.safetensors")
    tiny_vae().save_pretrained(tmp_path / "vae")
    pipe = TextToImage.from_path(tmp_path / "w.safetensors", vae=tmp_path / "vae", text_encoder=minilm_folder())
    assert (pipe.spec.text_encoder, pipe.spec.clean_captions, pipe.spec.codec) == ("minilm", False, "sd-vae")
    settings = Settings(steps=2)
    red, blue = (pipe.generate([p], settings, seed=1, progress=False)[0] for p in ("a red circle", "a blue square"))
    assert red.image.size == (32, 32) and not np.array_equal(pixels_of(red), pixels_of(blue))  # the prompt counts


def test_bare_weights_of_a_pixel_model_run_with_vae_pixels(tmp_path, capsys):
    """A model trained on `pixart prepare --codec pixels` features (the tiny recipe's) and exported as bare
    weights could not be generated: --vae took an SD VAE folder or the shapes codec's file only."""
    model = randomize_(PixArt(dataclasses.replace(TINY, in_channels=3, caption_channels=384)), std=0.05).eval()
    weights = tmp_path / "w.safetensors"
    save_transformer(model, weights)
    assert main(["generate", "a red circle", "--model", str(weights), "--out", str(tmp_path / "o")]) == 2
    assert "or pixels for a model trained on pixels" in capsys.readouterr().err  # the advice names it
    pipe = TextToImage.from_path(weights, vae="pixels", text_encoder="minilm")
    assert (pipe.spec.codec, pipe.spec.text_encoder) == ("pixels", "minilm")
    side = TINY.input_size  # pixels: one latent per pixel
    image = pipe.generate(["a red circle"], Settings(steps=2), seed=0, progress=False)[0].image
    assert image.size == (side, side)
    args = ["generate", "a red circle", "--model", str(weights), "--vae", "pixels"]
    assert main([*args, "--text-encoder", "minilm", "--steps", "2", "--seed", "0", "--out", str(tmp_path / "cli")]) == 0
    written = Image.open(next((tmp_path / "cli").glob("*.png"))).convert("RGB")
    assert np.array_equal(np.asarray(written), np.asarray(image.convert("RGB")))
    recorded = json.loads(next((tmp_path / "cli").glob("*.json")).read_text())
    assert recorded["vae"] == "pixels"  # the word, which remakes it (made absolute, it named no folder)
    spec = ModelSpec(text_encoder="minilm", clean_captions=False, codec="pixels")
    save_model_folder(tmp_path / "folder", model, spec)
    assert TextToImage.from_path(tmp_path / "folder", vae="pixels").spec.codec == "pixels"  # a model folder too


def test_a_model_json_allowing_longer_prompts_than_the_null_caption_cuts_them_with_a_warning(tmp_path, capsys):
    """text_max_length 120 (model.json's default) over a model whose learned null caption has 16 tokens: a
    prompt of more than 16 tokens failed mid-generation ("longer than the learned null caption")."""
    pipe = TextToImage.from_path(learned_null_folder(tmp_path))  # TINY: a 16-token null caption
    assert pipe.spec.text_max_length == TINY.max_length
    prompt = "a small red circle on the left and a large blue square on the right of a green field at dusk"
    image = pipe.generate([prompt], Settings(steps=2), progress=False)[0].image
    assert image.size[0] > 0
    assert "tokens were dropped" in capsys.readouterr().err


def test_the_transformer_file_of_a_model_folder_is_pointed_to_its_folder(tmp_path, capsys):
    """Given alone, it was asked for --vae (an SD VAE) and --text-encoder (T5), advice that cannot work for a
    model of pixels or MiniLM: its folder knows both."""
    folder = learned_null_folder(tmp_path)
    weights = folder / "transformer.safetensors"
    assert main(["generate", "x", "--model", str(weights), "--out", str(tmp_path / "o"), "--steps", "2"]) == 2
    error = capsys.readouterr().err
    assert f"{weights} holds transformer weights only, and {folder} holds the rest: pass --model {folder}" in error
    assert not (tmp_path / "o").exists()


def test_a_pipelines_transformer_is_pointed_to_its_pipeline(tmp_path, pipeline_folder):
    """PIPE/transformer (or its weights file) was asked for --vae and --text-encoder, which PIPE holds."""
    from pixart.modelfolder import read_spec

    for weights in (
        pipeline_folder / "transformer",
        pipeline_folder / "transformer" / "diffusion_pytorch_model.safetensors",
    ):
        with pytest.raises(FileNotFoundError, match=f"and {pipeline_folder} holds the rest: pass --model"):
            read_spec(weights)


def test_a_models_default_steps_are_its_own_for_its_own_sampler_only():
    """One rule, shared by generate, serve and info: the count model.json records belongs to its sampler
    (and to a diffusers folder's scheduler); another sampler runs at its own default."""
    spec = ModelSpec(sampler="dpm-solver++", steps=14)
    assert spec.default_steps("dpm-solver++") == 14
    assert spec.default_steps("ddim") == 50 and spec.default_steps("sa-solver") == 25  # not the model's 14
    assert spec.default_steps("folder") == 14
    unset = ModelSpec(sampler="ddim")
    assert unset.default_steps("ddim") == 50 and unset.default_steps("folder") == 20


def test_a_flow_model_exported_into_a_pipeline_samples_as_flow(tmp_path, capsys):
    """`convert --to diffusers` of a flow model, placed as a pipeline's transformer/: generate ran it as an
    eps model through the pipeline's eps scheduler (noise out), while info said flow."""
    from pixart.modelfolder import load_components
    from pixart.weights.io import sampling_entry

    pipeline = save_tiny_pipeline(tmp_path / "pipe")
    shutil.rmtree(pipeline / "transformer")
    model = randomize_(PixArt(TINY))
    save_transformer(model, pipeline / "transformer", to="diffusers", metadata=sampling_entry("flow", 3.0, 0))
    spec, _, _, _, _, scheduler = load_components(pipeline)
    assert (spec.objective, spec.flow_shift, spec.sampler, scheduler) == ("flow", 3.0, "flow-dpm-solver", None)
    assert TextToImage.from_path(pipeline).resolve_sampler(Settings()) == ("flow-dpm-solver", 20)
    assert main(["info", str(pipeline), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["generation"]["defaults"]["sampler"] == "flow-dpm-solver"


def test_missing_extras_and_unreadable_vae_files_are_one_line_errors(pipeline_folder, tmp_path, monkeypatch, capsys):
    """Each of these was a traceback (review of the encoders): an SD VAE's .ckpt/.bin given as --vae (read
    as a shapes codec: "header too large"), a --vae folder whose config.json is not JSON, --t5-8bit without
    bitsandbytes (after the transformer had loaded), and the diffusers extra not installed. Each is now one
    line; a missing extra names the pip command that adds it."""
    import sys

    from pixart.cli.main import main

    torch.save({"encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "vae-ft-ema.ckpt")  # a pickle, as SD ships it
    broken = tmp_path / "vae"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    common = ["generate", "a cat", "--steps", "2", "--no-progress"]
    bare = ["--model", str(pipeline_folder / "transformer"), "--text-encoder", str(pipeline_folder / "text_encoder")]
    for vae, message in (
        (tmp_path / "vae-ft-ema.ckpt", "is not a shapes codec file"),
        (broken, "its config.json is not JSON"),
    ):
        code = main([*common, *bare, "--vae", str(vae), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    given = ["--model", str(pipeline_folder / "transformer"), "--vae", str(pipeline_folder / "vae")]
    code = main([*common, *given, "--text-encoder", str(broken), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no text encoder in" in err and "its config.json is not JSON" in err, err
    (broken / "config.json").write_text('["AutoencoderKL"]')  # JSON, but not an object (review)
    code = main([*common, *given, "--text-encoder", str(broken), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "its config.json is not a JSON object" in err and "Traceback" not in err, err
    code = main([*common, *bare, "--vae", str(broken), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no VAE in" in err and "is not a JSON object" in err, err
    cut = tmp_path / "codec.safetensors"  # a shapes codec file copied halfway: not "an SD VAE's file"
    cut.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{")
    code = main([*common, *bare, "--vae", str(cut), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot be read" in err and "cut short or damaged?" in err, err

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    code = main([*common, "--model", str(pipeline_folder), "--t5-8bit", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err == (
        "pixart generate: error: this needs the package 'bitsandbytes', which is not installed: "
        "pip install 'pixart[t5-8bit]' (./setup.sh installs every extra)"
    )
    monkeypatch.delitem(sys.modules, "bitsandbytes")
    monkeypatch.setitem(sys.modules, "accelerate", None)  # transformers' device_map needs it too (review)
    code = main([*common, "--model", str(pipeline_folder), "--t5-8bit", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "needs the package 'accelerate'" in err, err
    monkeypatch.delitem(sys.modules, "accelerate")
    import shutil

    spiece = tmp_path / "spiece-pipe"  # T5's own tokenizer layout, spiece.model alone (PixArt's hub folders)
    shutil.copytree(pipeline_folder, spiece, ignore=shutil.ignore_patterns("tokenizer"))
    (spiece / "tokenizer").mkdir()
    (spiece / "tokenizer" / "spiece.model").write_bytes(b"not read: the import comes first")
    (spiece / "tokenizer" / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}')
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # transformers then failed about tiktoken
    code = main([*common, "--model", str(spiece), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "needs the package 'sentencepiece'" in err and "pixart[diffusers]" in err, err
    monkeypatch.setitem(sys.modules, "diffusers", None)
    monkeypatch.delitem(sys.modules, "pixart.encoders.codecs", raising=False)
    code = main([*common, "--model", str(pipeline_folder), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "needs the package 'diffusers'" in err and "pip install 'pixart[diffusers]'" in err


def test_a_pipeline_of_fp16_variant_files_alone_generates_as_its_default_files_do(pipeline_folder, tmp_path):
    """save_pretrained(variant="fp16"), or a download of a hub repository's fp16 files alone, names every
    weights file *.fp16.*: the transformer loaded, the VAE and T5 were "no file named ... found" (review)."""
    import shutil

    from diffusers import AutoencoderKL
    from transformers import T5EncoderModel

    from pixart.encoders.folder_files import weights_variant

    variant = tmp_path / "pipe"
    shutil.copytree(pipeline_folder, variant)
    for folder, model_class, default in (
        (variant / "vae", AutoencoderKL, "diffusion_pytorch_model.safetensors"),
        (variant / "text_encoder", T5EncoderModel, "model.safetensors"),
    ):
        model_class.from_pretrained(folder).save_pretrained(folder, variant="fp16")
        (folder / default).unlink()
    transformer = variant / "transformer" / "diffusion_pytorch_model.safetensors"
    transformer.rename(transformer.with_name("diffusion_pytorch_model.fp16.safetensors"))
    assert weights_variant(variant / "vae", "diffusers") == "fp16"
    assert weights_variant(variant / "text_encoder", "transformers") == "fp16"
    assert weights_variant(pipeline_folder / "vae", "diffusers") is None  # default weights: no variant named
    settings = Settings(steps=2)
    expected = TextToImage.from_path(pipeline_folder).generate(["a cat"], settings, seed=3, progress=False)[0].image
    image = TextToImage.from_path(variant).generate(["a cat"], settings, seed=3, progress=False)[0].image
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    shutil.copy(
        variant / "vae" / "diffusion_pytorch_model.fp16.safetensors",
        variant / "vae" / "diffusion_pytorch_model.bf16.safetensors",
    )
    with pytest.raises(FileNotFoundError, match=r"several variants \(bf16, fp16\) and no default weights"):
        weights_variant(variant / "vae", "diffusers")


def test_prompts_are_encoded_in_chunks_and_the_negative_once(pipeline_folder):
    """A 1,000-line prompts file was one text-encoder batch (T5-XXL's activations for all of it at once),
    and the negative prompt was encoded once per prompt. Chunked, the features are the ones one batch gave."""
    from pixart.generate import ENCODE_CHUNK

    pipe = TextToImage.from_path(pipeline_folder)
    prompts = [f"a red circle number {k}" + " and more" * (k % 7) for k in range(ENCODE_CHUNK * 2 + 5)]
    batches = []
    pipe.text_encoder.model.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    (cond, cond_mask, null, null_mask), dropped = pipe.encode(prompts, "blurry")
    assert batches == [ENCODE_CHUNK, ENCODE_CHUNK, 5, 1]  # three chunks, then the negative once
    whole = pipe.text_encoder.encode(prompts)  # one batch: what it was
    torch.testing.assert_close(cond.float(), whole.features, atol=1e-5, rtol=1e-5)
    assert torch.equal(cond_mask, whole.mask) and dropped == whole.dropped
    negative = pipe.text_encoder.encode(["blurry"])
    assert null.shape[0] == len(prompts) and torch.equal(null_mask, negative.mask.expand(len(prompts), -1))
    torch.testing.assert_close(null.float(), negative.features.expand(len(prompts), -1, -1))


def test_a_model_reading_more_caption_tokens_than_its_encoder_has_positions_is_refused_at_load(tmp_path):
    """A MiniLM model folder whose model reads 600 caption tokens (MiniLM has 512 positions) failed with a
    traceback at the first prompt's encoding; it is one GenerationError when the folder loads (review)."""
    model = randomize_(PixArt(dataclasses.replace(TINY, caption_channels=384, max_length=600)), std=0.05)
    folder = tmp_path / "m"
    (folder / "vae").mkdir(parents=True)
    tiny_vae().save_pretrained(folder / "vae")
    spec = ModelSpec(text_encoder="minilm", text_max_length=600, text_encoder_path=None, codec_path="vae")
    save_model_folder(folder, model, spec)
    with pytest.raises(GenerationError, match=r"a max length of 600 tokens is more than .* \(512\); use 512 or less"):
        TextToImage.from_path(folder)


def test_text_encoder_minilm_names_the_bundled_one_unless_a_folder_is_called_so(tmp_path, monkeypatch):
    """Bare weights trained on MiniLM features needed the bundled MiniLM's path inside site-packages: the
    name `minilm` (which caption --stats --tokenizer takes) was "no text encoder in minilm" (review)."""
    from pixart.cli.main import build_parser
    from pixart.encoders.text import minilm_folder

    monkeypatch.chdir(tmp_path)
    for command in (["generate", "x", "--out", "o"], ["serve"], ["eval"]):
        args = build_parser().parse_args([*command, "--model", "m", "--text-encoder", "minilm"])
        assert args.text_encoder == minilm_folder() and (args.text_encoder / "config.json").is_file()
    (tmp_path / "minilm").mkdir()  # a folder of that name, here: the user's own
    generate = ["generate", "x", "--model", "m", "--out", "o", "--text-encoder"]
    assert build_parser().parse_args([*generate, "minilm"]).text_encoder == Path("minilm")
    assert build_parser().parse_args([*generate, "t5"]).text_encoder == Path("t5")


def test_library_calls_a_python_user_gets_wrong_are_named_before_sampling(pipeline_folder):
    """From Python (review): a bare string was one prompt per character (five images for "a red"); an
    empty list failed in torch.cat; a Settings field of the wrong kind deep inside ("'float' object has
    no attribute 'strip'", "must be real number")."""
    pipe = TextToImage.from_path(pipeline_folder)
    made = pipe.generate("a red", Settings(steps=2), progress=False)
    assert [image.prompt for image in made] == ["a red"]
    assert made[0].image.tobytes() == pipe.generate(["a red"], Settings(steps=2), progress=False)[0].image.tobytes()
    with pytest.raises(GenerationError, match="no prompt given: pass a list of at least one"):
        pipe.generate([], progress=False)
    for field, value, said in [
        ("cfg_scale", "4.5", "a number"),
        ("aspect", 0.5, 'a string such as "16:9"'),
        ("height", "64", "a whole number of pixels"),
        ("negative", ["blurry"], "a string"),
        ("cfg_scale", True, "a number"),
    ]:
        with pytest.raises(GenerationError, match=re.escape(f"Settings.{field} must be {said} (or None")):
            pipe.generate(["x"], Settings(**{field: value}), progress=False)
    assert len(pipe.generate(["x"], Settings(steps=np.int64(2), cfg_scale=np.float32(3)), progress=False)) == 1


def test_an_aspect_a_model_cannot_draw_is_said_and_one_it_can_is_not(pipeline_folder, capsys):
    """A model trained at one size (one bucket) drew --aspect 1:2 square, and its sidecar did not say 1:2
    was asked (review). The multi-aspect tables' nearest bucket is drawn without a word."""
    pipe = TextToImage.from_path(pipeline_folder)
    for aspect in ("1:2", "9:16", "3:1", *(f"{key}:1" for key in pipe.table)):  # the app asks for the keys so
        pipe.resolve_size(Settings(aspect=aspect))
    assert capsys.readouterr().err == ""
    square = pipe.with_spec()
    square.table = {"1.0": (32, 32)}
    assert square.resolve_size(Settings(aspect="1:2"))[2] == (32, 32)
    said = capsys.readouterr().err
    assert "this model's aspect ratios (height over width) are only 1.0: 1:2 is drawn at 32x32" in said
    assert square.resolve_size(Settings(height=40, width=20))[2] == (40, 20)  # a size is resized and cropped to
    assert capsys.readouterr().err == ""

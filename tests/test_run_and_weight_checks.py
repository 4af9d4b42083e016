"""Checks on weights and runs that a mutation run found untested: init_from's key sets, the DCP metadata
allow-list, what diffusers cannot hold, pos_embed scales, DiT head counts, new micro-condition embedders,
previews, stop signals, the run lock, config validation and the resume and start checks."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import randomize_
from test_cli_weights import _training_state
from test_train import config_for
from test_weights import official_state

from pixart import config as config_io
from pixart.cli import main
from pixart.model import TINY, PixArt
from pixart.model.pos_embed import sincos_2d
from pixart.recipes import get_recipe
from pixart.train import checks, exclusive
from pixart.train.config import OptimConfig, TrainConfig
from pixart.train.data import check_given_data
from pixart.train.distributed import World
from pixart.train.errors import TrainingError
from pixart.train.init import initialize_from
from pixart.train.previews import Previewer, preview_weights
from pixart.train.signals import StopFlag
from pixart.weights import WeightsError, load_transformer, save_transformer
from pixart.weights.configs import infer_official_config
from pixart.weights.dcp_reading import _MetadataUnpickler
from pixart.weights.dit_init import infer_dit_config

XL_HEADS = dataclasses.replace(TINY, hidden_size=144, num_heads=2)  # 72 per head, as the official family


# --- init_from: the keys a file holds against the model's -------------------------------------------------


def _init(tmp_path, state: dict, **kw) -> tuple[PixArt, str]:
    """The model a stage builds, after init_from (an official-layout file of `state`); what it said."""
    torch.save({"state_dict": state}, tmp_path / "init.pth")
    config = TrainConfig(model=kw.pop("model", TINY), init_from=str(tmp_path / "init.pth"), **kw)
    model = PixArt(config.model)
    return model, initialize_from(model, config)


def test_init_from_a_file_lacking_a_blocks_weights_is_refused_naming_them(tmp_path):
    """A file without some of the model's weights would start those layers at random, without a word, when
    no init_new_keys allows them to be new."""
    state = {k: v for k, v in official_state(TINY).items() if not k.startswith("blocks.1.attn.proj.")}
    with pytest.raises(WeightsError, match=r"missing \['blocks.1.attn.proj.bias', 'blocks.1.attn.proj.weight'\]"):
        _init(tmp_path, state)


def test_init_from_a_file_with_keys_the_model_lacks_is_refused_naming_them(tmp_path):
    """A file holding weights the model has no place for (another architecture, a deeper model) would load
    partly, the rest dropped without a word."""
    extra = {**official_state(TINY), "blocks.0.attn.q_norm.weight": torch.ones(48)}
    with pytest.raises(WeightsError, match=r"unexpected \['blocks.0.attn.q_norm.weight'\]"):
        _init(tmp_path, extra)
    deeper = official_state(dataclasses.replace(TINY, depth=TINY.depth + 1))
    with pytest.raises(WeightsError, match=r"unexpected \['blocks.2.attn.proj.bias'"):
        _init(tmp_path, deeper)


def test_new_micro_condition_embedders_start_silent(tmp_path):
    """Stage 3 (1024-MS) starts from a file without micro-conditions: its new size and aspect-ratio embedders
    would start at random and jolt the model it starts from, not leave its output as it was."""
    ms = dataclasses.replace(TINY, micro_conditions=True)  # the same position embedding as TINY's
    state = official_state(TINY)
    model, said = _init(tmp_path, state, model=ms, init_new_keys=get_recipe("stage3-aesthetic-1024").init_new_keys)
    assert "new: ['ar_embedder.mlp', 'csize_embedder.mlp']" in said, said
    for name in ("csize_embedder", "ar_embedder"):
        _, last = getattr(model, name).mlp_linears()
        assert not last.weight.any() and not last.bias.any(), name
    plain = PixArt(TINY)
    plain.load_state_dict({k: v for k, v in state.items() if k != "pos_embed"}, strict=False)
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 700.0]), torch.randn(2, 16, 48)
    with torch.no_grad():
        ours = model.eval()(x, t, y, img_hw=torch.tensor([[128.0, 128.0]] * 2), aspect_ratio=torch.tensor([1.0, 1.5]))
        theirs = plain.eval()(x, t, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


# --- a sharded checkpoint's .metadata: only what DCP's records hold -----------------------------------------


def _names_a_global(module: str, name: str) -> bytes:
    """A pickle (protocol 4: a dotted name allowed) whose whole content is the global module.name: unpickled
    unchecked it is that object, never called."""

    def text(value: str) -> bytes:
        data = value.encode()
        return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data

    return pickle.PROTO + bytes([4]) + text(module) + text(name) + pickle.STACK_GLOBAL + pickle.STOP


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("torch", "load"),  # torch.load of a path the pickle names: a full unpickler, code and all
        ("torch", "hub.load"),  # downloads and runs a repository's hubconf.py
        ("torch.distributed.checkpoint.metadata", "field"),  # a function DCP's metadata module imports
    ],
)
def test_a_sharded_checkpoints_metadata_naming_a_callable_is_refused(module, name):
    """Checkpoint metadata from elsewhere naming torch.load, torch.hub.load or a function that DCP's metadata
    module imports would unpickle to that callable, a step from running code: only torch's dtypes and DCP's
    own record classes may be named."""
    assert pickle.loads(_names_a_global("torch", "float16")) is torch.float16  # the crafting itself is sound
    with pytest.raises(pickle.UnpicklingError, match=rf"names {module}\.{name}, which no checkpoint's record holds"):
        _MetadataUnpickler(io.BytesIO(_names_a_global(module, name))).load()
    # what a checkpoint does hold still passes: a dtype, a record class of DCP's metadata module
    assert _MetadataUnpickler(io.BytesIO(_names_a_global("torch", "bfloat16"))).load() is torch.bfloat16
    found = _MetadataUnpickler(io.BytesIO(_names_a_global("torch.distributed.checkpoint.metadata", "Metadata"))).load()
    assert found.__name__ == "Metadata"


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # dcp.save in one process, as it says
def test_a_sharded_checkpoint_whose_metadata_names_torch_load_is_refused_on_loading(tmp_path):
    """The refusal reaches the user as load_transformer's WeightsError naming the global, not as 'holds a
    function, not DCP's Metadata' after the callable was unpickled."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_training_state(randomize_(PixArt(TINY))), checkpoint_id=str(tmp_path / "step-0000009.dcp"))
    (tmp_path / "step-0000009.dcp" / ".metadata").write_bytes(_names_a_global("torch", "load"))
    with pytest.raises(WeightsError, match=r"names torch\.load, which no checkpoint's record holds"):
        load_transformer(tmp_path / "step-0000009.dcp", use_ema=True)


# --- what each format can hold, and what shapes say ---------------------------------------------------------


def test_a_model_with_caption_norm_is_not_saved_as_diffusers(tmp_path):
    """Diffusers' PixArt has no caption norm: a caption_norm model saved as diffusers would load there
    without it and compute another model."""
    with pytest.raises(WeightsError, match="without caption_norm have a diffusers layout"):
        save_transformer(PixArt(dataclasses.replace(TINY, caption_norm=True)), tmp_path / "d", to="diffusers")
    assert not (tmp_path / "d").exists()


def test_a_pos_embed_of_another_scale_or_trained_away_from_the_table_is_refused(tmp_path):
    """A 1024-px-style file (interpolation scale 2) read with a config of scale 1 at the same input_size, or a
    file whose pos_embed was trained off the sincos table, would load with the table the config computes in
    place of the one it trained with; a float16 copy of the right table (rounding alone) must still load."""
    torch.save(
        {"state_dict": official_state(dataclasses.replace(XL_HEADS, interpolation_scale=2.0))}, tmp_path / "o.pth"
    )
    with pytest.raises(WeightsError, match="pos_embed .* is not the one the given config computes"):
        load_transformer(tmp_path / "o.pth", config=XL_HEADS)
    assert load_transformer(tmp_path / "o.pth", config=dataclasses.replace(XL_HEADS, interpolation_scale=2.0))
    state = official_state(XL_HEADS)
    table = state["pos_embed"]
    torch.save({"state_dict": {**state, "pos_embed": table + 0.05}}, tmp_path / "trained.pth")
    with pytest.raises(WeightsError, match="pos_embed .* is not the one the given config computes"):
        load_transformer(tmp_path / "trained.pth", config=XL_HEADS)
    torch.save({"state_dict": {**state, "pos_embed": table.half()}}, tmp_path / "half.pth")
    assert load_transformer(tmp_path / "half.pth", config=XL_HEADS).config == XL_HEADS


def test_a_pos_embed_built_at_scale_one_half_is_read_as_such():
    """A checkpoint trained with interpolation scale 0.5 would be refused as matching no scale, or read as
    another scale, and sample with another position embedding."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    grid = XL_HEADS.base_size
    table = sincos_2d(XL_HEADS.hidden_size, grid, grid, grid, 0.5)
    reference = get_2d_sincos_pos_embed(
        XL_HEADS.hidden_size, grid, interpolation_scale=0.5, base_size=grid, output_type="np"
    )
    np.testing.assert_allclose(table.numpy(), reference, atol=1e-6)  # diffusers, an independent reference
    state = {**randomize_(PixArt(XL_HEADS)).state_dict(), "pos_embed": table.float()[None]}
    assert infer_official_config(state).interpolation_scale == 0.5


@pytest.mark.parametrize(("width", "heads"), [(1152, 16), (576, 8)])
def test_a_dit_of_a_width_of_72_per_head_has_that_many_heads(width, heads):
    """DiT-XL/2 (width 1152) has 16 heads of 72: read as 18 of 64, its attention would be another model's."""
    shapes = {
        "x_embedder.proj.weight": (width, 4, 2, 2),
        "blocks.0.mlp.fc1.weight": (4 * width, width),
        "final_layer.linear.weight": (2 * 2 * 8, width),
        "y_embedder.embedding_table.weight": (1001, width),
        "pos_embed": (1, 16 * 16, width),
    }
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    config = infer_dit_config(state)
    assert (config.num_heads, config.hidden_size, config.input_size, config.num_classes) == (heads, width, 32, 1000)


# --- previews, stop signals, the run lock --------------------------------------------------------------------


def test_previews_draw_the_sample_prompts_given_over_the_datas_captions(tmp_path, monkeypatch):
    """sample_prompts set by the user would be ignored for the first captions of the training data."""
    monkeypatch.setattr(Previewer, "_encode", lambda self, prompts: None)  # no text encoder needed here
    config = TrainConfig(model=TINY, sample_prompts=("a red circle",))
    previewer = Previewer(config, {}, tmp_path, World(), prompts=["a blue square", "a green triangle"])
    assert previewer.prompts == ["a red circle"]
    unset = Previewer(TrainConfig(model=TINY), {}, tmp_path, World(), prompts=["a blue square"])
    assert unset.prompts == ["a blue square"]  # none given: the data's captions


def test_previews_of_a_micro_conditioned_model_condition_on_the_buckets_key(tmp_path, monkeypatch):
    """Training conditions PixArtMS on the bucket's key (0.57 for 8x14 latents), and so does generation; the
    preview gave the grid's exact height / width (0.5714), an aspect the model never trained on."""
    from pixart.model.pixart import TINY_MS
    from pixart.train import previews

    captions = (torch.randn(1, 5, TINY_MS.caption_channels), torch.ones(1, 5, dtype=torch.long))
    monkeypatch.setattr(Previewer, "_encode", lambda self, prompts: captions)
    config = TrainConfig(model=TINY_MS, previews=True, sample_steps=1)
    asked = []

    def recording(*args, **kwargs):
        asked.append((kwargs["img_hw"].tolist(), kwargs["aspect_ratio"].tolist()))
        raise InterruptedError("recorded")  # the conditions are all this test reads

    monkeypatch.setattr(previews, "sample", recording)
    info = {"codec": {"downsample": 8}}
    for bucket, aspect in (("0.57", 0.57), (None, 8 / 14)):  # no bucket known: the grid's own ratio
        previewer = Previewer(config, info, tmp_path, World(), latent_shape=(4, 8, 14), prompts=["a"], bucket=bucket)
        with pytest.raises(InterruptedError):
            previewer.write(PixArt(TINY_MS).state_dict(), 1)
        assert asked.pop() == ([[64.0, 112.0]], [pytest.approx(aspect)])


def test_preview_weights_are_the_ema_with_the_models_buffers():
    """Previews would show the raw training weights, not the EMA the run serves, if the model's parameters
    overrode the EMA's."""
    model = randomize_(PixArt(TINY), seed=1)
    ema = {name: p.detach() + 1.0 for name, p in model.named_parameters()}  # the trainer's EMA: parameters only
    weights = preview_weights(model, ema, sharded=False)
    assert set(weights) == set(model.state_dict())  # the buffers (the null caption) come from the model
    for name, value in ema.items():
        assert torch.equal(weights[name], value), name
    buffers = {name for name, _ in model.named_buffers()}
    assert buffers and buffers.isdisjoint(ema)
    for name in buffers:
        assert torch.equal(weights[name], model.state_dict()[name]), name
    assert all(weights[name].data_ptr() != value.data_ptr() for name, value in ema.items())  # copies


def test_stop_signals_get_their_handlers_back_after_a_run():
    """After train() (which holds a StopFlag while it trains) returns, Ctrl-C in the calling program (a
    notebook, a sweep script) would still only ask a finished run to stop."""

    def mine(signum, frame):  # the caller's own handler
        pass

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, mine)
    try:
        with StopFlag() as flag:
            assert signal.getsignal(signal.SIGINT) == flag.handle
            assert signal.getsignal(signal.SIGTERM) == flag.handle
            flag.handle(signal.SIGTERM, None)
            flag.handle(signal.SIGINT, None)
        assert flag.requested and flag.signum == signal.SIGTERM  # the first signal that asked
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_run_refused_in_a_new_folder_leaves_it_empty(tmp_path):
    """A run that fails before writing anything would leave a .lock in its new folder, which then reads as a
    run's folder and is not removed by the command."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def refused_run() -> None:  # a run that fails before it writes anything
        with exclusive.exclusive_run(run_dir, World()):
            assert (run_dir / exclusive.LOCK_FILE).is_file()
            raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        refused_run()
    assert list(run_dir.iterdir()) == []
    with exclusive.exclusive_run(run_dir, World()):  # a run that wrote something keeps its lock file
        (run_dir / "config.json").write_text("{}")
    assert sorted(p.name for p in run_dir.iterdir()) == [exclusive.LOCK_FILE, "config.json"]


# --- config validation, before any work ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("optim.ema_decay=1", "ema_decay must lie in [0, 1)"),  # an EMA that never moves from its start
        ("data.class_dropout=2", "class_dropout must lie in [0, 1]"),
        ("keep_checkpoints=0", "checkpoint_every, keep_checkpoints and log_every >= 1"),  # every checkpoint deleted
        ("data.loader_timeout=-1", "loader_timeout must be a number of seconds >= 0"),
        ("data.synthetic_sizes=['32x30']", "32x30 is not a multiple of the patch size 4 on each side; use 32x32"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, capsys, setting, said):
    """Each of these would start a run that cannot do what its config reads (an EMA frozen at its start, a
    run whose checkpoints are all deleted, a loader that times out at once, shapes the model cannot patch)."""
    for dry_run in (["--dry-run"], []):  # the dry run first: under a regression it trains nothing
        assert main(["train", "--recipe", "tiny", "--run-dir", str(tmp_path / "r"), "--set", setting, *dry_run]) == 2
        assert said in capsys.readouterr().err
        assert not (tmp_path / "r").exists()


# --- resuming and starting ------------------------------------------------------------------------------------


def _run_with_a_checkpoint(tmp_path, config: TrainConfig, *steps: int):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for step in steps:
        (run_dir / "checkpoints" / f"step-{step:07d}.pt").write_bytes(b"")  # listed by name; never read here
    (run_dir / "config.json").write_text(json.dumps(config_io.to_dict(config)))
    (run_dir / checks.WORLD_FILE).write_text(json.dumps({"world_size": 1}))  # as a run writes it
    return run_dir


@pytest.mark.parametrize(
    "change",
    ["seed=7", "data.caption_probs={'dense': 0.5, 'alt': 0.5}", "data.batch_size=4", "model.depth=3", "optim.lr=1e-2"],
)
def test_a_resume_under_a_setting_that_changes_the_run_is_refused(tmp_path, change):
    """A resume with another seed, caption mix, batch, model or optimizer would go on as a different run
    from the checkpoint of this one, without a word."""
    config = get_recipe("tiny")
    run_dir = _run_with_a_checkpoint(tmp_path, config, 10)
    checks.check_run_config(
        config_io.apply_overrides(config, ["steps=60", "keep_checkpoints=5"]), run_dir
    )  # may change
    key = change.split("=")[0]
    with pytest.raises(TrainingError, match=rf"holds a run with another config.*{key}"):
        checks.check_run_config(config_io.apply_overrides(config, [change]), run_dir)


def _copied_checkpoint(tmp_path, config: TrainConfig, **entries) -> Path:
    """A run folder rebuilt from a copy of checkpoints/ alone: one checkpoint holding `entries` and the config,
    no config.json, world.json or data.json."""
    run_dir = tmp_path / "copy"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"config": config_io.to_dict(config), **entries}, run_dir / "checkpoints" / "step-0000010.pt")
    return run_dir


@pytest.mark.parametrize(
    ("entries", "trained_by"),
    [({"world_size": 2}, 2), ({"log_window": [0.5, 2.0, 0.6, 2.0]}, 2), ({"world_size": 1}, 1)],
)
def test_a_copy_without_world_json_is_checked_against_its_checkpoints_process_count(tmp_path, entries, trained_by):
    """world.json was the only record: a 2-process run's checkpoints copied alone resumed in one process to a
    traceback, and a 1-process run's under 2 processes trained at twice the batch, said "finished" and wrote
    world.json with the wrong count. The checkpoint's own entry says, or (checkpoints before it) its log window,
    a pair a rank."""
    config = get_recipe("tiny")
    run_dir = _copied_checkpoint(tmp_path, config, **entries)
    checks.check_run_config(config, run_dir, trained_by)
    other = 3 - trained_by
    with pytest.raises(TrainingError, match=rf"trained by {trained_by} process\(es\), and this is {other}"):
        checks.check_run_config(config, run_dir, other)


def test_a_copy_without_data_json_is_checked_against_its_checkpoints_sample_count(tmp_path):
    """Without data.json, a resume on data of another size went on with the checkpoint's place in the data
    pointing at other samples; now the checkpoint's count is checked, and data.json written again."""
    run_dir = _copied_checkpoint(tmp_path, get_recipe("tiny"), data_samples=256)
    resume_from = run_dir / "checkpoints" / "step-0000010.pt"
    data = tmp_path / "features"
    with pytest.raises(TrainingError, match="trained on 256 samples and its data now holds 300"):
        checks.check_or_record_data(run_dir, 300, resume_from=resume_from, record=True, root=data, relative=False)
    assert not (run_dir / checks.DATA_FILE).exists()
    checks.check_or_record_data(run_dir, 256, resume_from=resume_from, record=True, root=data, relative=False)
    assert json.loads((run_dir / checks.DATA_FILE).read_text()) == {"samples": 256, "root": str(data.resolve())}


def test_a_relative_data_root_resumed_from_another_folder_is_refused(tmp_path, monkeypatch):
    """data.root=feat started in folder A and resumed from folder B (its own feat, as many samples) went on
    training on B's data without a word; A's absolute path, given from B, is the same data and resumes. A
    project moved with its data (A's gone) resumes from its new place, recorded anew."""
    for name in ("a", "b"):
        (tmp_path / name / "feat").mkdir(parents=True)
        (tmp_path / name / "feat" / "dataset.json").write_text("{}")
    config = config_io.apply_overrides(get_recipe("tiny"), ["data.root=feat"])
    run_dir = _run_with_a_checkpoint(tmp_path, config, 10)
    resume_from = run_dir / "checkpoints" / "step-0000010.pt"

    def resume(root: str, relative: bool) -> None:
        checks.check_or_record_data(
            run_dir, 64, resume_from=resume_from, record=True, root=Path(root), relative=relative
        )

    monkeypatch.chdir(tmp_path / "a")
    checks.check_or_record_data(run_dir, 64, resume_from=None, record=True, root=Path("feat"), relative=True)
    started_in = str(tmp_path / "a" / "feat")
    monkeypatch.chdir(tmp_path / "b")
    checks.check_run_config(config, run_dir)  # the same words: found different below, where the data is read
    with pytest.raises(TrainingError, match=rf"trained on the data at {started_in}, and data.root=feat is "):
        resume("feat", relative=True)
    absolute = config_io.apply_overrides(get_recipe("tiny"), [f"data.root={started_in}"])
    checks.check_run_config(absolute, run_dir)  # refused as another data.root before
    resume(started_in, relative=False)
    resume(str(tmp_path / "b" / "feat"), relative=False)  # an absolute root (a link moved, data built in the run)
    assert json.loads((run_dir / checks.DATA_FILE).read_text())["root"] == str(tmp_path / "b" / "feat")
    # the project moved with its data: a's is gone, and b's relative feat is where the run goes on
    (run_dir / checks.DATA_FILE).write_text(json.dumps({"samples": 64, "root": started_in}))
    shutil.rmtree(tmp_path / "a")
    checks.check_run_config(config, run_dir)
    moved = config_io.apply_overrides(get_recipe("tiny"), [f"data.root={tmp_path / 'b' / 'feat'}"])
    checks.check_run_config(moved, run_dir)  # its absolute path from here, as well
    resume("feat", relative=True)
    assert json.loads((run_dir / checks.DATA_FILE).read_text())["root"] == str(tmp_path / "b" / "feat")


def test_a_dry_run_with_a_run_dir_makes_that_folders_checks(tmp_path, capsys):
    """--dry-run left --run-dir unread: it passed for a resume the run then refused (past its steps, another
    config). It reads the folder only."""
    run_dir = _run_with_a_checkpoint(tmp_path, config_io.apply_overrides(get_recipe("tiny"), ["steps=12"]), 12)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    dry = ["train", "--recipe", "tiny", "--run-dir", str(run_dir), "--dry-run"]
    assert main([*dry, "--steps", "5"]) == 2
    assert "already trained to step 12, past steps=5" in capsys.readouterr().err
    assert main([*dry, "--steps", "20", "--set", "optim.lr=2e-3"]) == 2
    assert "holds a run with another config" in capsys.readouterr().err
    assert main([*dry, "--steps", "20"]) == 0  # the same run, continued
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    # a resume reads no init_from: one since moved away passes, as the run does (the trainer keeps the run's own)
    assert main([*dry, "--steps", "20", "--set", f"init_from={tmp_path / 'moved-away.safetensors'}"]) == 0


def test_a_checkpoint_of_garbage_is_not_told_to_load_unsafely(tmp_path):
    """torch's first line for a file that is no checkpoint advises loading it with weights_only=False (code
    execution), advice that fits no damaged checkpoint."""
    run_dir = _run_with_a_checkpoint(tmp_path, get_recipe("tiny"), 10, 20)
    newest = run_dir / "checkpoints" / "step-0000020.pt"
    newest.write_bytes(b"garbage bytes here")
    with pytest.raises(Exception) as raised:
        torch.load(newest, weights_only=True)
    said = checks.damaged_checkpoint(run_dir, newest, raised.value)
    assert "not a checkpoint torch can read safely" in said and "to resume from step-0000010.pt" in said, said
    assert "weights_only" not in said


def test_the_damaged_checkpoint_message_names_the_one_just_before_it(tmp_path):
    """With several checkpoints kept, the advice would name the oldest to resume from, losing the steps
    between it and the damaged one."""
    run_dir = _run_with_a_checkpoint(tmp_path, get_recipe("tiny"), 10, 20, 30)
    said = checks.damaged_checkpoint(run_dir, run_dir / "checkpoints" / "step-0000030.pt", EOFError("cut short"))
    assert "to resume from step-0000020.pt" in said, said


def test_a_warmup_one_step_longer_than_the_run_is_said(capsys):
    """A warm-up of steps + 1 never reaches optim.lr (the last step's rate is steps / (steps + 1) of it)."""
    checks.warn_of_long_warmup(dataclasses.replace(TrainConfig(optim=OptimConfig(warmup_steps=201)), steps=200))
    assert "optim.warmup_steps=201 is more than the run's 200 steps" in capsys.readouterr().out
    checks.warn_of_long_warmup(dataclasses.replace(TrainConfig(optim=OptimConfig(warmup_steps=200)), steps=200))
    assert capsys.readouterr().out == ""


def test_a_run_past_its_steps_is_refused_and_one_at_them_is_not(shapes_data, tmp_path):
    """A run folder one step past steps= would be taken up again (training cannot be undone), or one that
    reached it refused; and a resume would be refused when the init_from it started from has moved, though
    a resume never reads it."""
    config = config_for(shapes_data, [f"init_from={tmp_path / 'moved-away.safetensors'}"], steps=12)
    with pytest.raises(TrainingError, match="does not exist"):  # a new run reads it: refused
        checks.check_start(config, tmp_path / "new")
    with pytest.raises(TrainingError, match=r"already trained to step 13, past steps=12; give --steps 13 or more"):
        checks.check_start(config, _run_with_a_checkpoint(tmp_path / "past", config, 12, 13))
    assert checks.check_start(config, _run_with_a_checkpoint(tmp_path / "at", config, 10, 12)) == []


def test_data_prepared_for_the_models_size_through_a_codec_is_not_warned_of(shapes_data, tmp_path):
    """Data prepared at 256 px through a codec that downsamples 8 times is 32 latents a side, the model's
    input_size: it would be warned of as prepared for another size, and 512 px data would not be."""
    other = tmp_path / "prepared"
    shutil.copytree(shapes_data, other)
    info = json.loads((other / "dataset.json").read_text())
    config = config_for(other)
    assert config.model.input_size == 32
    for resolution, warned in ((256, False), (512, True)):
        codec = {**info.get("codec", {}), "downsample": 8}
        (other / "dataset.json").write_text(
            json.dumps({**info, "source": "folder:/images", "resolution": resolution, "codec": codec})
        )
        said = check_given_data(config)
        assert bool(said) == warned, (resolution, said)
    assert "was prepared at 512 px (64 latents a side) but the model's input_size is 32 (256 px)" in said[0]

"""Training: overfitting, exact resume after SIGKILL/SIGTERM, torchrun DDP, non-finite guard, stage chaining."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import small_disk
from PIL import Image
from safetensors.torch import load_file

from pixart import config as config_io
from pixart.cli import main
from pixart.data.shapes_features import build_shapes_features
from pixart.diffusion.objective import training_loss
from pixart.encoders.codecs import PixelCodec
from pixart.encoders.text import MiniLMEncoder
from pixart.files import temporary_path, text_lines
from pixart.model.dit import DiTConfig
from pixart.recipes import RECIPES, get_recipe
from pixart.train import checks, loop
from pixart.train import step as train_step
from pixart.train.errors import TrainingError
from pixart.train.init import build_model
from pixart.train.loop import train
from pixart.train.metrics import read_metrics
from pixart.weights import WeightsError, load_transformer
from pixart.weights.formats import FINAL, FINAL_EMA


def overrides(data: Path, steps: int = 12, every: int = 2) -> list[str]:
    return [
        f"data.root={data}",
        "data.synthetic=''",
        "data.batch_size=8",
        "data.num_workers=0",
        f"steps={steps}",
        f"checkpoint_every={every}",
        "previews=False",
        "log_every=2",
    ]


def config_for(data: Path, extra: list[str] = (), **kw):
    return config_io.apply_overrides(get_recipe("tiny"), [*overrides(data, **kw), *extra])


def cli(run_dir: Path, data: Path, *extra: str, env=None, wait=True, steps=12, new_session=False):
    args = [sys.executable, "-m", "pixart", "train", "--recipe", "tiny", "--run-dir", str(run_dir), "--no-progress"]
    for item in overrides(data, steps=steps):
        args += ["--set", item]
    args += list(extra)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            start_new_session=new_session,  # its own process group, to signal it as torchrun and SLURM do
        )
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=environment)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / FINAL)


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def poison_steps(monkeypatch, bad) -> None:
    """Make the loss NaN at the steps (counted from 0) for which bad(step) holds."""
    original = loop.compute_loss

    def poisoned(wrapped, inner, batch, config, scaling, world, step, micro, bf16):
        loss = original(wrapped, inner, batch, config, scaling, world, step, micro, bf16)
        return loss * float("nan") if bad(step) else loss

    monkeypatch.setattr(loop, "compute_loss", poisoned)


def test_tiny_overfits_a_fixed_batch(shapes_data, tmp_path):
    """One batch of 8 seen 80 times: the loss on fixed (t, noise) falls at least 3-fold."""
    config = config_for(
        shapes_data, ["data.batch_size=32", "optim.lr=3e-3", "optim.ema_decay=0.0"], steps=80, every=1000
    )
    from pixart.data.dataset import FeatureDataset, collate

    dataset = FeatureDataset(shapes_data, {"dense": 1.0})
    batch = collate([dataset[i] for i in range(len(dataset)) if dataset[i]["bucket"] == "1.0"][:32])
    x0 = batch["mean"]
    cond = {"y": batch["text"], "mask": batch["mask"]}
    t = torch.linspace(50, 950, 32).long()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))

    def probe(model) -> float:
        with torch.no_grad():
            return training_loss(model.eval(), x0, cond, config.diffusion, t=t, noise=noise)["loss"].mean().item()

    from pixart.model import PixArt

    torch.manual_seed(0)
    before = probe(PixArt(config.model))
    train(
        dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(shapes_data))),
        tmp_path / "run",
        progress=False,
    )
    after = probe(load_transformer(tmp_path / "run" / FINAL))
    assert after < before / 3, (before, after)


def test_a_changed_config_is_refused_only_where_there_is_a_checkpoint_to_resume(shapes_data, tmp_path):
    config = config_for(shapes_data, steps=2, every=1)
    changed = config_for(shapes_data, ["optim.lr=3e-4"], steps=2, every=1)
    # A run that stopped before its first checkpoint (say, on a setting AdamW refused) left only its config:
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "config.json").write_text(config_io.to_json(changed))
    assert train(config, tmp_path / "failed", progress=False)["status"] == "finished"
    with pytest.raises(TrainingError, match=r"another config.*optim.lr"):
        train(changed, tmp_path / "failed", progress=False)  # now it has checkpoints
    # What changes neither the weights nor the place in the data may change: a run out of memory resumes with
    # gradient checkpointing on (it was refused), and the previews may be asked otherwise
    resumable = ["gradient_checkpointing=true", "sample_steps=4", "max_nonfinite_steps=9", "previews=false"]
    resumed = train(config_for(shapes_data, resumable, steps=3, every=1), tmp_path / "failed", progress=False)
    assert resumed["steps"] == 3
    # data.root spelt otherwise (a trailing slash, or through a link) is the same data: it was refused (review)
    train(config_for(shapes_data, steps=1, every=1), tmp_path / "respelt", progress=False)
    (tmp_path / "link").symlink_to(shapes_data, target_is_directory=True)
    for steps, root in ((2, f"{shapes_data}/"), (3, str(tmp_path / "link"))):
        respelt = config_for(shapes_data, [f"data.root={root}"], steps=steps, every=1)
        assert train(respelt, tmp_path / "respelt", progress=False)["steps"] == steps
    other = tmp_path / "copy"  # a copy is other data, as far as a resume can tell
    shutil.copytree(shapes_data, other)
    with pytest.raises(TrainingError, match=r"another config.*data.root"):
        train(config_for(other, steps=4, every=1), tmp_path / "respelt", progress=False)
    # a config.json edited by hand (or of another version) was a ConfigError traceback
    saved = json.loads((tmp_path / "failed" / "config.json").read_text())
    (tmp_path / "failed" / "config.json").write_text(json.dumps({**saved, "log_every": "5"}))
    with pytest.raises(TrainingError, match=r"config.json holds no config this version can read \(log_every"):
        train(config_for(shapes_data, steps=3, every=1), tmp_path / "failed", progress=False)


def test_a_copy_without_config_json_is_checked_against_its_checkpoint(shapes_data, tmp_path):
    """A run folder copied without config.json was resumed unchecked: under another model size that was a
    load_state_dict traceback, under another learning rate a silently different run. The newest checkpoint
    holds the config it was written under."""
    train(config_for(shapes_data, steps=2, every=1), tmp_path / "run", progress=False)
    (tmp_path / "run" / "config.json").unlink()
    with pytest.raises(TrainingError, match=r"another config.*optim.lr"):
        train(config_for(shapes_data, ["optim.lr=3e-4"], steps=3, every=1), tmp_path / "run", progress=False)
    assert train(config_for(shapes_data, steps=3, every=1), tmp_path / "run", progress=False)["steps"] == 3
    # torch's legacy (pre-zip) format cannot be mapped: it was called damaged; now it is read whole
    newest = tmp_path / "run" / "checkpoints" / "step-0000003.pt"
    torch.save(torch.load(newest, weights_only=True), newest, _use_new_zipfile_serialization=False)
    (tmp_path / "run" / "config.json").unlink()
    with pytest.raises(TrainingError, match=r"another config.*optim.lr"):
        train(config_for(shapes_data, ["optim.lr=3e-4"], steps=4, every=1), tmp_path / "run", progress=False)
    assert train(config_for(shapes_data, steps=4, every=1), tmp_path / "run", progress=False)["steps"] == 4


def test_a_damaged_checkpoint_is_one_line_naming_the_one_before_it(shapes_data, tmp_path):
    """A checkpoint cut short (an interrupted copy of the run folder; the trainer's own writes are atomic)
    was torch's zip-archive traceback: now a TrainingError that names it and the checkpoint to resume from."""
    config = config_for(shapes_data, ["keep_checkpoints=2"], steps=2, every=1)
    train(config, tmp_path / "run", progress=False)
    newest = tmp_path / "run" / "checkpoints" / "step-0000002.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    longer = config_for(shapes_data, ["keep_checkpoints=2"], steps=3, every=1)
    with pytest.raises(TrainingError, match=r"step-0000002.pt cannot be read .*resume from step-0000001.pt"):
        train(longer, tmp_path / "run", progress=False)
    (tmp_path / "run" / "config.json").unlink()  # read from the checkpoint then: the same advice
    with pytest.raises(TrainingError, match=r"step-0000002.pt cannot be read .*resume from step-0000001.pt"):
        train(longer, tmp_path / "run", progress=False)
    newest.unlink()  # as the message advises
    assert train(longer, tmp_path / "run", progress=False)["steps"] == 3
    # without config.json: a checkpoint holding no config, or one of another version, is named as such
    (tmp_path / "run" / "config.json").unlink()
    newest = tmp_path / "run" / "checkpoints" / "step-0000003.pt"
    state = torch.load(newest, weights_only=True)
    # what world.json and data.json say, kept in the checkpoint for a copy of checkpoints/ alone
    assert state["world_size"] == 1
    assert state["data_samples"] == json.loads((tmp_path / "run" / "data.json").read_text())["samples"] > 0
    torch.save({k: v for k, v in state.items() if k != "config"}, newest)
    with pytest.raises(TrainingError, match=r"config.json is missing and .*step-0000003.pt holds no training config"):
        train(config_for(shapes_data, steps=4, every=1), tmp_path / "run", progress=False)
    torch.save({**state, "config": {**state["config"], "log_every": "5"}}, newest)
    with pytest.raises(TrainingError, match=r"step-0000003.pt holds no config this version can read \(log_every"):
        train(config_for(shapes_data, steps=4, every=1), tmp_path / "run", progress=False)


def test_a_slow_checkpoint_is_said_once_with_the_launch_setting_that_gives_a_stop_time(
    shapes_data, tmp_path, monkeypatch, capsys
):
    """torchrun kills a stopped job 30 s after forwarding SIGTERM: a stop whose checkpoint took longer left
    none (review). A run whose saves take long says so once, naming --shutdown-timeout."""
    monkeypatch.setattr(loop, "SLOW_SAVE_S", 0.0)  # every save is "slow" here
    train(config_for(shapes_data, steps=3, every=1), tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    assert out.count("warning: a checkpoint took") == 1 and "under torchrun launch with --shutdown-timeout 600" in out


def test_a_run_dir_that_is_a_file_is_named_as_one(shapes_data, tmp_path):
    """--run-dir naming a file was mkdir's bare "File exists: PATH"."""
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TrainingError, match=r"--run-dir .*notes.txt is a file, not a folder"):
        train(config_for(shapes_data, steps=1), tmp_path / "notes.txt", progress=False)
    assert (tmp_path / "notes.txt").read_text() == "x"


def test_a_run_dir_holding_someone_elses_files_is_refused_before_anything_is_written(shapes_data, tmp_path):
    """--run-dir naming a diffusers transformer folder trained in it and wrote the run's config.json over the
    model's (which then no longer loaded); a folder of other files took checkpoints among them (review)."""
    model = tmp_path / "transformer"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel", "num_layers": 28}))
    (model / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    with pytest.raises(TrainingError, match=r"--run-dir .*transformer holds a config.json that is not a training"):
        train(config_for(shapes_data, steps=1), model, progress=False)
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("a.txt", "b.png", "c", "d", "e", "f"):
        (mine / name).write_text("x")
    with pytest.raises(TrainingError, match=r"holds files no training run writes \(a.txt, b.png, c, d, e and 1 more\)"):
        train(config_for(shapes_data, steps=1), mine, progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["a.txt", "b.png", "c", "d", "e", "f"]

    # What a run leaves before its config.json (a lock, its data, a killed atomic write) and a file
    # browser's metadata are no one else's: such a folder trains
    started = tmp_path / "started"
    (started / "data").mkdir(parents=True)
    for name in (".lock", ".DS_Store", ".config.json.host-12.tmp"):
        (started / name).write_text("")
    assert train(config_for(shapes_data, steps=1), started, progress=False)["status"] == "finished"
    # and a run's own folder, holding its config.json, resumes with notes of the user's beside it
    (started / "notes.txt").write_text("lr sweep, first try")
    assert train(config_for(shapes_data, steps=2), started, progress=False)["steps"] == 2


def test_fsdp_asked_of_one_process_is_said_to_train_whole(shapes_data, tmp_path, capsys):
    """--set parallel=fsdp without torchrun trained unsharded without a word (review): the memory it was asked
    for is not saved, which a user finds out when a larger model does not fit."""
    train(config_for(shapes_data, ["parallel=fsdp"], steps=1), tmp_path / "fsdp", progress=False)
    assert "warning: parallel=fsdp in one process: nothing to shard across" in capsys.readouterr().out
    train(config_for(shapes_data, steps=1), tmp_path / "ddp", progress=False)  # the default, ddp: nothing said
    assert "parallel=" not in capsys.readouterr().out


def test_a_run_refused_for_having_no_complete_batch_leaves_nothing(shapes_data, tmp_path, capsys):
    """The check came after the run's config.json, world.json and data.json were written (review): a folder
    that held a config of a run that never was."""
    with pytest.raises(TrainingError, match=r"no complete batch: 64 samples, batch 100 x 1 ranks per bucket"):
        train(config_for(shapes_data, ["data.batch_size=100"], steps=1), tmp_path / "run", progress=False)
    assert list((tmp_path / "run").iterdir()) == []
    args = ["train", "--recipe", "tiny", "--run-dir", str(tmp_path / "cli"), "--no-progress"]
    assert main([*args, *[f"--set={item}" for item in [*overrides(shapes_data), "data.batch_size=100"]]]) == 2
    assert "no complete batch" in capsys.readouterr().err and not (tmp_path / "cli").exists()


def fake_clock(monkeypatch) -> list[float]:
    """The training loop's time.time() reads a clock that moves one second per micro-batch (compute_loss call)
    and nowhere else, so no assertion depends on the machine's load; returned, for a test to move it too."""
    import types

    now = [1_000.0]
    real_compute_loss = loop.compute_loss

    def timed(*args, **kwargs):
        now[0] += 1.0
        return real_compute_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=lambda: now[0]))
    monkeypatch.setattr(loop, "compute_loss", timed)
    return now


def test_samples_per_second_leaves_out_checkpoints_and_previews(shapes_data, tmp_path, monkeypatch):
    """The window after a checkpoint or a preview counted its time as training: a run's samples/s dipped
    fifteenfold at every one (the saves and previews came after the window's clock was reset)."""
    now, real_save = fake_clock(monkeypatch), loop.ckpt.save_checkpoint

    def slow_save(*args, **kwargs):  # an hour a save, on the loop's clock
        now[0] += 3600.0
        return real_save(*args, **kwargs)

    monkeypatch.setattr(loop.ckpt, "save_checkpoint", slow_save)
    train(config_for(shapes_data, steps=6, every=2), tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [2, 4, 6]
    # each window: 2 steps of 8 samples in 2 seconds of the clock, a save's hour before the last two left out
    assert [row["samples_per_s"] for row in rows] == [pytest.approx(8.0)] * 3, rows


@pytest.mark.parametrize("train_creates_it", [True, False], ids=["train-creates-the-group", "caller-created-it"])
def test_train_destroys_the_process_group_only_if_it_created_it(shapes_data, tmp_path, monkeypatch, train_creates_it):
    """torchrun's processes must not leave their group to interpreter exit; a library caller's group stays."""
    import torch.distributed as dist

    from pixart.train.distributed import World

    store = dist.FileStore(str(tmp_path / "store"), 1)

    def one_rank_group(device=None, timeout_minutes=30.0) -> World:  # init_distributed under torchrun, one rank
        if not dist.is_initialized():
            dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        return World()

    if not train_creates_it:
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    monkeypatch.setattr(loop, "init_distributed", one_rank_group)
    try:
        train(config_for(shapes_data, steps=1, every=1000), tmp_path / "run", progress=False)
        assert dist.is_initialized() is not train_creates_it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_sigkill_at_a_random_step_then_rerun_gives_identical_weights(shapes_data, tmp_path):
    reference = cli(tmp_path / "reference", shapes_data)
    assert reference.returncode == 0, reference.stderr
    kill_at = random.Random(os.getpid()).choice([2, 4, 6, 8])
    process = cli(tmp_path / "killed", shapes_data, wait=False)
    target = tmp_path / "killed" / "checkpoints" / f"step-{kill_at:07d}.pt"
    deadline = time.time() + 300
    while not target.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / FINAL).exists()
    resumed = cli(tmp_path / "killed", shapes_data)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step-" in resumed.stdout
    assert_bitwise_equal(weights(tmp_path / "killed"), weights(tmp_path / "reference"))
    assert_bitwise_equal(load_file(tmp_path / "killed" / FINAL_EMA), load_file(tmp_path / "reference" / FINAL_EMA))


def test_a_data_loader_worker_killed_under_the_run_is_said_in_one_line(shapes_data, tmp_path, monkeypatch):
    """A worker the kernel's OOM killer ended gave torch's 28-line traceback and no advice."""
    from pixart.data.dataset import FeatureDataset

    read = FeatureDataset.__getitems__

    def killed_in_a_worker(self, indices):
        if torch.utils.data.get_worker_info() is not None:  # in the (forked) worker: as the OOM killer would
            os.kill(os.getpid(), signal.SIGKILL)
        return read(self, indices)

    monkeypatch.setattr(FeatureDataset, "__getitems__", killed_in_a_worker)
    config = config_for(shapes_data, ["data.num_workers=1"], steps=2)
    with pytest.raises(TrainingError, match=r"a data loader worker died \(DataLoader worker .*\): out of memory, "):
        train(config, tmp_path / "run", progress=False)


def test_a_resume_keeps_the_init_from_its_run_started_from(shapes_data, tmp_path, capsys):
    """init_from given on a resume is not read (rightly), but config.json was rewritten with it: the run's
    record named weights it never started from."""
    train(config_for(shapes_data, steps=2, every=1), tmp_path / "run", progress=False)
    moved = config_for(shapes_data, [f"init_from={tmp_path / 'elsewhere.safetensors'}"], steps=3, every=1)
    assert train(moved, tmp_path / "run", progress=False)["steps"] == 3
    assert "init_from is read when a run starts, and this one started from scratch" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["init_from"] == ""
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-0000003.pt", weights_only=True)
    assert state["config"]["init_from"] == ""


def test_the_full_disk_advice_fits_the_checkpoints_on_disk(tmp_path):
    """A save prunes once its checkpoint is written: with several kept, the older ones can go (named); a lower
    keep_checkpoints keeps fewer from then on, and never frees room before the next save."""
    from pixart.cli.train import disk_full

    (tmp_path / "checkpoints").mkdir()
    for step in (2, 4, 6):
        (tmp_path / "checkpoints" / f"step-{step:07d}.pt").write_bytes(b"")
    said = disk_full(tmp_path, str(tmp_path / "checkpoints" / "step-0000008.pt"), keep=3)
    assert "the checkpoints before step-0000006.pt can go: the run resumes from it" in said
    assert "--set keep_checkpoints=N keeps fewer from then on, 3 now, and a save needs room for N + 1" in said
    assert said.endswith(
        "continue from " + str(tmp_path / "checkpoints" / "step-0000006.pt") + ", the last complete checkpoint"
    )


def test_a_run_that_fills_its_disk_says_so_in_one_line_and_resumes_where_it_stopped(shapes_data, tmp_path):
    """A full disk at a checkpoint was torch's traceback ("enforce fail at inline_container.cc ... unexpected
    pos"): now one line naming the file, the space to free and the checkpoint the same command resumes from,
    which it does, to the bit, once there is room."""
    every = ["--set", "checkpoint_every=1"]
    reference = cli(tmp_path / "reference", shapes_data, *every, steps=3)
    assert reference.returncode == 0, reference.stderr
    size = (tmp_path / "reference" / "checkpoints" / "step-0000001.pt").stat().st_size
    disk = tmp_path / "disk"
    with small_disk(disk, kilobytes=size * 3 // 2 // 1024):  # room for one checkpoint, not two
        full = cli(disk / "run", shapes_data, *every, steps=3)
        assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
        assert re.search(
            r"error: the disk is full: \S*step-0000002.pt could not be written .*free some space \(a save needs "
            r"room for one checkpoint more than the 1 on disk\).* continue from \S*step-0000001.pt, the last complete",
            full.stderr.splitlines()[-1],
        ), full.stderr
        # keep_checkpoints=2 was advised, which frees nothing before a save (it prunes once it has written)
        assert "keep_checkpoints" not in full.stderr
        assert [p.name for p in (disk / "run" / "checkpoints").iterdir()] == ["step-0000001.pt"]  # no temporary
        subprocess.run(["mount", "-o", f"remount,size={size * 4 // 1024}k", str(disk)], check=True)
        resumed = cli(disk / "run", shapes_data, *every, steps=3)
        assert resumed.returncode == 0, resumed.stderr
        assert "resumed from step-0000001.pt" in resumed.stdout
        assert_bitwise_equal(weights(disk / "run"), weights(tmp_path / "reference"))


@pytest.mark.parametrize("to_group", [False, True], ids=["to-the-process", "to-its-group-with-workers"])
def test_sigterm_checkpoints_and_exits_cleanly_then_resumes(shapes_data, tmp_path, to_group):
    """SIGTERM to the trainer, or (as torchrun, scancel and systemd send it) to its whole process group with
    two loader workers in it: the workers used to die of it first, and the run ended without a checkpoint."""
    workers = ("--set", "data.num_workers=2") if to_group else ()
    reference = cli(tmp_path / "reference", shapes_data, steps=10)
    process = cli(tmp_path / "stopped", shapes_data, *workers, wait=False, steps=10, new_session=to_group)
    first = tmp_path / "stopped" / "checkpoints" / "step-0000002.pt"
    while not first.exists() and process.poll() is None:
        time.sleep(0.02)
    if to_group:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    # 128 + SIGTERM, as a shell reports a command a signal ended: `pixart train ... && pixart convert` stops
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "interrupted at step" in out and json.loads(out.splitlines()[-1])["signal"] == "SIGTERM"
    assert not (tmp_path / "stopped" / FINAL).exists()
    # as a run killed while writing its weights leaves (pid 2**22 + 1: above Linux's largest, never running)
    leftover = temporary_path(tmp_path / "stopped" / FINAL, 2**22 + 1)
    leftover.write_bytes(b"half")
    resumed = cli(tmp_path / "stopped", shapes_data, steps=10)
    assert resumed.returncode == 0, resumed.stderr
    assert not leftover.exists()
    assert_bitwise_equal(weights(tmp_path / "stopped"), weights(reference and tmp_path / "reference"))


@pytest.mark.parametrize(
    ("compiled", "accumulate"), [(False, 1), (True, 1), (False, 2)], ids=["eager", "compiled", "accumulated"]
)
def test_two_processes_under_torchrun_equal_one_process(shapes_data, tmp_path, compiled, accumulate):
    """Global batch 8 as 1 x 8 and as 2 x 4 (gloo DDP): the same weights within 1e-6 after 6 steps.

    Adam scales every gradient to about lr, so the summation-order noise of near-zero gradients would
    be amplified to lr scale with eps 1e-10; the test uses eps 1e-6 and lr 1e-4 to compare the data flow.
    Compiled: both runs with compile=true (each block compiled inside the DDP wrapper). Accumulated:
    each step two micro-batches, 1 x 4 and 2 x 2: DDP skips the all-reduce of the first (no_sync), and a
    rank that skipped it on the last too would step on its own gradients alone.
    """
    torchrun = Path(sys.executable).with_name("torchrun")
    common = ["-m", "pixart", "train", "--recipe", "tiny", "--no-progress"]
    items = [*overrides(shapes_data, steps=6, every=100), "optim.eps=1e-6", "optim.lr=1e-4"]
    items.append(f"optim.grad_accum={accumulate}")
    sets = [a for item in [*items, *(["compile=true"] if compiled else [])] for a in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [
            sys.executable,
            *common,
            "--run-dir",
            str(tmp_path / "one"),
            *sets,
            "--set",
            f"data.batch_size={8 // accumulate}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr
    double = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            *common,
            "--run-dir",
            str(tmp_path / "two"),
            *sets,
            "--set",
            f"data.batch_size={4 // accumulate}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert double.returncode == 0, double.stderr
    assert "2 process(es)" in double.stdout
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=0)
    logged = [
        [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("one", "two")
    ]
    assert logged[1] == pytest.approx(logged[0], rel=1e-5)  # both ranks' loss, not rank 0's half of the batch


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_fsdp_two_processes_with_a_sharded_resume_equal_one_process(shapes_data, tmp_path, compiled):
    """FSDP2 over gloo, saved at step 0 (--steps 0), resumed to 3 (torch.distributed.checkpoint), then to 6.

    Step 0's checkpoint once held AdamW state with a step count of 1 (get_state_dict's zero step), which put
    every later bias correction one off: the weights parted from one process's by 2e-5.

    Compiled: both runs with compile=true (each sharded block compiled, FSDP's hooks traced with it). Each
    rank's gloo threads have ended when the command returns: left to the interpreter's exit, they aborted a
    rank there in two CI runs (FSDP's device mesh and parameter groups held the group past its destruction).
    """
    torchrun = Path(sys.executable).with_name("torchrun")
    worker = Path(__file__).with_name("train_then_list_threads.py")
    common = ["train", "--recipe", "tiny", "--no-progress"]
    items = [*overrides(shapes_data, steps=6, every=3), "optim.eps=1e-6", "optim.lr=1e-4"]
    items += ["previews=true", "sample_every=2", "sample_steps=4"]  # FSDP gathers the shards for the main rank
    items += ["compile=true"] if compiled else []
    sets = [a for item in items for a in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # an abort shows each thread's stack
    single = subprocess.run(
        [sys.executable, "-m", "pixart", *common, "--run-dir", str(tmp_path / "one"), *sets],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr

    def run_sharded(steps: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                str(torchrun),
                "--standalone",
                "--nproc_per_node=2",
                str(worker),
                str(tmp_path),
                *common,
                "--run-dir",
                str(tmp_path / "fsdp"),
                *sets,
                "--set",
                "data.batch_size=4",
                "--set",
                "parallel=fsdp",
                "--steps",
                steps,
                *extra,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )

    for steps in ("0", "3", "6"):
        sharded = run_sharded(steps)
        assert sharded.returncode == 0, sharded.stdout + sharded.stderr
        for rank in (0, 1):
            threads = json.loads((tmp_path / f"threads-rank-{rank}.json").read_text())
            assert not [name for name in threads if "gloo" in name], (steps, rank, threads)
    assert (tmp_path / "fsdp" / "checkpoints" / "step-0000003.dcp").is_dir()
    assert "resumed from step-0000003.dcp" in sharded.stdout
    one, two = weights(tmp_path / "one"), weights(tmp_path / "fsdp")
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=0)
    # The last sharded checkpoint, read whole in this one process (pixart info/convert), holds the final EMA
    from pixart.weights import load_transformer

    last = load_transformer(tmp_path / "fsdp" / "checkpoints" / "step-0000006.dcp", use_ema=True).state_dict()
    assert_bitwise_equal({k: v for k, v in last.items() if k != "pos_embed"}, load_file(tmp_path / "fsdp" / FINAL_EMA))
    for step in (2, 4, 6):  # the same grids as one process draws (the weights agree to 1e-6); 2, 4 mid-run
        grids = [
            np.asarray(Image.open(run / "samples" / f"step-{step:07d}.png"))
            for run in (tmp_path / "one", tmp_path / "fsdp")
        ]
        assert np.abs(grids[0].astype(int) - grids[1].astype(int)).max() <= 1
    if compiled:
        return
    # Without config.json, a resume is checked against the config in the newest .dcp (it was refused
    # outright); a shard cut short is one line naming the checkpoint to resume from instead (DCP's
    # CheckpointException, a BaseException, escaped as a traceback)
    (tmp_path / "fsdp" / "config.json").unlink()
    refused = run_sharded("9", "--set", "optim.lr=3e-4")
    assert refused.returncode != 0 and "another config" in refused.stderr and "optim.lr" in refused.stderr
    shard = sorted((tmp_path / "fsdp" / "checkpoints" / "step-0000006.dcp").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    damaged = run_sharded("9")
    ours = damaged.stderr.split("torch/distributed/elastic")[0]  # torchrun's own report of the failed ranks after
    assert damaged.returncode != 0 and "Traceback" not in ours, damaged.stderr
    assert "step-0000006.dcp cannot be read" in damaged.stderr and "resume from step-0000003.dcp" in damaged.stderr


def test_a_resume_refused_under_torchrun_is_one_line_on_every_rank(shapes_data, tmp_path):
    """A run resumed by another process count: the main rank refused, the other died in a gloo traceback."""
    sets = [a for item in overrides(shapes_data, steps=1, every=1) for a in ("--set", item)]
    common = ["train", "--recipe", "tiny", "--no-progress", "--run-dir", str(tmp_path / "run"), *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "pixart", *common], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", "-m", "pixart"]
    result = subprocess.run([*torchrun, *common], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode != 0
    refusal = f"error: {tmp_path / 'run'} was trained by 1 process(es), and this is 2"
    assert result.stderr.count(refusal) == 2, result.stderr  # each rank says it, in one line
    assert "[rank1]" not in result.stderr and "Traceback" not in result.stderr.split("torchrun")[0], result.stderr


def test_a_window_resumed_under_torchrun_logs_an_uninterrupted_runs_loss_to_the_bit(shapes_data, tmp_path):
    """Two processes, log every 8 steps: one run to 8, and one that ends at 5 (its checkpoint holds steps 1-5's
    part of the window) and is extended to 8. Every rank restored the ranks' mean of the window and averaged
    it again, so step 8's loss parted from the uninterrupted run's in the 7th digit (review); each rank now
    restores its own sum."""
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(folder: str, steps: int) -> None:
        items = [*overrides(shapes_data, steps=steps, every=100), "log_every=8", "data.batch_size=4"]
        sets = [a for item in items for a in ("--set", item)]
        command = ["-m", "pixart", "train", "--recipe", "tiny", "--no-progress", "--run-dir", str(tmp_path / folder)]
        done = subprocess.run([*torchrun, *command, *sets], capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr

    run("whole", 8)
    run("extended", 5)
    run("extended", 8)
    whole, extended = (
        {row["step"]: row for row in read_metrics(tmp_path / f / "metrics.jsonl")} for f in ("whole", "extended")
    )
    assert_bitwise_equal(weights(tmp_path / "whole"), weights(tmp_path / "extended"))
    assert extended[8]["loss"] == whole[8]["loss"]  # parted at 6e-8 here (0.97557259 against 0.97557253)


def test_a_refusal_on_one_node_stops_every_node_at_once(shapes_data, tmp_path):
    """Two torchrun "nodes" of one process each, started in two folders: data.root=data is there for one only
    (a dataset mounted on one node). The node without it refused before joining the process group, and the
    other waited in it, silent, for the 30-minute timeout (review). Now both stop in seconds, and the node
    that could start says another refused. --dry-run under torchrun shows the config once, not once a rank."""
    import socket

    with socket.socket() as probe:  # a free port for the two nodes' rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    has_data, lacks_data = tmp_path / "node-a", tmp_path / "node-b"
    for node in (has_data, lacks_data):
        node.mkdir()
    (has_data / "data").symlink_to(shapes_data, target_is_directory=True)
    sets = [a for item in [*overrides(Path("data"), steps=2), "data.batch_size=4"] for a in ("--set", item)]
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nnodes=2", "--nproc_per_node=1"]
    torchrun += ["--master_addr=127.0.0.1", f"--master_port={port}"]
    command = ["-m", "pixart", "train", "--recipe", "tiny", "--no-progress", "--run-dir", str(tmp_path / "run"), *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [*torchrun, f"--node_rank={rank}", *command],
            cwd=node,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: torchrun and its worker, killed together below
        )
        for rank, node in enumerate((has_data, lacks_data))
    ]
    try:
        said = [node.communicate(timeout=120)[1] for node in nodes]  # 30 minutes before, on node a
    finally:  # not left waiting past a failure
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):  # ended, as it should have
                os.killpg(node.pid, signal.SIGKILL)
    assert [node.returncode for node in nodes] == [1, 1]  # torchrun's status for a failed worker
    assert "error: data.root: data is not a feature dataset" in said[1], said[1]
    assert "error: another process of this job refused to start, and printed why on its node" in said[0], said[0]
    assert not (tmp_path / "run" / "checkpoints").exists()

    dry = ["--standalone", "--nproc_per_node=2", "-m", "pixart", "train", "--recipe", "tiny", "--dry-run"]
    shown = subprocess.run([torchrun[0], *dry], capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count('"recipe"') == 1 and shown.stdout.count("world: 2 process(es)") == 1, shown.stdout


def test_a_run_folder_trains_one_job_at_a_time(shapes_data, tmp_path):
    """A rerun started while a killed torchrun's orphaned workers still trained resumed beside them: both saved
    checkpoints and appended to one metrics.jsonl. The main rank holds a lock on RUN_DIR/.lock as it trains."""
    import fcntl

    config, run_dir = config_for(shapes_data, steps=2), tmp_path / "run"
    train(config, run_dir, progress=False)
    partial = run_dir / "checkpoints" / "step-0000004.dcp.tmp"  # the other job's save in progress
    partial.mkdir()
    with open(run_dir / ".lock", "a+") as other:  # the other job's hold on the folder
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.seek(0)
        other.truncate()
        other.write("process 4242 on node7\n12345\n")
        other.flush()
        refused = r"run is being trained by another job \(process 4242 on node7\): wait for it"
        with pytest.raises(TrainingError, match=refused):
            train(dataclasses.replace(config, steps=4), run_dir, progress=False)
        assert partial.is_dir() and len(text_lines(run_dir / "metrics.jsonl")) == 1  # nothing touched
    summary = train(dataclasses.replace(config, steps=4), run_dir, progress=False)  # once it has let go
    assert summary["steps"] == 4 and not partial.exists()


def test_processes_that_see_different_checkpoints_are_refused(shapes_data, tmp_path, monkeypatch):
    """Nodes with a run folder each (not shared): rank 0 resumed from its checkpoint, the others from scratch,
    trained on and reported success. Here the other process is simulated: it sees no checkpoint."""
    config, run_dir = config_for(shapes_data, steps=2), tmp_path / "run"
    train(config, run_dir, progress=False)
    another_sees_none = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # (newest, -oldest) of a rank with none
    monkeypatch.setattr(checks, "all_reduce_max", lambda tensor, world: torch.maximum(tensor, another_sees_none))
    with pytest.raises(
        TrainingError,
        match=r"see different checkpoints in .*run \(newest: step 2 on one, none on another\): under torchrun the "
        "run folder must be one folder that every node shares",
    ):
        train(dataclasses.replace(config, steps=4), run_dir, progress=False)


def test_one_rank_dying_fails_the_job_clearly(shapes_data, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    sets = [a for item in overrides(shapes_data, steps=6, every=100) for a in ("--set", item)]
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "pixart",
            "train",
            "--recipe",
            "tiny",
            "--no-progress",
            "--run-dir",
            str(tmp_path / "run"),
            *sets,
            "--set",
            "data.batch_size=4",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", loop.FAULT_ENV: "exit:1:3"},
    )
    assert result.returncode != 0
    assert "exitcode" in result.stderr and "rank" in result.stderr  # torchrun names the failed rank and its code
    assert not (tmp_path / "run" / FINAL).exists()
    # the survivor says so in one line, not in a 20-line traceback through DDP's broadcast (review)
    ours = result.stderr.split("torch/distributed/elastic")[0]  # before torchrun's own report
    assert "pixart train: error: another process of this job stopped or stalled (its output may say why)" in ours, ours
    assert "[rank0]" not in ours and "Traceback" not in ours, ours


def test_a_stalled_rank_stops_the_job_after_collective_timeout(shapes_data, tmp_path):
    """A process stuck (never returning, not dead) held the others in a collective for a fixed 30 minutes,
    with no setting to shorten it (review). collective_timeout (minutes) now bounds it: 0.1 here, 6 s."""
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2"]
    torchrun.append("--shutdown-timeout=2")  # the stalled process ignores SIGTERM: killed 2 s after it
    items = [*overrides(shapes_data, steps=6, every=100), "data.batch_size=4", "collective_timeout=0.1"]
    sets = [a for item in items for a in ("--set", item)]
    command = ["-m", "pixart", "train", "--recipe", "tiny", "--no-progress", "--run-dir", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", loop.FAULT_ENV: "stall:1:3"}
    began = time.monotonic()
    result = subprocess.run([*torchrun, *command, *sets], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0 and time.monotonic() - began < 120  # 30 minutes before
    ours = result.stderr.split("torch/distributed/elastic")[0]
    assert "pixart train: error: another process of this job stopped or stalled" in ours, ours
    assert not (tmp_path / "run" / FINAL).exists()


def test_a_non_finite_step_is_skipped_and_counted(shapes_data, tmp_path, monkeypatch):
    poison_steps(monkeypatch, lambda s: s == 3)
    summary = train(config_for(shapes_data, steps=6, every=100), tmp_path / "run", progress=False)
    assert summary["skipped_steps"] == 1
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "run").values())


def test_skipped_steps_leave_weights_moments_and_ema_bit_for_bit(shapes_data, tmp_path, monkeypatch):
    """The device skips a bad step itself (no host read in the step): steps 3 and 4 poisoned, so the
    checkpoint after step 4 holds the weights, AdamW moments and step counts, and EMA of step 2's."""
    poison_steps(monkeypatch, lambda s: s >= 2)  # steps count from 0: the 3rd and 4th
    config = config_for(shapes_data, ["optim.warmup_steps=4"], steps=4, every=2)
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["skipped_steps"] == 2
    folder = tmp_path / "run" / "checkpoints"
    before, after = (torch.load(folder / f"step-{s:07d}.pt", weights_only=True) for s in (2, 4))
    assert_bitwise_equal(before["model"], after["model"])
    assert_bitwise_equal(before["ema"], after["ema"])
    moments = [(key, state) for key, state in before["optimizer"]["state"].items()]
    assert moments and all(
        torch.equal(state[name], after["optimizer"]["state"][key][name])
        for key, state in moments
        for name in ("step", "exp_avg", "exp_avg_sq")
    )
    assert int(before["optimizer"]["state"][0]["step"]) == 2
    # the schedule follows the step count, skipped steps included (as with GradScaler's skipped steps)
    assert after["scheduler"]["last_epoch"] == 4


def test_a_stop_checkpoint_counts_a_skipped_last_step(shapes_data, tmp_path, monkeypatch):
    """SIGTERM during step 3, step 4 non-finite: the run stops after step 4 (the flag reaches the host a
    step late) and its checkpoint counts step 4 as skipped (the flags are settled before it is written)."""
    poison_steps(monkeypatch, lambda s: s == 3)
    poisoned = loop.compute_loss

    def signalling(wrapped, inner, batch, config, scaling, world, step, micro, bf16):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return poisoned(wrapped, inner, batch, config, scaling, world, step, micro, bf16)

    monkeypatch.setattr(loop, "compute_loss", signalling)
    summary = train(config_for(shapes_data, ["log_every=100"], steps=10, every=100), tmp_path / "run", progress=False)
    assert (summary["status"], summary["steps"], summary["skipped_steps"]) == ("interrupted", 4, 1)
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-0000004.pt", weights_only=True)
    assert state["skipped_steps"] == 1 and int(state["optimizer"]["state"][0]["step"]) == 3


def stop_during(monkeypatch, step_index: int) -> None:
    """SIGTERM while computing the loss of step `step_index` (from 0), once: the run stops and checkpoints
    two steps later (the stop flag reaches the host with the next step's flags)."""
    inner = loop.compute_loss
    sent = []

    def signalling(wrapped, model, batch, config, scaling, world, step, micro, bf16):
        if step == step_index and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGTERM)
        return inner(wrapped, model, batch, config, scaling, world, step, micro, bf16)

    monkeypatch.setattr(loop, "compute_loss", signalling)


def test_a_resumed_run_logs_the_rows_an_uninterrupted_one_logs(shapes_data, tmp_path, monkeypatch, capsys):
    """Log every 3 steps, stopped at step 5: the row of step 6 averages steps 4-6, two of them trained
    before the stop (the log window is in the checkpoint); training time goes on from the stop."""
    config = config_for(shapes_data, ["log_every=3"], steps=9, every=100)
    train(config, tmp_path / "reference", progress=False)
    assert "done: 9 steps in " in capsys.readouterr().out
    stop_during(monkeypatch, 3)
    stopped = train(config, tmp_path / "run", progress=False)
    assert (stopped["status"], stopped["steps"]) == ("interrupted", 5)
    monkeypatch.undo()
    train(config, tmp_path / "run", progress=False)
    assert "done: 9 steps (4 in this run) in " in capsys.readouterr().out  # the time printed is this run's
    rows, reference = (
        read_metrics(tmp_path / "run" / "metrics.jsonl"),
        read_metrics(tmp_path / "reference" / "metrics.jsonl"),
    )
    assert [r["step"] for r in rows] == [r["step"] for r in reference] == [3, 6, 9]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference], rel=1e-6)
    assert rows[0]["time"] < rows[1]["time"] < rows[2]["time"]


def test_an_extended_run_logs_the_rows_an_uninterrupted_one_logs(shapes_data, tmp_path):
    """Finished at step 7 (log every 3: a last row off the grid), then extended to 9: it kept a row at 7
    and logged steps 8-9 alone at step 9, where an uninterrupted run logs steps 7-9. Weights were equal."""
    reference = config_for(shapes_data, ["log_every=3"], steps=9, every=100)
    train(reference, tmp_path / "reference", progress=False)
    train(dataclasses.replace(reference, steps=7), tmp_path / "run", progress=False)
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [3, 6, 7]
    train(reference, tmp_path / "run", progress=False)
    rows, expected = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("run", "reference"))
    assert [r["step"] for r in rows] == [r["step"] for r in expected] == [3, 6, 9]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in expected], rel=1e-6)


def test_a_resumed_run_counts_the_non_finite_steps_in_a_row_before_its_checkpoint(shapes_data, tmp_path, monkeypatch):
    """Steps 4 on are NaN and 3 in a row stop a run: stopped at step 5 (two bad so far) and resumed, it
    stops at step 6, as it would have uninterrupted."""
    config = config_for(shapes_data, ["max_nonfinite_steps=3", "log_every=100"], steps=10, every=100)
    poison_steps(monkeypatch, lambda s: s >= 3)
    stop_during(monkeypatch, 3)
    assert train(config, tmp_path / "run", progress=False)["steps"] == 5
    with pytest.raises(TrainingError, match=r"3 non-finite steps in a row \(last at step 6\)"):
        train(config, tmp_path / "run", progress=False)


def test_deferred_flags_reach_the_host_when_settled():
    from pixart.train.flags import DeferredFlags, skip_flag, step_flags

    deferred = DeferredFlags()
    good = step_flags(torch.tensor(0.5), torch.tensor(1.0), stop_requested=False)
    bad_grad = step_flags(torch.tensor(0.5), torch.tensor(float("inf")), stop_requested=True)
    assert float(skip_flag(good)) == 0.0 and float(skip_flag(bad_grad)) == 1.0
    deferred.push(1, good)
    deferred.push(2, bad_grad)
    first, second = deferred.settle()
    assert (first.step, first.skipped, first.stop_requested) == (1, False, False)
    assert (second.step, second.nonfinite_loss, second.nonfinite_grad, second.stop_requested) == (2, False, True, True)
    assert second.skipped and deferred.settle() == []


def test_a_training_step_reads_nothing_back_to_the_host(shapes_data, tmp_path, monkeypatch):
    """Loss (the default IDDPM objective), backward, clipping, the non-finite flags, the guarded AdamW
    update and the EMA run without one host read: each would stall a GPU until its queue drained. Reads
    are watched at dispatch (.item(), bool()) and at Python level (.tolist(), which dispatches nothing)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from pixart.data.dataset import FeatureDataset, collate
    from pixart.train import step as train_step
    from pixart.train.data import LatentScaling
    from pixart.train.distributed import World
    from pixart.train.flags import optimizer_step, skip_flag, step_flags
    from pixart.train.init import build_model

    class HostReads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.reads = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default):
                self.reads.append(func)
            return func(*args, **(kwargs or {}))

    config = config_for(shapes_data)
    dataset = FeatureDataset(shapes_data, config.data.caption_probs, seed=0)
    batch = collate([dataset[i] for i in range(4)])
    model = build_model(config)
    optimizer = train_step.build_optimizer(list(model.parameters()), config.optim, 1e-4)
    scaling, world = LatentScaling.from_info(dataset.info), World()
    ema = {n: p.detach().clone() for n, p in model.named_parameters()}
    python_reads = []

    def recording(name, original):
        def read(tensor, *args):
            python_reads.append(name)
            return original(tensor, *args)

        return read

    for name in ("tolist", "item", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, recording(name, getattr(torch.Tensor, name)))
    with HostReads() as watch:
        loss = train_step.compute_loss(model, model, batch, config, scaling, world, 0, 0, False)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), config.optim.grad_clip)
        flags = step_flags(loss.detach(), grad_norm, stop_requested=False)
        optimizer_step(optimizer, skip_flag(flags))
        train_step.update_ema(ema, model, 0.99)
    monkeypatch.undo()
    assert watch.reads == [] and python_reads == []
    assert int(optimizer.state[next(model.parameters())]["step"]) == 1  # the update did run


def test_captions_padded_to_max_length_reach_the_model_in_one_shape_with_the_same_loss(shapes_data):
    """data.caption_padding: a batch carries its longest caption's tokens, so a GPU run met dozens of
    lengths (a recompilation and new cuDNN attention plans for each); padded to model.max_length there is
    one shape, and the masked padding changes no loss. auto pads on a GPU only."""
    from pixart.data.dataset import FeatureDataset, collate
    from pixart.train import step as train_step
    from pixart.train.data import LatentScaling
    from pixart.train.distributed import World
    from pixart.train.init import build_model

    dataset = FeatureDataset(shapes_data, {"dense": 1.0}, seed=0)
    batch = collate([dataset[i] for i in range(4)])
    losses, lengths = {}, {}
    for padding in ("longest", "max_length"):
        config = config_for(shapes_data, [f"data.caption_padding={padding}"])
        torch.manual_seed(0)
        model = build_model(config)
        seen: list[int] = []
        model.register_forward_pre_hook(
            lambda module, args, kwargs, seen=seen: seen.append(kwargs["y"].shape[1]), with_kwargs=True
        )
        scaling = LatentScaling.from_info(dataset.info)
        losses[padding] = train_step.compute_loss(model, model, batch, config, scaling, World(), 3, 0, False)
        lengths[padding] = seen
    max_length = config.model.max_length
    assert batch["text"].shape[1] < max_length  # the batch itself is cut to its longest caption
    assert lengths == {"longest": [batch["text"].shape[1]], "max_length": [max_length]}
    torch.testing.assert_close(losses["max_length"], losses["longest"], rtol=1e-5, atol=1e-6)
    y, mask = train_step.pad_captions(batch["text"], batch["mask"], max_length)
    assert y.shape == (4, max_length, batch["text"].shape[2]) and torch.equal(
        y[:, : batch["text"].shape[1]], batch["text"]
    )
    assert not y[:, batch["text"].shape[1] :].any() and not mask[:, batch["text"].shape[1] :].any()
    assert train_step.pads_captions("auto", torch.device("cuda")) and not train_step.pads_captions(
        "auto", torch.device("cpu")
    )
    with pytest.raises(ValueError, match="caption_padding must be one of auto, longest, max_length; got 'max'"):
        config_for(shapes_data, ["data.caption_padding=max"])


def test_previews_draw_ema_grids_without_touching_training(shapes_data, tmp_path):
    """Grids every 2 steps and at the end, from the EMA weights; the weights equal a run without them."""
    plain = train(config_for(shapes_data, steps=4, every=100), tmp_path / "plain", progress=False)
    config = config_for(shapes_data, ["previews=true", "sample_every=2", "sample_steps=4"], steps=4, every=100)
    summary = train(config, tmp_path / "run", progress=False)
    assert_bitwise_equal(weights(tmp_path / "plain"), weights(tmp_path / "run"))
    assert plain["final_loss"] == summary["final_loss"]
    assert summary["preview"] == str(tmp_path / "run" / "samples" / "step-0000004.png")
    early, late = (np.asarray(Image.open(tmp_path / "run" / "samples" / f"step-{s:07d}.png")) for s in (2, 4))
    assert early.shape == late.shape and early.std() > 0
    assert not np.array_equal(early, late)  # drawn from the weights of their step

    # the grid is what the EMA weights sample: redraw step 4's from the saved EMA file
    from pixart.data.dataset import FeatureDataset
    from pixart.train.distributed import World
    from pixart.train.previews import Previewer

    dataset = FeatureDataset(shapes_data, config.data.caption_probs, seed=config.seed)
    previewer = Previewer.for_run(config, dataset, tmp_path / "again", World())
    redrawn = previewer.write(load_file(tmp_path / "run" / FINAL_EMA), 4)
    assert np.array_equal(np.asarray(Image.open(redrawn)), late)


@pytest.mark.parametrize(("shift", "base_share", "expected"), [(3.0, 0, 3.0), (2.0, 4, 4.0)])
def test_previews_of_a_flow_model_sample_with_its_training_shift(
    shapes_data, tmp_path, monkeypatch, shift, base_share, expected
):
    """A flow model trained on shifted noise levels is previewed on the same levels: the shift itself, or
    with shift_base_tokens the shift grown by sqrt(tokens / base) (base a quarter of the grid here: x2)."""
    from pixart.data.dataset import FeatureDataset
    from pixart.train import previews
    from pixart.train.distributed import World

    config = config_for(shapes_data, ["previews=true", "sample_steps=2", "diffusion.objective=flow"])
    dataset = FeatureDataset(shapes_data, config.data.caption_probs, seed=config.seed)
    previewer = previews.Previewer.for_run(config, dataset, tmp_path / "samples", World())
    assert previewer.bucket == dataset[0]["bucket"]  # the aspect condition of its shape's samples
    h, w = previewer.latent_shape[-2:]
    tokens = (h // config.model.patch_size) * (w // config.model.patch_size)
    base = tokens // base_share if base_share else 0
    config = config_io.apply_overrides(config, [f"diffusion.flow_shift={shift}", f"diffusion.shift_base_tokens={base}"])
    previewer.config = config
    asked = []

    def recording(*args, **kwargs):
        asked.append(kwargs["flow_shift"])
        return previews_sample(*args, **kwargs)

    previews_sample = previews.sample
    monkeypatch.setattr(previews, "sample", recording)
    assert previewer.write(build_model(config).state_dict(), 1) is not None
    assert asked == [pytest.approx(expected)]


def test_a_failed_preview_is_a_warning_after_its_steps_checkpoint(shapes_data, tmp_path, monkeypatch, capsys):
    """A preview that failed (a codec that would not load) stopped the run before the step's checkpoint, so
    every attempt lost the same steps, or failed a finished run after its final weights."""
    from pixart.train.previews import Previewer

    run = tmp_path / "run"
    asked = []

    def failing(self, weights, step):
        asked.append((step, (run / "checkpoints" / f"step-{step:07d}.pt").exists()))
        raise OSError("no VAE here")

    monkeypatch.setattr(Previewer, "write", failing)
    config = config_for(shapes_data, ["previews=true", "sample_every=2", "sample_steps=2"], steps=6, every=2)
    summary = train(config, run, progress=False)
    assert summary["status"] == "finished" and "preview" not in summary and (run / FINAL_EMA).is_file()
    assert asked == [(2, True)]  # after the step's checkpoint, and once: previews are off after a failure
    err = capsys.readouterr().err
    assert "warning: the preview grid at step 2 failed (OSError: no VAE here); previews are off" in err
    monkeypatch.undo()  # a preview failing at the end only: the run still finishes, with its weights
    calls = []

    def failing_at_the_end(self, weights, step):
        calls.append(step)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Previewer, "write", failing_at_the_end)
    config = config_for(shapes_data, ["previews=true", "sample_every=100", "sample_steps=2"], steps=2, every=2)
    summary = train(config, tmp_path / "end", progress=False)
    assert calls == [2] and summary["status"] == "finished" and (tmp_path / "end" / FINAL_EMA).is_file()


def test_preview_models_the_data_names_are_checked_before_the_model_is_built(shapes_data, tmp_path, monkeypatch):
    """Features prepared on another machine name a VAE (or T5) folder missing here: previews, on by default,
    failed at the first grid or at the end of the run, telling the user to pass --vae, which train lacks."""
    moved = tmp_path / "moved"
    shutil.copytree(shapes_data, moved)
    info = json.loads((moved / "dataset.json").read_text())

    def too_late(config):
        raise AssertionError("the model was built before the preview models were checked")

    monkeypatch.setattr(loop, "build_model", too_late)
    for key, kind, what in (("codec", "sd-vae", "image codec"), ("text_encoder", "t5", "text encoder")):
        missing = tmp_path / f"no-{kind}"
        changed = {**info, key: {**info[key], "kind": kind, "path": str(missing)}}
        (moved / "dataset.json").write_text(json.dumps(changed))
        message = (
            f"previews (on by default) load the {what} the data's dataset.json names ({kind}, {missing}), and "
            f"{missing} is not on this machine: make it available at that path, or set previews=false"
        )
        with pytest.raises(TrainingError, match=re.escape(message)):
            train(config_for(moved, ["previews=true"], steps=1), tmp_path / f"run-{kind}", progress=False)
        checks.check_given_data(config_for(moved, steps=1))  # previews=false: nothing to load, nothing refused
    from pixart.train.previews import check_preview_models

    check_preview_models("class", {**info, "text_encoder": {"kind": "t5", "path": "/x"}})  # previews labels only
    with pytest.raises(FileNotFoundError, match=r"dataset.json names .sd-vae, None., and it records no path to it"):
        check_preview_models("t2i", {**info, "codec": {"kind": "sd-vae"}})
    # a folder holding another model: the reason is kept, the loader's "point --vae" (train has none) is not
    t5_folder = tmp_path / "a-t5"
    t5_folder.mkdir()
    (t5_folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(FileNotFoundError) as refused:
        check_preview_models("t2i", {**info, "codec": {"kind": "sd-vae", "path": str(t5_folder)}})
    assert str(refused.value).endswith(
        f"and no VAE in {t5_folder}: its config.json describes a t5 model: make it available at that path, "
        "or set previews=false"
    )
    assert "--vae" not in str(refused.value)
    # a T5 folder without its tokenizer: the preview context and advice too, not the bare loader's error
    (t5_folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(FileNotFoundError) as refused:
        check_preview_models("t2i", {**info, "text_encoder": {"kind": "t5", "path": str(t5_folder)}})
    assert str(refused.value).startswith("previews (on by default) load the text encoder")
    assert f"and no tokenizer in {t5_folder}" in str(refused.value)
    assert str(refused.value).endswith("make it available at that path, or set previews=false")


def test_previews_show_the_captions_the_run_trains_on(shapes_data, tmp_path):
    """With caption_probs {alt: 0, dense: 1} the grids were labelled with the alt-text (the first field)."""
    from pixart.data.dataset import FeatureDataset
    from pixart.train.distributed import World
    from pixart.train.previews import Previewer

    for probs, field in (("{'alt': 0.0, 'dense': 1.0}", "dense"), ("{'alt': 1.0, 'dense': 0.0}", "alt")):
        config = config_for(shapes_data, [f"data.caption_probs={probs}", "previews=true"])
        dataset = FeatureDataset(shapes_data, config.data.caption_probs, seed=config.seed)
        previewer = Previewer.for_run(config, dataset, tmp_path / "samples", World())
        expected = list(dict.fromkeys(dataset.record(i)["captions"][field] for i in range(len(dataset))))[:8]
        assert previewer.prompts == expected, field


def test_an_extension_killed_before_its_finals_does_not_pass_for_finished(shapes_data, tmp_path, monkeypatch):
    """Extended 2 -> 4 and killed between step 4's checkpoint and the new finals (SIGKILL in a slow save): the
    folder looked finished and its step-2 finals were taken for step 4's by init_from and generate."""
    from pixart.modelfolder import read_spec
    from pixart.train.init import resolve_init_path
    from pixart.weights.formats import safetensors_metadata

    run = tmp_path / "run"
    train(config_for(shapes_data, steps=2, every=2), run, progress=False)
    assert safetensors_metadata(run / FINAL_EMA)["step"] == "2"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as SIGKILL leaves it: the checkpoint written, the finals not

    monkeypatch.setattr(loop, "finish_run", killed)
    with pytest.raises(KeyboardInterrupt):
        train(config_for(shapes_data, steps=4, every=2), run, progress=False)
    monkeypatch.undo()
    stale = f"{run}'s final weights are from step 2, but it trained on to step 4 and stopped before writing"
    with pytest.raises(FileNotFoundError, match=re.escape(f"init_from {run}: {stale}")):
        resolve_init_path(str(run))
    with pytest.raises(FileNotFoundError, match=re.escape(stale)):
        read_spec(run)
    summary = train(config_for(shapes_data, steps=4, every=2), run, progress=False)  # the same command again
    assert summary["trained_steps"] == 0 and safetensors_metadata(run / FINAL_EMA)["step"] == "4"
    # both take the run's current finals, and the same one (here final.safetensors: 4 steps at tiny's decay 0.9
    # leave 66% of the start in the EMA)
    assert resolve_init_path(str(run)) == read_spec(run)[1] == run / FINAL


def test_pictures_a_kill_interrupts_are_whole_or_absent(shapes_data, tmp_path, monkeypatch):
    """A preview grid torn by a kill stayed torn: the resume starts after its step and never draws it again.
    The loss curve was written in place too. A write that fails part-way now leaves no file."""
    from PIL import Image as PILImage

    from pixart.data.dataset import FeatureDataset
    from pixart.train.distributed import World
    from pixart.train.metrics import plot_loss
    from pixart.train.previews import Previewer

    config = config_for(shapes_data, ["previews=true", "sample_steps=2"])
    dataset = FeatureDataset(shapes_data, config.data.caption_probs, seed=config.seed)
    previewer = Previewer.for_run(config, dataset, tmp_path / "run", World())

    def torn_image(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError("killed")

    monkeypatch.setattr(PILImage.Image, "save", torn_image)
    with pytest.raises(OSError, match="killed"):
        previewer.write(build_model(config).state_dict(), 1)
    assert not (tmp_path / "run" / "samples" / "step-0000001.png").exists()
    import matplotlib.figure

    def torn_figure(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError("killed")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", torn_figure)
    with pytest.raises(OSError, match="killed"):
        plot_loss({"run": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]}, tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left either


def test_reopening_a_finished_run_trains_nothing_and_reports_its_last_loss(shapes_data, tmp_path):
    config = config_for(shapes_data, steps=4, every=2)
    first = train(config, tmp_path / "run", progress=False)
    before = weights(tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "step-0000004.pt"
    written = last.stat().st_mtime_ns
    from pixart.modelfolder import sampling_of

    assert sampling_of(tmp_path / "run" / FINAL_EMA)["objective"] == config.diffusion.objective  # how it samples
    # What a kill during the last save or prune of a run leaves: a finished run saves no more, so its
    # reopening is the one chance to delete them
    killed = [last.with_name(".step-0000002.dcp.deleted"), last.with_name("step-0000006.dcp.tmp")]
    for folder in killed:
        (folder / "shard").mkdir(parents=True)
    dead_writer = temporary_path(last.with_name("step-0000006.pt"), pid=2**22 + 1)  # above Linux's pid_max
    dead_writer.write_bytes(b"half")
    again = train(config, tmp_path / "run", progress=False)
    assert sorted(p.name for p in last.parent.iterdir()) == ["step-0000002.pt", "step-0000004.pt"]
    assert last.stat().st_mtime_ns == written  # not written again (a sharded one would be replaced in place)
    assert again["status"] == "finished" and again["steps"] == 4
    assert math.isfinite(again["final_loss"]) and again["final_loss"] == pytest.approx(first["final_loss"], rel=1e-6)
    assert_bitwise_equal(before, weights(tmp_path / "run"))


def test_compiled_training_follows_eager_across_bucket_shapes(shapes_data, tmp_path):
    """compile=true over two bucket heights (32 and 24 rows: a recompile with a dynamic height)."""
    extra = ["optim.eps=1e-6", "optim.lr=1e-4"]
    eager = train(config_for(shapes_data, extra, steps=4, every=100), tmp_path / "eager", progress=False)
    config = config_for(shapes_data, [*extra, "compile=true"], steps=4, every=100)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = train(config, tmp_path / "c", progress=False)
    assert counters["stats"]["unique_graphs"] >= 1  # the trainer did compile (each block, per bucket shape)
    assert compiled["status"] == "finished" and compiled["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-4)
    one, two = weights(tmp_path / "eager"), weights(tmp_path / "c")
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_bf16_autocasts_on_a_cpu_over_fp32_weights(shapes_data, tmp_path, monkeypatch, precision):
    """precision=bf16 runs the forward under CPU autocast (it used to be honoured on CUDA only)."""
    seen = []

    def recording(model, *args, **kwargs):
        losses = training_loss(model, *args, **kwargs)
        autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        seen.append((autocast, {p.dtype for p in model.parameters()}))
        return losses

    monkeypatch.setattr(train_step, "training_loss", recording)
    summary = train(config_for(shapes_data, [f"precision={precision}"], steps=2, every=100), tmp_path / "run")
    expected = torch.bfloat16 if precision == "bf16" else None
    assert len(seen) == 2 and all(item == (expected, {torch.float32}) for item in seen)  # master weights fp32
    assert math.isfinite(summary["final_loss"])


def test_repeated_non_finite_steps_stop_with_a_clear_error(shapes_data, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "compute_loss", lambda *a: torch.tensor(float("inf"), requires_grad=True))
    with pytest.raises(TrainingError, match="non-finite steps in a row"):
        train(config_for(shapes_data, ["max_nonfinite_steps=3"], steps=6), tmp_path / "run", progress=False)


def test_a_preview_step_count_the_sampler_cannot_take_is_refused_before_any_work(tmp_path):
    """It used to stop the run at its first preview (dpm-solver++ repeats a noise level at 1000 steps)."""
    config = config_io.apply_overrides(get_recipe("tiny"), ["previews=true", "sample_steps=1000"])
    with pytest.raises(TrainingError, match="sample_steps=1000: sampler 'dpm-solver\\+\\+' cannot take 1000 steps"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    checks.check_preview_steps(config_io.apply_overrides(config, ["previews=false"]))  # no previews: unused


def test_bad_overrides_are_rejected_before_any_work(tmp_path, capsys):
    assert main(["train", "--recipe", "tiny", "--run-dir", str(tmp_path / "r"), "--set", "optim.lrate=1"]) == 2
    assert "unknown config key 'optim.lrate'; did you mean optim.lr" in capsys.readouterr().err
    assert main(["train", "--recipe", "tiny", "--run-dir", str(tmp_path / "r"), "--set", "steps=many"]) == 2
    assert "steps: 'many' is not a int" in capsys.readouterr().err
    assert main(["train", "--recipe", "tiny", "--run-dir", str(tmp_path / "r"), "--set", "data.caption_dropout=2"]) == 2
    assert "caption_dropout must lie in [0, 1]" in capsys.readouterr().err
    # A schedule no sampler uses: the model would train, then sample wrongly everywhere.
    schedule = ["--set", "diffusion.beta_end=0.012"]
    assert main(["train", "--recipe", "tiny", "--run-dir", str(tmp_path / "r"), *schedule]) == 2
    assert "must stay 1000, 1e-4 and 0.02 (the official linear schedule" in capsys.readouterr().err
    assert main(["train", "--recipe", "nope", "--dry-run"]) == 2
    # a dry run makes the checks a real run makes before its folder (it passed this one, the run did not)
    assert main(["train", "--recipe", "tiny", "--set", "sample_steps=1000", "--dry-run"]) == 2
    assert "sample_steps=1000: sampler 'dpm-solver++' cannot take 1000 steps" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_data_is_checked_against_the_config_before_the_model_is_built(shapes_data, tmp_path, monkeypatch, capsys):
    """A missing data.root, a caption field it lacks or a caption width the model does not take were refused
    after the model was built (13-16 s and 2.8 GB a rank for XL) and passed --dry-run; data prepared at
    another resolution than the model's (a 1024 px recipe on 256 px features) trained without a word."""
    import pixart.train.loop as loop

    def too_late(config):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(loop, "build_model", too_late)
    refusals = [
        ([f"data.root={tmp_path / 'nothing'}"], r"data.root: .*nothing is not a feature dataset \(no dataset.json\)"),
        (["data.caption_probs={'dens': 1.0}"], r"caption fields \['dens'\] are not in .*; fix data.caption_probs"),
        (["model.caption_channels=8"], r"caption features are 384 wide but the model expects 8"),
        # every setting that does not fit, in one refusal: one a run cost a user four --dry-run rounds (review)
        (
            ["model.in_channels=4", "model.caption_channels=8", "model.max_length=2"],
            r"3 latent channels but the model takes 4; set model.in_channels=3; the data's caption features are "
            r"384 wide .*; set model.caption_channels=384; the data's captions are up to \d+ tokens but the model "
            r"takes 2; set model.max_length=\d+ \(all: --set model.in_channels=3 --set model.caption_channels=384 "
            r"--set model.max_length=\d+\)$",
        ),
    ]
    for extra, message in refusals:
        with pytest.raises(TrainingError, match=message):
            train(config_for(shapes_data, extra, steps=1), tmp_path / "run", progress=False)
        args = [
            "train",
            "--recipe",
            "tiny",
            "--dry-run",
            *[f"--set={item}" for item in [*overrides(shapes_data), *extra]],
        ]
        assert main(args) == 2, extra  # the dry run refuses it too
        assert re.search(message, capsys.readouterr().err), extra
    other = tmp_path / "prepared"  # a dataset of pixart prepare's, at 48 px for a model of 32
    shutil.copytree(shapes_data, other)
    info = json.loads((other / "dataset.json").read_text())
    (other / "dataset.json").write_text(json.dumps({**info, "source": "folder:/images", "resolution": 48}))
    args = ["train", "--recipe", "tiny", "--dry-run", *[f"--set={item}" for item in overrides(other)]]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert f"warning: {other} was prepared at 48 px (48 latents a side) but the model's input_size is 32" in said, said
    assert "prepare the data at" not in said  # 32 px is no size `pixart prepare --resolution` takes
    assert main(["train", "--recipe", "stage2-t2i-256", "--dry-run"]) == 0  # a recipe shown without data: said
    said = capsys.readouterr().out
    assert "warning: no data.root: a run needs one" in said
    assert "warning: init_from runs/stage1-class-256 does not exist" in said  # the run failed on it in 4 s
    # with its data given, a missing init_from is refused as the run refuses it, after the config is shown
    missing = [f"--set=init_from={tmp_path / 'stage1'}"]
    assert (
        main(
            ["train", "--recipe", "tiny", "--dry-run", *[f"--set={item}" for item in overrides(shapes_data)], *missing]
        )
        == 2
    )
    out, err = capsys.readouterr()
    assert f"init_from {tmp_path / 'stage1'} does not exist" in err and '"recipe": "tiny"' in out


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_recipe_passes_dry_run(recipe, capsys):
    assert main(["train", "--recipe", recipe, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f'"recipe": "{get_recipe(recipe).recipe}"' in out
    assert "world: 1 process(es)" in out
    # the rate the run trains at, which auto_lr scales from optim.lr by the global batch (it showed optim.lr alone)
    config = get_recipe(recipe)
    batch = config.data.batch_size * config.optim.grad_accum
    scale = math.sqrt(batch / 256) if config.optim.auto_lr else 1.0
    assert f"learning rate {config.optim.lr * scale:.3g}" in out


def test_settings_a_run_never_reads_are_said_before_it_starts(capsys):
    """caption_dropout set on the class stage (expecting label dropout), the flow objective's noise levels
    under iddpm, a DiT's fields in a text-to-image run, PixArt's in a class one: accepted, shown back, and
    then changed nothing."""
    read = ["--set", "data.caption_dropout=0.2", "--set", "diffusion.high_noise_fraction=0.1"]
    unread = ["--set", "data.class_dropout=0.9", "--set", "diffusion.flow_shift=3", "--set", "dit.depth=2"]
    assert main(["train", "--recipe", "tiny", *read, *unread, "--dry-run"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "is not read by this run" in line]
    assert warnings == [
        "[pixart train] warning: --set data.class_dropout is not read by this run: a text-to-image stage drops "
        "captions at data.caption_dropout",
        "[pixart train] warning: --set diffusion.flow_shift is not read by this run: it shapes the flow "
        "objective's noise levels; this run's is iddpm",
        "[pixart train] warning: --set dit.depth is not read by this run: dit.* is the class stage's model",
    ]
    flow = ["--set", "diffusion.objective=flow", "--set", "model.learn_sigma=false", "--set", "diffusion.flow_shift=3"]
    assert main(["train", "--recipe", "tiny", *flow, "--dry-run"]) == 0
    assert "is not read by this run" not in capsys.readouterr().out
    previews = ["--set", "sample_every=1", "--set", "sample_steps=5"]  # read while previews are on
    assert main(["train", "--recipe", "tiny", *previews, "--dry-run"]) == 0
    assert "is not read by this run" not in capsys.readouterr().out
    assert main(["train", "--recipe", "tiny", "--set", "previews=false", *previews, "--dry-run"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "is not read by this run" in line]
    assert warnings == [
        f"[pixart train] warning: --set {key} is not read by this run: previews=false: this run draws no preview grids"
        for key in ("sample_every", "sample_steps")
    ]
    class_stage = ["--set", "data.caption_dropout=0.3", "--set", "model.depth=2", "--set", "model.max_length=77"]
    assert main(["train", "--recipe", "stage1-class-256", *class_stage, "--dry-run"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "is not read by this run" in line]
    assert warnings == [  # model.max_length is read there: the captions of shapes data it may build
        "[pixart train] warning: --set data.caption_dropout is not read by this run: a class stage drops labels at "
        "data.class_dropout",
        "[pixart train] warning: --set model.depth is not read by this run: model.* is the text-to-image stages' "
        "model; a class stage trains dit.*",
    ]


def test_paper_stages_use_official_hyper_parameters():
    """The text-to-image stages PixArt's; stage 1 (the paper's released DiT) DiT's train.py's."""
    dit = get_recipe("stage1-class-256").optim
    assert (dit.lr, dit.auto_lr, dit.weight_decay, dit.eps, dit.warmup_steps) == (1e-4, False, 0.0, 1e-8, 0)
    assert (dit.grad_clip, dit.ema_decay, dit.beta1, dit.beta2) == (math.inf, 0.9999, 0.9, 0.999)
    for name in ("stage2-t2i-256", "stage3-aesthetic-512", "stage3-aesthetic-1024"):
        c = get_recipe(name)
        assert (c.optim.lr, c.optim.weight_decay, c.optim.eps, c.optim.warmup_steps) == (2e-5, 0.03, 1e-10, 1000)
        assert (c.optim.grad_clip, c.optim.ema_decay, c.optim.auto_lr, c.gradient_checkpointing) == (
            0.01,
            0.9999,
            True,
            True,
        )
    assert get_recipe("stage3-aesthetic-1024").init_new_keys == ("csize_embedder.", "ar_embedder.")
    assert get_recipe("stage3-aesthetic-1024").model.micro_conditions


def test_stage1_class_dit_then_stage2_by_reparameterisation(shapes_data, tmp_path):
    from pixart.data.synthetic import NUM_CLASSES

    dit = DiTConfig(
        input_size=32, patch_size=4, in_channels=3, hidden_size=96, depth=2, num_heads=3, num_classes=NUM_CLASSES
    )
    stage1 = dataclasses.replace(config_for(shapes_data, steps=4, every=100), stage="class", dit=dit)
    # a caption field the data lacks (the paper recipes' "dense", say) does not matter to the class stage
    stage1 = dataclasses.replace(stage1, data=dataclasses.replace(stage1.data, caption_probs={"none": 1.0}))
    train(stage1, tmp_path / "stage1", progress=False)
    stage2 = config_for(shapes_data, [f"init_from={tmp_path / 'stage1'}"], steps=2, every=100)
    summary = train(stage2, tmp_path / "stage2", progress=False)
    assert summary["status"] == "finished"
    log = (tmp_path / "stage2" / "config.json").read_text()
    assert "stage1" in log

    # Refused before any data is built: an architecture the weights do not fit, named by the key to set.
    # A head count changes no tensor's shape: it loaded, and the model was not the one trained.
    refusals = [
        (stage2, ["model.num_heads=4"], r"trained with model\.num_heads=3 \(this stage's model has 4\).*set model"),
        (stage2, ["model.patch_size=2"], r"the DiT's .* does not fit this PixArt's .*: its patch_size"),
        (stage2, ["model.adaln=per_block"], r"adaln='per_block': set model\.adaln=single"),
        (stage1, ["dit.num_heads=4"], r"trained with dit\.num_heads=3 \(this stage's model has 4\)"),
    ]
    stage3 = config_for(shapes_data, [f"init_from={tmp_path / 'stage2'}"], steps=2, every=100)
    refusals.append((stage3, ["model.num_heads=4"], r"trained with model\.num_heads=3"))
    for k, (base, extra, message) in enumerate(refusals):
        config = config_io.apply_overrides(base, extra)
        if base is stage1:
            config = dataclasses.replace(config, init_from=str(tmp_path / "stage1" / "final_ema.safetensors"))
        with pytest.raises(WeightsError, match=message):
            train(config, tmp_path / f"refused-{k}", progress=False)
        assert not (tmp_path / f"refused-{k}" / "config.json").exists()  # it was written before the weights loaded


def test_buckets_smaller_than_a_steps_batch_are_said_to_train_never(capsys):
    """A step's batch comes from one bucket across all ranks and partial batches are dropped: a bucket of
    3 samples under batch 2 x 2 ranks never trained, while the start line counted its samples."""
    from pixart.train.checks import warn_of_untrained_buckets

    buckets = ["1.0"] * 12 + ["0.5"] * 3 + ["2.0"] * 1
    warn_of_untrained_buckets(buckets, step_batch=4)
    out = capsys.readouterr().out
    assert "4 of 16 samples are never trained: the bucket(s) 0.5 (3), 2.0 (1) hold fewer than a step's batch (4" in out
    warn_of_untrained_buckets(buckets, step_batch=1)
    assert capsys.readouterr().out == ""


def test_a_warmup_longer_than_the_run_is_said(capsys):
    """The paper's 1000 warm-up steps on a 200-step run: the rate never passes 20% of optim.lr."""
    import dataclasses

    from pixart.train.checks import warn_of_long_warmup
    from pixart.train.config import OptimConfig, TrainConfig

    warn_of_long_warmup(TrainConfig(steps=200, optim=OptimConfig(warmup_steps=1000)))
    out = capsys.readouterr().out
    assert "optim.warmup_steps=1000 is more than the run's 200 steps" in out
    assert "never goes past 20% of optim.lr" in out and "lower optim.warmup_steps (to 20, say)" in out
    for steps in (1000, 5000, 0):  # reached at the last step, passed, or a run that trains nothing
        warn_of_long_warmup(dataclasses.replace(TrainConfig(optim=OptimConfig(warmup_steps=1000)), steps=steps))
        assert capsys.readouterr().out == ""


def test_a_run_folder_whose_ema_is_stale_serves_its_raw_weights(shapes_data, tmp_path, capsys):
    """A short run at the paper's EMA decay 0.9999 ends saying its EMA still holds nearly all the weights it
    started from (use final.safetensors), yet a next stage given its folder started from that EMA without a
    word: from, in effect, where that run began (review). Now from final.safetensors, said in its note; an
    EMA that has moved on (ema_warmup, as the demo trains) is still the one taken."""
    from pixart.train.init import resolve_init_path

    stale = config_for(shapes_data, ["optim.ema_decay=0.9999"], steps=2, every=2)
    train(stale, tmp_path / "stale", progress=False)
    assert resolve_init_path(str(tmp_path / "stale")) == tmp_path / "stale" / FINAL
    warm = config_for(shapes_data, ["optim.ema_decay=0.9999", "optim.ema_warmup=true"], steps=2, every=2)
    train(warm, tmp_path / "warm", progress=False)
    assert resolve_init_path(str(tmp_path / "warm")) == tmp_path / "warm" / FINAL_EMA
    capsys.readouterr()
    train(config_for(shapes_data, [f"init_from={tmp_path / 'stale'}"], steps=1, every=1), tmp_path / "next")
    said = capsys.readouterr().out
    assert f"pixart weights from {tmp_path / 'stale' / FINAL} (its {FINAL_EMA} still holds 100% of the weights" in said
    # a trainer's checkpoint is read as an official .pth is (its raw set), and named as what it is
    step_file = tmp_path / "stale" / "checkpoints" / "step-0000002.pt"
    train(config_for(shapes_data, [f"init_from={step_file}"], steps=1, every=1), tmp_path / "from-step")
    said = capsys.readouterr().out
    assert f"the training checkpoint's weights from {step_file}" in said and "official weights" not in said


def test_init_from_and_the_finish_note_count_the_same_ema_updates(shapes_data, tmp_path, monkeypatch, capsys):
    """A skipped step updates no EMA: the finish note counted steps - skipped, init_from counted steps, so a
    run near the 50% line was told to use final.safetensors while a next stage took its EMA (review).
    Decay 0.9: 6 updates leave 53% of the start, 7 leave 48%."""
    from pixart.train.init import resolve_init_path

    poison_steps(monkeypatch, lambda step: step == 2)
    train(config_for(shapes_data, ["optim.ema_decay=0.9"], steps=7, every=7), tmp_path / "run", progress=False)
    said = capsys.readouterr().out
    assert f"{FINAL_EMA} still holds 53% of the weights this run started from" in said and "over 6 updates" in said
    assert resolve_init_path(str(tmp_path / "run")) == tmp_path / "run" / FINAL  # as the note says


def test_a_run_folder_serves_as_init_from_only_once_it_has_finished(tmp_path):
    """A finished run extended (--steps 4 -> 8) and stopped at step 6 keeps step 4's finals until it ends:
    a next stage given the folder started from those silently."""
    from pixart.train.init import resolve_init_path
    from pixart.weights.formats import FINAL_EMA

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step-0000004.pt").write_bytes(b"")
    (run / FINAL_EMA).write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"steps": 4}))
    assert resolve_init_path(str(run)) == run / FINAL_EMA  # finished
    (run / "config.json").write_text(json.dumps({"steps": 8}))  # extended ...
    (run / "checkpoints" / "step-0000006.pt").write_bytes(b"")  # ... and stopped at step 6
    with pytest.raises(FileNotFoundError, match=r"is a run at step 6 of 8: finish it first"):
        resolve_init_path(str(run))
    stopped = tmp_path / "stopped"  # before its first checkpoint: "neither transformer.safetensors nor diffusers..."
    stopped.mkdir()
    (stopped / "config.json").write_text(config_io.to_json(get_recipe("tiny")))
    with pytest.raises(FileNotFoundError, match=f"is a run folder without {FINAL_EMA}: has it finished"):
        resolve_init_path(str(stopped))
    assert resolve_init_path(str(run / FINAL_EMA)) == run / FINAL_EMA  # named outright, it is the user's call
    (run / FINAL_EMA).unlink()
    (run / "config.json").write_text(json.dumps({"steps": 6}))
    with pytest.raises(FileNotFoundError, match=f"is a run folder without {FINAL_EMA}: has it finished"):
        resolve_init_path(str(run))  # it failed later, after the new run's folder was written
    model = tmp_path / "model"  # a diffusers transformer folder: config.json, no checkpoints
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    assert resolve_init_path(str(model)) == model


def test_a_run_whose_data_changed_in_place_is_not_resumed(tmp_path):
    """A checkpoint's place in the data (epoch, position) indexes the samples it trained on: the same
    data.root rewritten with more samples would resume on others."""
    import shutil

    def shapes(count: int) -> None:
        shutil.rmtree(tmp_path / "data", ignore_errors=True)
        build_shapes_features(
            tmp_path / "data",
            sizes=[(32, 32)],
            count=count,
            seed=0,
            encoder=MiniLMEncoder(max_length=48),
            codec=PixelCodec(),
            progress=False,
        )

    shapes(16)
    train(config_for(tmp_path / "data", steps=2, every=2), tmp_path / "run", progress=False)
    shapes(24)
    with pytest.raises(TrainingError, match="was trained on 16 samples and its data now holds 24: resume it on"):
        train(config_for(tmp_path / "data", steps=4, every=2), tmp_path / "run", progress=False)
    shapes(16)  # the same data again: it resumes
    assert train(config_for(tmp_path / "data", steps=4, every=2), tmp_path / "run", progress=False)["steps"] == 4


def test_a_run_is_resumed_only_by_as_many_processes_as_trained_it(tmp_path):
    """data.batch_size is per rank: another process count changes the global batch, the lr and the data position."""
    run_dir = tmp_path / "run"
    config = get_recipe("tiny")
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text(config_io.to_json(config))
    (run_dir / "checkpoints" / "step-0000010.pt").write_bytes(b"")
    (run_dir / checks.WORLD_FILE).write_text('{"world_size": 2}')
    checks.check_run_config(config, run_dir, world_size=2)  # the same count resumes
    with pytest.raises(TrainingError, match=r"trained by 2 process\(es\), and this is 1: resume it with 2"):
        checks.check_run_config(config, run_dir, world_size=1)


def test_metrics_of_steps_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    """From metrics.jsonl and from TensorBoard; a last row a crash cut off mid-write goes too."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pixart.train.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path, enabled=True)
    for step in range(1, 6):
        writer.write({"step": step, "loss": 1.0 / step})
    writer.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "loss": 0.1')  # killed mid-write
    assert [row["step"] for row in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    writer = MetricsWriter(tmp_path, enabled=True, resumed_at=3)  # the resumed run logs steps 4 and on again
    writer.write({"step": 4, "loss": 0.3})
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4] and rows[-1]["loss"] == 0.3
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("loss")] == [(1, 1.0), (2, 0.5), (3, 0.333), (4, 0.3)]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2: not a JSON row"):  # damage a crash cannot do is not hidden
        read_metrics(tmp_path / "metrics.jsonl")


def test_a_run_that_cannot_start_is_refused_before_it_writes_anything(shapes_data, tmp_path):
    """A run past the steps asked for, an init_from that is not there, caption fields the data lacks."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-0000010.pt").write_bytes(b"")
    with pytest.raises(TrainingError, match="already trained to step 10, past steps=4; give --steps 10 or more"):
        train(config_for(shapes_data, steps=4), run_dir, progress=False)
    with pytest.raises(TrainingError, match="missing.safetensors does not exist: train the previous stage"):
        train(config_for(shapes_data, [f"init_from={tmp_path / 'missing.safetensors'}"]), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(TrainingError, match=r"caption fields \['bogus'\] are not in .*fix data.caption_probs"):
        train(config_for(shapes_data, ["data.caption_probs={'bogus': 1.0}"]), tmp_path / "other", progress=False)
    assert not (tmp_path / "other").exists()  # refused before the folder is made, as the others


def test_damaged_data_is_named_without_advice_about_captions(shapes_data, tmp_path):
    """A shard cut short was "cannot reshape array of size 32 into shape (7,4,4,4); fix data.caption_probs
    or data.root"; a shard deleted from the shapes writer's data was skipped without a word."""
    import shutil

    from pixart.data.shards import DATASET_FILE

    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    assert json.loads((data / DATASET_FILE).read_text())["shards"] == 1  # the shapes writer records its shards
    shard = data / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(TrainingError, match="shard-00000.safetensors is damaged") as refused:
        train(config_for(data, steps=1), tmp_path / "run", progress=False)
    assert "caption_probs" not in str(refused.value)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="prepared in part: 0 of 1 shards are finished"):
        train(config_for(data, steps=1), tmp_path / "run", progress=False)


def test_a_stuck_loader_worker_stops_the_run_with_advice_not_a_hang(shapes_data, tmp_path, monkeypatch):
    """A read that never returns (a hung network file system) hung training for good, and its worker, deaf to
    SIGTERM, outlived the trainer."""
    import multiprocessing

    from pixart.data.dataset import FeatureDataset
    from pixart.train.checkpoint import list_checkpoints

    real = FeatureDataset.__getitems__

    def stuck_in_epoch_1(self, indices):
        if torch.utils.data.get_worker_info() is not None and self.epoch == 1:
            time.sleep(10**6)
        return real(self, indices)

    monkeypatch.setattr(FeatureDataset, "__getitems__", stuck_in_epoch_1)  # the forked worker inherits it
    config = config_for(shapes_data, ["data.num_workers=1", "data.loader_timeout=3"], steps=40, every=4)
    started = time.time()
    with pytest.raises(
        TrainingError, match=r"no batch from the data loader's workers in 3 s .*raise data.loader_timeout"
    ):
        train(config, tmp_path / "run", progress=False)
    assert time.time() - started < 120
    assert not multiprocessing.active_children()  # the stuck worker was killed, not left behind
    assert list_checkpoints(tmp_path / "run")  # the checkpoints before it stand, for the rerun


def test_data_that_cannot_train_the_model_is_refused_before_any_step():
    from pixart.model import TINY, PixArt
    from pixart.train.data import LatentScaling, check_class_labels

    scaling = LatentScaling.from_info({"codec": {"latent_channels": TINY.in_channels}})
    info = {"text_encoder": {"width": TINY.caption_channels, "max_length": TINY.max_length + 8}}
    with pytest.raises(TrainingError, match=f"captions are up to {TINY.max_length + 8} tokens"):
        scaling.check_model(PixArt(TINY), info)
    # the key of the model the stage trains: stage 1's DiT was told to set model.in_channels
    from pixart.model.dit import DiT, DiTConfig

    with pytest.raises(TrainingError, match=f"takes 3; set dit.in_channels={TINY.in_channels}$"):
        scaling.check_model(DiT(DiTConfig(input_size=8, hidden_size=48, depth=1, num_heads=3, in_channels=3)), {})
    with pytest.raises(TrainingError, match=f"set model.in_channels={TINY.in_channels}$"):
        scaling.check_model(PixArt(dataclasses.replace(TINY, in_channels=3)), {})
    check_class_labels([0, 3, 9], num_classes=10)
    with pytest.raises(TrainingError, match=r"stage 'class' needs a class label in \[0, 10\).*2 of 4"):
        check_class_labels([0, -1, 3, 10], num_classes=10)


def test_mfu_peak_of_an_h100_pcie_is_not_the_sxm_one(monkeypatch):
    from pixart.train.metrics import peak_flops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert peak_flops(torch.device("cuda")) == 756e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak_flops(torch.device("cuda")) == 989.4e12
    for name in ("NVIDIA H100 NVL", "NVIDIA H200 NVL"):  # they matched "H100" and "H200": MFU 16% low
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert peak_flops(torch.device("cuda")) == 835e12


@pytest.mark.parametrize(
    ("tokens", "caption", "gflop"),
    [(256, 120, 298), (1024, 120, 1236), (4096, 120, 6510), (256, 300, 333), (1024, 300, 1289), (4096, 300, 6634)],
)
def test_forward_flops_of_xl2_are_performance_mds_table(tokens, caption, gflop):
    """performance.md section 4.2's F_fwd of PixArt-XL/2 (computed there, rounded to a GFLOP; the small terms
    both leave out, embeddings and the final layer, are under 0.02%): every MFU figure rests on it."""
    from pixart.train.metrics import forward_flops

    assert forward_flops(1152, 28, tokens, caption, 4096) / 1e9 == pytest.approx(gflop, rel=2e-4, abs=0.5)


@pytest.mark.parametrize("mlp_ratio", [4.0, 2.0])
def test_forward_flops_are_what_torch_counts_in_a_block_and_the_caption_projection(mlp_ratio):
    """An independent count (torch's FlopCounterMode over the products and attention one block and the caption
    projection run) against the formula; the MLP's width followed hidden x 4 whatever mlp_ratio said."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from pixart.model import PixArt, PixArtConfig
    from pixart.model.layers import mlp_width
    from pixart.train.metrics import forward_flops

    config = PixArtConfig(
        input_size=8, hidden_size=64, depth=1, num_heads=2, caption_channels=32, max_length=12, mlp_ratio=mlp_ratio
    )
    model = PixArt(config)
    n, m, d = 16, 12, 64
    x, y, c = torch.randn(1, n, d), torch.randn(1, m, config.caption_channels), torch.randn(1, 6 * d)
    # the math backend: its products are counted (the CPU flash kernel's are not, in torch 2.13)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        projected = model.y_embedder(y)
        model.blocks[0](x, projected, None, c)
    width = mlp_width(d, mlp_ratio)
    assert counter.get_total_flops() == forward_flops(d, 1, n, m, config.caption_channels, width)
    if mlp_ratio != 4.0:  # the old formula's count, hidden x 4, is wrong here
        assert counter.get_total_flops() != forward_flops(d, 1, n, m, config.caption_channels)


def test_the_trainers_mfu_counts_flops_as_the_benchmarks_do():
    """performance.md's basis, the model's 120 caption tokens: the trainer counted the batch's mean valid
    tokens, so its MFU and bench_gpu's differed for the same speed."""
    from pixart.model import PixArt, PixArtConfig
    from pixart.train.metrics import forward_flops
    from pixart.train.step import mfu

    config = PixArtConfig(input_size=8, hidden_size=64, depth=2, num_heads=2, caption_channels=32, max_length=12)
    mask = torch.zeros(4, 12, dtype=torch.long)
    mask[:, :3] = 1  # 3 valid tokens of 12
    batch = {"mean": torch.zeros(4, 4, 8, 8), "mask": mask}
    expected = 3 * forward_flops(64, 2, 16, 12, 32) * 10.0 / 1e12
    assert mfu(PixArt(config), batch, samples_per_s_per_device=10.0, peak=1e12) == pytest.approx(expected)
    narrow = dataclasses.replace(config, mlp_ratio=2.0)  # its MLP's width, not hidden x 4
    expected = 3 * forward_flops(64, 2, 16, 12, 32, mlp_hidden=128) * 10.0 / 1e12
    assert mfu(PixArt(narrow), batch, samples_per_s_per_device=10.0, peak=1e12) == pytest.approx(expected)


def test_a_run_refused_before_it_starts_leaves_no_empty_run_folder(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "first"
    sets = ["--set", f"data.root={tmp_path / 'missing'}", "--set", "data.synthetic=''"]
    assert main(["train", "--recipe", "tiny", "--no-progress", "--run-dir", str(run_dir), *sets]) == 2
    assert "is not a feature dataset" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nor the parent it made


def test_a_given_data_root_wins_over_the_recipes_synthetic_data(shapes_data, tmp_path):
    """`--recipe tiny --set data.root=DIR` trains on DIR; it used to build the tiny recipe's shapes data instead."""
    from pixart.train.data import prepare_data
    from pixart.train.distributed import World

    config = config_io.apply_overrides(get_recipe("tiny"), [f"data.root={shapes_data}"])
    assert config.data.synthetic == "shapes"
    assert prepare_data(config, tmp_path / "run", World(), progress=False) == shapes_data
    assert not (tmp_path / "run" / "data").exists()


def test_synthetic_data_of_an_attempt_with_other_settings_is_rebuilt(tmp_path):
    """A run that died before its first checkpoint may be rerun with other data settings: its old data/ is
    not reused (it used to be, silently); data of the same settings is."""
    from pixart.data.shards import read_dataset_info
    from pixart.train.data import build_shapes_for

    folder = tmp_path / "run" / "data"
    first = config_io.apply_overrides(get_recipe("tiny"), ["data.synthetic_count=4", "data.batch_size=4"])
    assert build_shapes_for(first, folder, progress=False)["samples"] == 4
    assert build_shapes_for(first, folder, progress=False) == {}  # complete and the same: reused
    config = first
    for change in "data.synthetic_count=6", "data.synthetic_seed=3":  # each rebuilds
        config = config_io.apply_overrides(config, [change])
        assert build_shapes_for(config, folder, progress=False)["samples"] == 6
        assert read_dataset_info(folder)["source"].endswith(f"seed {config.data.synthetic_seed}, 6 images per size")
    taller = config_io.apply_overrides(first, ['data.synthetic_sizes=["32x32","40x24"]'])
    buckets = build_shapes_for(taller, folder, progress=False)["buckets"]
    assert sorted(buckets.values()) == [[32, 32], [40, 24]]


def test_synthetic_data_never_replaces_a_dataset_training_did_not_build(shapes_data, tmp_path):
    """`pixart prepare --out RUN/data`, then training with the recipe's synthetic data and no data.root:
    RUN/data, not matching the shapes settings, was deleted with everything in it."""
    import shutil

    from pixart.data.shards import read_dataset_info, write_dataset_info
    from pixart.train.data import build_shapes_for

    run_dir = tmp_path / "run"
    shutil.copytree(shapes_data, run_dir / "data")
    write_dataset_info(run_dir / "data", {**read_dataset_info(run_dir / "data"), "source": "images in /photos"})
    (run_dir / "data" / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match=r"holds a dataset that training did not build .* data.root="):
        train(config_io.apply_overrides(get_recipe("tiny"), ["steps=1"]), run_dir, progress=False)
    with pytest.raises(FileExistsError, match="holds a dataset that training did not build"):
        build_shapes_for(get_recipe("tiny"), run_dir / "data", progress=False)  # its own guard, for any caller
    assert (run_dir / "data" / "notes.txt").read_text() == "mine" and not (run_dir / "config.json").exists()


def test_logged_lr_is_the_steps_own_and_a_window_of_skipped_steps_logs_null(shapes_data, tmp_path, monkeypatch):
    """Warmup over 4 steps: step 2 trains at half the lr, step 4 at all of it; steps 5 and 6 are all skipped."""
    poison_steps(monkeypatch, lambda s: s >= 4)  # steps count from 0: the 5th and 6th
    config = config_for(shapes_data, ["optim.warmup_steps=4"], steps=6, every=100)
    train(config, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4, 6]
    assert rows[0]["lr"] == pytest.approx(rows[1]["lr"] / 2)  # the lr step 2 used, not the one after it
    assert rows[2]["loss"] is None and rows[2]["skipped_steps"] == 2  # no step to average: not 0.0 (NaN as null)


def test_one_loader_serves_every_epoch_and_workers_train_as_the_main_process(shapes_data, tmp_path, monkeypatch):
    """Loader workers start once a run, not once an epoch (each start stalled the epoch's first step), and
    reading in them gives the batches, caption draws included, that reading in the training process does."""
    from pixart.data.dataset import FeatureDataset
    from pixart.data.sampler import BucketBatchSampler

    per_epoch = len(BucketBatchSampler(FeatureDataset(shapes_data).buckets, 16))
    assert 3 * per_epoch <= 12  # the runs below cross at least two epoch boundaries
    made = []

    class CountingLoader(loop.DataLoader):
        def __init__(self, *args, **kwargs):
            made.append(kwargs["num_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(loop, "DataLoader", CountingLoader)
    for workers in (0, 2):
        train(
            config_for(shapes_data, [f"data.num_workers={workers}", "data.batch_size=16"], every=100),
            tmp_path / f"w{workers}",
            progress=False,
        )
    assert made == [0, 2]
    assert_bitwise_equal(weights(tmp_path / "w0"), weights(tmp_path / "w2"))


def test_fsdp_bf16_runs_the_model_one_process_autocasts(tmp_path):
    """FSDP2's bf16 policy used to cast every block's input (the residual stream) and the root's timesteps
    to bf16; one process keeps both in fp32. Now a sharded PixArt's or DiT's output equals one process's
    exactly (for weights that bf16 holds exactly; else FSDP also rounds the adaLN tables and embeddings)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    worker = Path(__file__).with_name("fsdp_autocast_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(worker.parent)}
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(worker), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for rank in (0, 1) for line in text_lines(tmp_path / f"rank-{rank}.jsonl")]
    assert sorted((row["kind"], row["rank"]) for row in rows) == [
        ("dit", 0),
        ("dit", 1),
        ("pixart-ms", 0),
        ("pixart-ms", 1),
    ]
    for row in rows:
        assert row["one"] == row["fsdp"] == "torch.float32", row
        assert row["difference"] == 0.0, row
    for rank in (0, 1):  # gloo's threads (gloo_tcp_loop, pt_gloo_runloop) end before the interpreter does
        threads = json.loads((tmp_path / f"threads-rank-{rank}.json").read_text())
        assert not [name for name in threads if "gloo" in name], (rank, threads)


def test_a_device_index_is_trained_on_in_one_process_and_refused_under_torchrun(monkeypatch):
    """--device cuda:1 in one process trains on cuda:1 (it ran on cuda:0, LOCAL_RANK's default); under
    torchrun each process takes cuda:LOCAL_RANK, so an index is refused before any group starts."""
    from pixart.train import distributed

    chosen = []
    monkeypatch.setattr(distributed.torch.cuda, "set_device", chosen.append)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_distributed("cuda:1").device == torch.device("cuda", 1)
    assert distributed.init_distributed("cuda").device == torch.device("cuda", 0)
    assert chosen == [1, 0]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="device cuda:1 under torchrun: .*pass cuda, and choose the GPUs with"):
        distributed.init_distributed("cuda:1")
    assert chosen == [1, 0] and not torch.distributed.is_initialized()


def test_a_patch_size_that_does_not_divide_a_bucket_is_refused_before_the_first_step(shapes_data, tmp_path):
    """The data's 24x32 bucket does not divide into 16x16 patches (32x32 does): refused at the start,
    naming the bucket, where it failed in the patch embedding at the first batch from that bucket."""
    config = config_for(shapes_data, ["model.patch_size=8"], steps=2)
    train(config, tmp_path / "fits", progress=False)  # 8 divides both grids
    config = config_for(shapes_data, ["model.patch_size=16"], steps=2)
    with pytest.raises(TrainingError, match=r"buckets 0.75 \(24x32 latents\) do not divide into 16x16 patches"):
        train(config, tmp_path / "odd", progress=False)
    assert not (tmp_path / "odd" / "checkpoints").exists()

    # a bucket with less than a global batch is never read (the sampler drops partial batches): not checked
    from pixart.data.dataset import FeatureDataset
    from pixart.train.data import LatentScaling

    info = FeatureDataset(shapes_data).info
    model = build_model(config)
    buckets = ["1.0"] * 64 + ["0.75"]
    LatentScaling.from_info(info).check_model(model, info, buckets, min_samples=8)
    with pytest.raises(TrainingError, match=r"0.75 \(24x32 latents\)"):
        LatentScaling.from_info(info).check_model(model, info, buckets, min_samples=1)


def test_a_stop_during_the_last_checkpoint_lets_it_finish(shapes_data, tmp_path, monkeypatch):
    """Ctrl+C (or SIGTERM) while a finished run writes its last checkpoint is taken as a stop request,
    like one during any other checkpoint: the save completes and the run finishes."""
    config = config_for(shapes_data, steps=4, every=2)
    real_save = loop.ckpt.save_checkpoint

    def save_with_a_stop_at_the_end(run_dir, at_step, *args, **kwargs):
        if at_step == config.steps:
            signal.raise_signal(signal.SIGINT)  # without a handler: KeyboardInterrupt out of train
        return real_save(run_dir, at_step, *args, **kwargs)

    monkeypatch.setattr(loop.ckpt, "save_checkpoint", save_with_a_stop_at_the_end)
    try:
        summary = train(config, tmp_path / "run", progress=False)
    except KeyboardInterrupt:  # caught here: out of the test it would end the whole pytest session
        pytest.fail("the stop interrupted the last checkpoint")
    assert summary["status"] == "finished"
    assert (tmp_path / "run" / "checkpoints" / "step-0000004.pt").is_file()
    assert (tmp_path / "run" / FINAL).is_file()


def test_a_finished_run_folder_generates_with_the_models_its_data_was_prepared_with(shapes_data, tmp_path, capsys):
    """`pixart train` leaves no model folder: a run was given to generate as its weights plus --vae and
    --text-encoder, which its data's dataset.json already names."""
    from pixart.generate import TextToImage
    from pixart.generation_settings import Settings
    from pixart.modelfolder import folder_kind

    config = config_for(shapes_data, steps=2, every=2)
    train(config, tmp_path / "run", progress=False)
    assert folder_kind(tmp_path / "run") == "run"
    pipe = TextToImage.from_path(tmp_path / "run")
    info = json.loads((shapes_data / "dataset.json").read_text())
    assert (pipe.spec.codec, pipe.spec.text_encoder) == (info["codec"]["kind"], info["text_encoder"]["kind"])
    assert pipe.spec.buckets == info["buckets"] and pipe.spec.objective == config.diffusion.objective
    from pixart.data.synthetic import WORLD_VERSION

    assert pipe.spec.extra == {"world": WORLD_VERSION}  # eval's shapes suite knows it for one of its world
    image = pipe.generate(["a red circle"], Settings(steps=2), seed=0, progress=False)[0].image
    assert list(image.size)[::-1] in info["buckets"].values()
    # pixart info describes the folder generate takes: it was refused ("give its weights"), and its weights
    # file alone could not say how the run generates
    capsys.readouterr()
    assert main(["info", str(tmp_path / "run"), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    # the weights generate samples: 2 steps at tiny's decay 0.9 leave 81% of the start in the EMA, so its final.
    assert described["path"] == str(tmp_path / "run" / FINAL) and described["format"] == "pixart"
    assert described["generation"]["folder"] == "a training run"
    assert described["generation"]["codec"] == info["codec"]["kind"]
    from tiny_models import tiny_vae

    from pixart.encoders.text import minilm_folder
    from pixart.generation_settings import GenerationError

    tiny_vae().save_pretrained(tmp_path / "vae")  # 4-channel latents; the run trained on 3-channel pixels
    with pytest.raises(FileNotFoundError, match="was trained on pixels, with no codec: it takes no --vae"):
        TextToImage.from_path(tmp_path / "run", vae=tmp_path / "vae")  # it was ignored, yet recorded
    replaced = TextToImage.from_path(tmp_path / "run", text_encoder=minilm_folder())  # a folder, not the kinds
    assert replaced.spec.buckets == info["buckets"] and replaced.spec.codec == "pixels"
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    (tmp_path / "run" / "config.json").write_text(json.dumps({**saved, "steps": 4}))  # extended, then stopped
    (tmp_path / "run" / "checkpoints" / "step-0000003.pt").touch()
    with pytest.raises(FileNotFoundError, match="was extended to 4 steps and has reached 3 .training now, or stopped"):
        TextToImage.from_path(tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "step-0000003.pt").unlink()
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)
    config_file = moved / "config.json"
    config_file.write_text(config_file.read_text().replace(str(shapes_data), str(tmp_path / "gone")))
    data_file = moved / "data.json"  # where the run recorded its data, gone too
    data_file.write_text(data_file.read_text().replace(str(shapes_data), str(tmp_path / "gone")))
    with pytest.raises(FileNotFoundError, match="pass --vae DIR and --text-encoder DIR"):
        TextToImage.from_path(moved)
    # its data gone, both folders name the kinds: an SD VAE's 4-channel latents do not fit this pixel model
    with pytest.raises(GenerationError, match="makes 4-channel latents and the model takes 3"):
        TextToImage.from_path(moved, vae=tmp_path / "vae", text_encoder=minilm_folder())
    for final in moved.glob("final*.safetensors"):  # a run that has not finished yet: said as such
        final.unlink()
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "steps": 4}))
    with pytest.raises(FileNotFoundError, match="is a training run that has not finished .checkpoint at step 2 of 4"):
        TextToImage.from_path(moved)


def test_a_run_on_a_relative_data_root_generates_from_another_folder(shapes_data, tmp_path, monkeypatch):
    """--set data.root=feats is relative to where training ran: `generate --model ../runs/x` from elsewhere was
    refused ("its data (feats) is not there ... run from where it was trained", review). The run records its
    data's absolute path, where its codec and text encoder are read from then."""
    from pixart.modelfolder import read_spec

    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "feats").symlink_to(shapes_data, target_is_directory=True)
    monkeypatch.chdir(tmp_path / "project")
    train(config_for(Path("feats"), steps=1, every=1), Path("runs/x"), progress=False)
    assert json.loads(Path("runs/x/config.json").read_text())["data"]["root"] == "feats"  # as given
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    spec = read_spec(Path("../project/runs/x"))[0]
    assert (spec.codec, spec.text_encoder) == ("pixels", "minilm")
    assert spec.buckets == json.loads((shapes_data / "dataset.json").read_text())["buckets"]


def test_a_short_run_says_when_its_ema_still_holds_mostly_its_start(shapes_data, tmp_path, capsys):
    """With the paper's EMA decay (0.9999) a short run's final_ema barely depends on what it learned (a user
    saw the same image for every prompt); the end of the run says so, and what to use instead."""
    from pixart.train.step import ema_start_share

    paper = ["optim.ema_decay=0.9999"]
    train(config_for(shapes_data, paper, steps=4, every=4), tmp_path / "paper", progress=False)
    assert "final_ema.safetensors still holds 100% of the weights this run started from" in capsys.readouterr().out
    warm = config_for(shapes_data, [*paper, "optim.ema_warmup=true"], steps=4, every=4)
    train(warm, tmp_path / "warm", progress=False)
    assert "still holds" not in capsys.readouterr().out
    assert ema_start_share(warm.optim, 4) == pytest.approx(1 / 10 * 2 / 11 * 3 / 12 * 4 / 13)  # by hand
    assert ema_start_share(config_for(shapes_data, paper).optim, 3) == pytest.approx(0.9999**3)


def test_a_runs_final_weights_and_checkpoints_generate_as_the_run_and_a_stale_ema_is_passed_over(
    shapes_data, tmp_path, capsys
):
    """A run's final.safetensors was refused ("pass --model RUN"), and RUN sampled final_ema even where that
    still held the untrained start, which the run's own finish note told to pass over: no way led to the
    weights it learned (review). Now any weights file of a run samples with the run's codec and text encoder,
    and the run folder takes final.safetensors where the EMA is stale, saying so, as init_from does."""
    from pixart.generate import TextToImage
    from pixart.modelfolder import read_spec

    def loaded(pipe) -> dict[str, torch.Tensor]:
        return {k: v for k, v in pipe.transformer.state_dict().items() if k != "pos_embed"}

    def stored(path: Path) -> dict[str, torch.Tensor]:
        return {k: v for k, v in load_file(path).items() if k != "pos_embed"}

    paper = tmp_path / "paper"  # 0.9999 over 3 steps: the EMA is 99.97% the start
    train(config_for(shapes_data, ["optim.ema_decay=0.9999"], steps=3, every=1), paper, progress=False)
    capsys.readouterr()
    pipe = TextToImage.from_path(paper)
    said = capsys.readouterr().err
    assert f"{paper / FINAL_EMA} still holds 100% of the weights the run started from" in said
    assert f"its {FINAL} is sampled instead" in said
    assert_bitwise_equal(loaded(pipe), stored(paper / FINAL))
    assert not torch.equal(
        stored(paper / FINAL)["final_layer.linear.weight"], stored(paper / FINAL_EMA)["final_layer.linear.weight"]
    )
    for weights in (paper / FINAL_EMA, paper / FINAL, paper / "checkpoints" / "step-0000002.pt"):
        spec, transformer_path, *_ = read_spec(weights)
        assert (spec.codec, spec.text_encoder, transformer_path) == ("pixels", "minilm", weights)
    assert_bitwise_equal(loaded(TextToImage.from_path(paper / FINAL_EMA)), stored(paper / FINAL_EMA))
    assert "still holds" not in capsys.readouterr().err  # named itself: taken as asked

    fresh = tmp_path / "fresh"  # decay 0.1: the EMA is the weights learned, and stays the run's default
    train(config_for(shapes_data, ["optim.ema_decay=0.1"], steps=3, every=1), fresh, progress=False)
    capsys.readouterr()
    assert_bitwise_equal(loaded(TextToImage.from_path(fresh)), stored(fresh / FINAL_EMA))
    assert "still holds" not in capsys.readouterr().err
    assert main(["info", str(fresh / FINAL), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["generation"]["folder"] == "weights of a training run"
    assert described["generation"]["codec"] == "pixels"


def test_the_summary_of_a_run_that_trained_no_step_is_strict_json(shapes_data, tmp_path, capsys):
    """--steps 0 printed "final_loss": NaN, which strict JSON readers (jq, JavaScript) refuse."""

    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    sets = [a for item in overrides(shapes_data, steps=0) for a in ("--set", item)]
    assert main(["train", "--recipe", "tiny", "--run-dir", str(tmp_path / "r"), "--no-progress", *sets]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1], parse_constant=no_constants)
    assert summary["status"] == "finished" and summary["steps"] == 0 and summary["final_loss"] is None


def test_train_from_python_checks_its_device_and_trains_from_another_thread(shapes_data, tmp_path):
    """From Python (review): device="gpu" or "mps" trained on the CPU without a word, a torch.device was
    "'torch.device' object has no attribute 'startswith'", "cuda" without CUDA failed inside torch; and a
    run started from a thread (a notebook's background job) was "signal only works in main thread"."""
    import threading

    config = config_for(shapes_data, steps=2)
    refused = [("gpu", "device 'gpu' is not a device"), ("mps", "device 'mps': pixart runs on cpu or cuda")]
    if not torch.cuda.is_available():
        refused.append(("cuda", "device cuda: this machine's torch sees no CUDA device; use cpu"))
    for device, said in refused:
        with pytest.raises(TrainingError, match=re.escape(said)):
            train(config, tmp_path / "refused", device=device, progress=False)
    assert not (tmp_path / "refused").exists()
    summaries: list[dict] = []
    handler = signal.getsignal(signal.SIGINT)  # Python's own, or SIG_IGN in a job a shell put in the background
    worker = threading.Thread(
        target=lambda: summaries.append(train(config, tmp_path / "run", device=torch.device("cpu"), progress=False))
    )
    worker.start()
    worker.join(timeout=300)
    assert [summary["status"] for summary in summaries] == ["finished"]
    assert signal.getsignal(signal.SIGINT) == handler  # the main thread's left as it was

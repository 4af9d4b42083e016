"""Training checkpoints: written atomically, the last N kept, everything needed to resume exactly.

Single process and DDP: rank 0 writes `checkpoints/step-0000123.pt` through a temporary file and a
rename. FSDP: every rank writes its shards with torch.distributed.checkpoint into
`step-0000123.dcp.tmp/`, renamed to `step-0000123.dcp/` once all ranks are done. A checkpoint that
is not renamed into place does not exist, so a crash mid-write loses nothing but that checkpoint; the
next save deletes what it left. Files reach the disk before older checkpoints are pruned (atomic_write
syncs them), and a pruned folder leaves the checkpoint names before it is deleted.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import torch

from pixart.files import atomic_write, fsync_path, no_space_left, out_of_space, remove_leftovers
from pixart.train.distributed import World, barrier

NAME = re.compile(r"^step-(\d{7,})\.(pt|dcp)$")  # zero-padded to 7 digits, more from step 10,000,000
# Entries of the training state added after the first checkpoints were written: older ones lack them, and a
# resume takes their defaults (the loop reads them with .get).
OPTIONAL = frozenset(
    {
        "skipped_steps",
        "nonfinite_in_a_row",
        "log_window",
        "train_seconds",
        "optimizer_started",
        "world_size",
        "data_samples",
    }
)


def _under(stored: str, key: str) -> bool:
    """Whether DCP's flattened name `stored` belongs to the top-level entry `key`."""
    return stored == key or stored.startswith(f"{key}.")


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, state: dict, world: World, *, sharded: bool, keep: int) -> Path:
    """`state` holds model, ema, optimizer, scheduler, step, sampler, config...; returns the final path."""
    folder = checkpoint_dir(run_dir)
    if world.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(run_dir)
    barrier(world)
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        final = folder / f"step-{step:07d}.dcp"
        tmp = folder / f"step-{step:07d}.dcp.tmp"
        try:
            dcp.save(state, checkpoint_id=str(tmp))
        except (Exception, CheckpointException) as error:
            # DCP gathers each rank's own error (torch.save's RuntimeError on a full disk) under its own type
            failures = [failure[0] for failure in getattr(error, "failures", {}).values()]
            full = any(out_of_space(cause, folder) for cause in [error, *failures])
            if full:  # its gigabytes now, not at the next run's cleanup: the disk is needed (every rank, its own view)
                shutil.rmtree(tmp, ignore_errors=True)
                raise no_space_left(final) from error
            raise  # the partial folder goes at the next save or run
        barrier(world)
        if world.is_main:
            atomic_write(tmp / "extra.pt", lambda path: torch.save({"rng": rng_state()}, path))  # dcp syncs its own
            doomed = _set_aside(final) if final.exists() else None  # the trainer saves a step once
            os.replace(tmp, final)
            fsync_path(folder)  # the new name reaches the disk before older checkpoints are pruned
            if doomed is not None:  # a complete copy goes only once it is replaced
                shutil.rmtree(doomed)
    else:
        final = folder / f"step-{step:07d}.pt"
        if world.is_main:
            atomic_write(final, lambda tmp: torch.save({**state, "rng": rng_state()}, tmp))
    barrier(world)
    if world.is_main:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            _delete(old)
    barrier(world)
    return final


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Delete what a run killed while saving or pruning left (gigabytes, for a model's optimizer state):
    called by the checkpoints' one writer, the main rank, at each save and when a run (re)opens."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return
    remove_leftovers(folder, "step-*.pt", holding_lock=True)  # the run folder's lock: no other writer runs
    for partial in [*folder.glob("step-*.dcp.tmp"), *folder.glob(".step-*.dcp.deleted")]:
        shutil.rmtree(partial)


def _delete(checkpoint: Path) -> None:
    """Remove a checkpoint. A sharded one is a folder: it is renamed out of the checkpoint names first, so
    a kill halfway through deleting it never leaves a half-deleted folder that still counts as one."""
    if checkpoint.is_dir():
        shutil.rmtree(_set_aside(checkpoint))
    else:  # a file goes in one step
        checkpoint.unlink()


def _set_aside(folder: Path) -> Path:
    """Rename a sharded checkpoint out of the checkpoint names (the next save deletes what a kill leaves)."""
    doomed = folder.with_name(f".{folder.name}.deleted")
    os.replace(folder, doomed)
    return doomed


def load_checkpoint(path: Path, template: dict | None = None) -> dict:
    """Read a checkpoint. Sharded ones are loaded in place into `template` (the live state dicts)."""
    if path.suffix == ".dcp":
        from pixart.weights.dcp_reading import load_into, read_metadata

        if template is None:
            raise ValueError(f"{path} is sharded: it loads into the live state dicts, so pass them as template")
        stored = read_metadata(path).state_dict_metadata
        # DCP refuses a template key the checkpoint lacks: those added since (OPTIONAL) keep their defaults
        template = {k: v for k, v in template.items() if k not in OPTIONAL or any(_under(s, k) for s in stored)}
        load_into(template, path)
        extra = torch.load(path / "extra.pt", weights_only=True)
        return {**template, **extra}
    return torch.load(path, map_location="cpu", weights_only=True)

"""Our trainer's sharded checkpoints (parallel=fsdp: a torch.distributed.checkpoint folder, step-N.dcp),
read whole in one process, without the process group or the model that wrote them."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from pixart.weights.errors import WeightsError

SHARDED_METADATA = ".metadata"  # what torch.distributed.checkpoint writes first in a checkpoint folder


def is_sharded_checkpoint(path: Path) -> bool:
    """A torch.distributed.checkpoint folder: what `pixart train` writes under parallel=fsdp (step-N.dcp):
    its metadata, in a folder named so or beside at least one shard (a stray .metadata file in another folder
    does not make it one; a step-N.dcp that lost its shards is one, reported as such)."""
    if not (path.is_dir() and (path / SHARDED_METADATA).is_file()):
        return False
    return path.suffix == ".dcp" or any(path.glob("*.distcp"))


def _entry_paths(path: Path) -> list[tuple[str, ...]]:
    """Each stored value's path of names (("model", "blocks.0.attn.qkv.weight"), ("step",)...), from the
    checkpoint's metadata alone."""
    from pixart.weights.dcp_reading import read_metadata

    try:
        metadata = read_metadata(path)
    except Exception as error:  # noqa: BLE001 - cut short, or naming what no checkpoint holds
        raise unreadable(path, error) from None
    return [tuple((metadata.planner_data or {}).get(flat, (flat,))) for flat in metadata.state_dict_metadata]


def sharded_model_keys(path: Path) -> list[str]:
    """The state-dict keys of the model a sharded checkpoint holds, without reading any tensor."""
    return [where[1] for where in _entry_paths(path) if where[0] == "model" and len(where) == 2]


def unreadable(path: Path, error: BaseException) -> WeightsError:
    """The one-line error of a sharded checkpoint that cannot be read: the (first rank's) cause, first line."""
    cause = failure_cause(error)
    first = str(cause).splitlines()[0] if str(cause) else ""
    return WeightsError(f"cannot read {path} as a sharded checkpoint: {type(cause).__name__}: {first}")


def failure_cause(error: BaseException) -> BaseException:
    """The error itself, or the first rank's within DCP's CheckpointException (a BaseException, which wraps
    each rank's error)."""
    failures = getattr(error, "failures", None)
    return next(iter(failures.values()))[0] if isinstance(failures, dict) and failures else error


def read_sharded(path: Path, skip: tuple[str, ...] = ("optimizer",)) -> dict[str, Any]:
    """The entries of a torch.distributed.checkpoint folder but `skip`'s (the optimizer state, twice the
    model), gathered whole in this one process: a template of empty tensors and placeholders, nested as the
    checkpoint's own record says (planner_data: each flat key's path), is filled in place by dcp.load."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from pixart.weights.dcp_reading import load_into, read_metadata

    try:
        metadata = read_metadata(path)
        template: dict[str, Any] = {}
        for flat, entry in metadata.state_dict_metadata.items():
            where = (metadata.planner_data or {}).get(flat, (flat,))
            if where[0] in skip:
                continue
            if isinstance(entry, TensorStorageMetadata):
                value: object = torch.empty(entry.size, dtype=entry.properties.dtype)
            else:
                value = None  # bytes (a number, a string, the config's fields): replaced by what was saved
            parent = template
            for name in where[:-1]:
                parent = parent.setdefault(name, {})
            parent[where[-1]] = value
        # no_dist: this process alone reads it all, also under torchrun (init_from on every rank), where a
        # collective load would have the ranks plan and read together
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            load_into(template, path, no_dist=True)
    except (Exception, CheckpointException) as error:  # noqa: BLE001 - a shard missing or cut short
        raise unreadable(path, error) from None
    return template

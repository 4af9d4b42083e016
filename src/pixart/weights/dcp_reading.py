"""Reading a torch.distributed.checkpoint folder (our trainer's step-N.dcp) without running code from it.

DCP itself unpickles the folder's `.metadata` with plain pickle.load and each entry that is not a tensor
(a number, the config) with torch.load(weights_only=False): a folder from elsewhere, or any folder that
happens to hold a `.metadata` file, could run whatever it contains. Here the metadata may name only DCP's
own records (and the torch types they hold), and every entry goes through torch's tensor-only loader.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import torch.distributed.checkpoint.metadata as dcp_metadata
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from pixart.weights.sharded import SHARDED_METADATA

# Besides DCP's metadata records: what those records hold (a shard's location, a tensor's size, dtype,
# layout) and nothing that can do more than build a value.
_ALLOWED = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),  # a shard's file, offset and length
    ("torch.serialization", "_get_layout"),  # a layout's name to torch.strided...: a table lookup
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


def allowed_in_metadata(module: str, name: str) -> bool:
    """Whether a checkpoint's metadata may name this global: a class of DCP's metadata module, a torch
    dtype, or one of _ALLOWED."""
    if module == dcp_metadata.__name__:
        found = getattr(dcp_metadata, name, None)
        return isinstance(found, type) and found.__module__ == module  # its own classes, not its imports
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return True
    return (module, name) in _ALLOWED


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if not allowed_in_metadata(module, name):
            raise pickle.UnpicklingError(
                f"its metadata names {module}.{name}, which no checkpoint's record holds (refused: unpickling it "
                "could run code)"
            )
        return super().find_class(module, name)


class TensorOnlyReader(dcp.FileSystemReader):
    """FileSystemReader whose metadata is unpickled through the allow-list above."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        with open(Path(self.path) / SHARDED_METADATA, "rb") as file:
            metadata = _MetadataUnpickler(file).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"{SHARDED_METADATA} holds a {type(metadata).__name__}, not DCP's Metadata")
        storage = getattr(metadata, "storage_meta", None) or StorageMeta()  # older checkpoints had none
        storage.load_id = self.load_id  # as FileSystemReader does
        metadata.storage_meta = storage
        return metadata


class TensorOnlyPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner whose non-tensor entries are read by torch's tensor-only loader first."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            checked = torch.load(value, weights_only=True)  # containers, numbers, strings, tensors; never code
        except pickle.UnpicklingError:  # torch's text advises weights_only=False, which would run the code
            entry = read_item.dest_index.fqn
            raise pickle.UnpicklingError(
                f"its entry {entry!r} holds Python objects besides tensors, which pixart never unpickles "
                "(they could run code)"
            ) from None
        again = io.BytesIO()
        torch.save(checked, again)  # DefaultLoadPlanner places the value where it belongs; it reads it itself
        again.seek(0)
        super().load_bytes(read_item, again)


def read_metadata(path: Path) -> Metadata:
    """A checkpoint folder's metadata (its entries, their sizes and dtypes), through the allow-list."""
    return TensorOnlyReader(str(path)).read_metadata()


def load_into(template: dict, path: Path, *, no_dist: bool = False) -> None:
    """dcp.load of the checkpoint at `path` into `template`, in place, reading no code."""
    dcp.load(template, storage_reader=TensorOnlyReader(str(path)), planner=TensorOnlyPlanner(), no_dist=no_dist)

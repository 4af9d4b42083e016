"""Pickled checkpoints (.pth/.pt, and our trainer's sharded step-N.dcp folders), read as tensors and plain
containers only, never as code: official {"state_dict", "state_dict_ema"} files, bare state dicts, and our
training checkpoints (model, ema, optimizer... and the TrainConfig)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeGuard

import torch

from pixart.model.pixart import PixArtConfig
from pixart.weights.errors import WeightsError
from pixart.weights.sharded import is_sharded_checkpoint, read_sharded


def load_checkpoint_file(path: Path) -> object:
    """torch.load of a .pth/.pt, tensors and plain containers only (never code); of a sharded training
    checkpoint (a .dcp folder), the same entries as a .pt's bar the optimizer state."""
    if is_sharded_checkpoint(path):
        return read_sharded(path)
    try:
        return load_tensors_mapped(path)
    except Exception as error:  # noqa: BLE001 - report any unpickling refusal or corruption clearly
        reason = unreadable_reason(path, error)
        raise WeightsError(f"cannot read {path} as a tensor-only checkpoint: {reason}") from None


def load_tensors_mapped(path: Path) -> object:
    """torch.load of tensors and plain containers, mapped rather than read where the file allows it (torch's
    zip format; a legacy pre-zip file is read whole). torch's own errors pass through."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def unreadable_reason(path: Path, error: Exception) -> str:
    """Why torch.load refused a file, in one line (torch's own text may advise weights_only=False, which
    would run whatever code the file holds)."""
    if path.stat().st_size == 0:
        return "the file is empty (a copy or download cut short?)"
    if (other := not_a_checkpoint(path)) is not None:
        return other
    text = str(error).strip()
    if "Weights only load failed" in text:
        return (
            "it holds Python objects besides tensors, which pixart never unpickles (they could run code: a "
            "training script's args, say); if you trust the file, keep its weights alone in a Python session: "
            "torch.save(torch.load(FILE, weights_only=False)['state_dict'], 'weights.pth') (or its 'ema', "
            "'state_dict_ema' or 'model' entry)"
        )
    first = text.splitlines()[0].split(". ")[0] if text else ""
    return f"{type(error).__name__}: {first} (a corrupt or cut-short file, or not a checkpoint)"


def not_a_checkpoint(path: Path) -> str | None:
    """What a file torch cannot read is instead, where its first bytes show it is no torch file at all (a zip
    archive, or a pickle for the legacy format): else None. A failed download saves an HTML page under the
    checkpoint's name, and torch's refusal of it read as a file holding code."""
    with open(path, "rb") as file:
        head = file.read(64)
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return None
    if head[8:10] == b'{"':  # safetensors: an 8-byte header length, then the JSON header
        return f"it is a safetensors file: rename it to {path.with_suffix('.safetensors').name}"
    try:
        text = head.decode("utf-8").strip()
    except UnicodeDecodeError:
        return "it is not a torch checkpoint (neither a zip archive nor a pickle)"
    if text.startswith("<"):
        return f"it is an HTML page, not a checkpoint (a download that saved an error or login page?): {text[:40]!r}"
    return f"it is text, not a torch checkpoint: it starts {text[:40]!r}"


def is_training_checkpoint(data: object) -> TypeGuard[dict[str, Any]]:
    """One of our trainer's checkpoints/step-*.pt: model, ema, optimizer... and the TrainConfig."""
    return isinstance(data, dict) and {"model", "ema", "config"} <= set(data) and "stage" in data["config"]


def training_checkpoint_settings(path: Path) -> dict[str, Any] | None:
    """The entries of one of our trainer's checkpoints (checkpoints/step-N.pt, or a sharded step-N.dcp
    folder) but its weights and optimizer state: step, config, epoch...; None for any other path."""
    if is_sharded_checkpoint(path):
        entries = read_sharded(path, skip=("model", "ema", "optimizer"))  # kilobytes of a checkpoint's gigabytes
        stored = entries.get("config")
        return entries if isinstance(stored, dict) and "stage" in stored else None
    if path.suffix not in (".pt", ".pth") or not path.is_file():
        return None
    data = load_checkpoint_file(path)  # memory-mapped: the tensors are not read
    if not is_training_checkpoint(data):
        return None
    return {key: value for key, value in data.items() if key not in ("model", "ema", "optimizer")}


def read_official_state(path: Path, use_ema: bool, data: object = None) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint, a bare state dict, or one of our training checkpoints."""
    data = load_checkpoint_file(path) if data is None else data
    if is_training_checkpoint(data):
        # the trainer's EMA averages the parameters only: the buffers (the null caption) are the model's
        return {**data["model"], **data["ema"]} if use_ema else data["model"]
    if isinstance(data, dict) and ("state_dict" in data or "state_dict_ema" in data):
        # EMA weights alone (state_dict dropped to halve a file) are its one set, read with or without --ema
        key = "state_dict_ema" if use_ema or "state_dict" not in data else "state_dict"
        if key not in data:
            raise WeightsError(f"{path} has no EMA weights (state_dict_ema): drop --ema (use_ema=False)")
        if not is_state_dict(data[key]):
            raise WeightsError(f"{path}: its {key!r} entry is {type(data[key]).__name__}, not a state dict of tensors")
        return data[key]
    if is_state_dict(data):
        if use_ema:  # else ignored, silently: the one set there is converted either way
            raise WeightsError(f"{path} is a bare state dict, one set of weights (no state_dict_ema): drop --ema")
        return data
    found = f" (its entries: {', '.join(map(repr, list(data)[:8]))})" if isinstance(data, dict) and data else ""
    nested = [key for key, value in data.items() if is_state_dict(value)] if isinstance(data, dict) else []
    hint = (
        f"; its {nested[0]!r} entry holds tensors: save that entry alone, torch.save(checkpoint[{nested[0]!r}], "
        "'weights.pth'), and pass that file"
        if nested
        else ""
    )
    raise WeightsError(f"{path} is not a state dict nor a dict with a 'state_dict' entry{found}{hint}")


def is_state_dict(data: object) -> TypeGuard[dict[str, torch.Tensor]]:
    """A non-empty dict of tensors."""
    return isinstance(data, dict) and bool(data) and all(isinstance(v, torch.Tensor) for v in data.values())


def stored_official_config(data: object, path: Path) -> PixArtConfig | None:
    """The config a .pth carries: ours written with to='official', or a t2i training checkpoint's model."""
    try:
        if is_training_checkpoint(data):
            return PixArtConfig.from_dict(data["config"]["model"]) if data["config"]["stage"] == "t2i" else None
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            return PixArtConfig.from_dict(data["config"])
    except (ValueError, TypeError) as error:  # another tool's "config", or a hand-edited one
        raise WeightsError(
            f"{path}: its stored config is not a PixArtConfig ({error}); pass --config FILE with the model's fields"
        ) from None
    return None

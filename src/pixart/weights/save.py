"""Write PixArt weights in each layout: ours (.safetensors), official (.pth), diffusers (a folder)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from pixart.files import atomic_folder, atomic_write
from pixart.model.pixart import PixArt, PixArtConfig
from pixart.weights import keys
from pixart.weights.configs import diffusers_config_from_ours, official_pos_embed
from pixart.weights.formats import DIFFUSERS_WEIGHTS, FILE_SUFFIXES, FORMATS, NULL_CAPTION_FILE, SAMPLING_FILE
from pixart.weights.io import SAMPLING_METADATA, checked_sampling, sampling_entry

COMPILED_PREFIX = "_orig_mod."  # what torch.compile's wrapper puts before its model's state-dict keys
BUFFERS = ("y_embedder.y_embedding",)  # PixArt's one buffer: the learned null caption, which no EMA holds


def save_transformer(
    model_or_state: PixArt | dict[str, torch.Tensor],
    path: str | Path,
    *,
    to: str = "pixart",
    config: PixArtConfig | None = None,
    ema_state: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
    replace: bool = True,
) -> Path:
    """Write weights as 'pixart' (.safetensors), 'official' (.pth) or 'diffusers' (a folder). `metadata`
    joins the 'pixart' file's own; its sampling record (SAMPLING_METADATA) goes into the other layouts too,
    as a .pth's "sampling" entry or a diffusers folder's SAMPLING_FILE, where the official code and
    diffusers never look but pixart does. `ema_state` ('official' only) is written as the file's EMA set, the
    null caption taken from the weights (an EMA of the parameters leaves out the buffers; it must hold every
    parameter). replace=False:
    a file there by the time it is written is FileExistsError (a folder always is, unless empty)."""
    model_or_state = getattr(model_or_state, "_orig_mod", model_or_state)  # torch.compile's wrapper: its model
    if isinstance(model_or_state, PixArt):
        config = config or model_or_state.config
        state = model_or_state.state_dict()
        if model_or_state.sampling and SAMPLING_METADATA not in (metadata or {}):  # as load_transformer read it
            fields = checked_sampling(model_or_state.sampling, "the model's `sampling`")  # set by hand too
            metadata = {**(metadata or {}), **sampling_entry(**fields)}
    elif isinstance(model_or_state, dict):
        state = model_or_state
        if state and all(key.startswith(COMPILED_PREFIX) for key in state):  # a compiled model's state_dict()
            state = {key.removeprefix(COMPILED_PREFIX): value for key, value in state.items()}
        if config is None:
            raise ValueError("save_transformer needs config= when given a bare state dict")
    else:
        raise TypeError(f"save_transformer takes a PixArt or its state dict, got {type(model_or_state).__name__}")
    path = Path(path)
    check_destination(path, to)
    state = _cpu(state)
    sampling = (metadata or {}).get(SAMPLING_METADATA)
    if to == "pixart":
        ours = {**(metadata or {}), "format": "pixart", "config": json.dumps(config.to_dict())}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=ours), replace=replace)
    elif to == "official":
        # The config rides along (the official loader reads only the state dicts): shapes cannot say the
        # head count of a non-XL model or caption_norm, so a round trip would otherwise change the model.
        # pos_embed in the weights' dtype, as the official model's buffer is: an fp16 file came back with an
        # fp32 one (all else bit-exact)
        pos_embed = official_pos_embed(config).to(state["x_embedder.proj.weight"].dtype)
        payload: dict[str, object] = {
            "state_dict": {**state, "pos_embed": pos_embed},
            "config": config.to_dict(),
        }
        if sampling is not None:
            payload[SAMPLING_METADATA] = sampling
        if ema_state is not None:  # the EMA of the parameters; the buffer it lacks (the null caption) is shared
            lacking = sorted(set(state) - set(ema_state) - set(BUFFERS))
            if lacking:  # an EMA with holes would be filled with raw weights unsaid
                raise ValueError(f"ema_state lacks {len(lacking)} parameter(s) the weights hold: {lacking[:5]}")
            payload["state_dict_ema"] = {**state, **_cpu(ema_state), "pos_embed": pos_embed}
        atomic_write(path, lambda tmp: torch.save(payload, tmp), replace=replace)
    else:  # diffusers (check_destination refused any other layout)
        diffusers_config = diffusers_config_from_ours(config)
        null = state.pop("y_embedder.y_embedding")
        theirs = keys.to_diffusers(state, config.depth, config.micro_conditions)  # before the folder: it may refuse

        def write_folder(folder: Path) -> None:
            save_file(theirs, str(folder / DIFFUSERS_WEIGHTS), metadata={"format": "pt"})
            save_file({"y_embedding": null}, str(folder / NULL_CAPTION_FILE))
            if sampling is not None:
                (folder / SAMPLING_FILE).write_text(sampling + "\n")
            # last: a folder written in place (see atomic_folder) is no diffusers folder until it is there
            (folder / "config.json").write_text(json.dumps(diffusers_config, indent=2) + "\n")

        atomic_folder(path, write_folder)
    return path


def check_destination(path: Path, to: str) -> None:
    """A name that reads back as the layout written: an official .pth named .safetensors was later "header too
    large (a corrupt file)", our file without its suffix "unknown weights format"."""
    if to not in FORMATS:
        raise ValueError(f"unknown weights layout {to!r}; choose one of {FORMATS}")
    if to in FILE_SUFFIXES and path.suffix not in FILE_SUFFIXES[to]:
        named = " or ".join(FILE_SUFFIXES[to])
        raise ValueError(f"{path}: the {to} layout writes a {named} file (its name is how it is read back)")
    if to == "diffusers" and any(path.suffix in suffixes for suffixes in FILE_SUFFIXES.values()):
        raise ValueError(f"{path}: the diffusers layout writes a folder, not a {path.suffix} file: name a folder")


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items() if k != "pos_embed"}

"""Read PixArt transformer weights in three layouts, detected from the path (pixart.weights.formats; writing:
pixart.weights.save).

- official: a `.pth` holding {"state_dict": ..., "state_dict_ema": ...} or a bare state dict;
- ours: a `.safetensors` file whose metadata carries the config (official key names, no pos_embed);
- diffusers: a folder with config.json + diffusion_pytorch_model.safetensors, or a pipeline folder
  holding transformer/.

Loading is strict: only the computed `pos_embed` is dropped. Nothing is ever unpickled as code
(`weights_only=True`, or safetensors).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pixart.config import is_number, is_whole
from pixart.diffusion.objective import OBJECTIVES, DiffusionConfig
from pixart.model.dit import DiTConfig
from pixart.model.pixart import PixArt, PixArtConfig
from pixart.weights import keys
from pixart.weights.configs import (
    check_pos_embed,
    complete_config,
    diffusers_config_to_ours,
    infer_official_config,
)
from pixart.weights.errors import WeightsError
from pixart.weights.formats import (
    DIFFUSERS_WEIGHTS,
    NULL_CAPTION_FILE,
    OURS_IN_FOLDER,
    SAMPLING_FILE,
    SHARD_NAME,
    detect_format,
    diffusers_folder,
    diffusers_weight_files,
    reading,
    safetensors_metadata,
)
from pixart.weights.pth import (
    is_training_checkpoint,
    load_checkpoint_file,
    read_official_state,
    stored_official_config,
    training_checkpoint_settings,
)
from pixart.weights.sharded import is_sharded_checkpoint

# Metadata key of our trainer's final weights: {"objective", "flow_shift", "shift_base_tokens"} as JSON.
SAMPLING_METADATA = "sampling"


def sampling_fields(objective: str, flow_shift: float, shift_base_tokens: int) -> dict[str, Any]:
    """How weights sample, which their tensors cannot say (a PixArt's `sampling`)."""
    return {"objective": objective, "flow_shift": flow_shift, "shift_base_tokens": shift_base_tokens}


def sampling_entry(objective: str, flow_shift: float, shift_base_tokens: int) -> dict[str, str]:
    """{SAMPLING_METADATA: the JSON of sampling_fields}, as weights files record it."""
    return {SAMPLING_METADATA: json.dumps(sampling_fields(objective, flow_shift, shift_base_tokens))}


def read_sampling(recorded: str, source: str | Path) -> dict[str, Any]:
    """The sampling_fields of a record (sampling_metadata's value, JSON): see checked_sampling."""
    try:
        fields = json.loads(recorded)
    except json.JSONDecodeError:
        fields = recorded
    return checked_sampling(fields, source, shown=recorded)


def checked_sampling(fields: object, source: str | Path, shown: str | None = None) -> dict[str, Any]:
    """sampling_fields of `fields` (a record read back, or a model's `sampling` set by hand), defaults filled in
    where it predates a field; a WeightsError naming `source` (and `shown`, the record as written) where it is
    none pixart writes (a hand-edited pixart_sampling.json, say)."""
    if isinstance(fields, dict):
        fields = {**dataclasses.asdict(DiffusionConfig()), **fields}
        objective, shift, base = fields["objective"], fields["flow_shift"], fields["shift_base_tokens"]
        shift_ok = is_number(shift) and math.isfinite(shift) and shift > 0
        if objective in OBJECTIVES and shift_ok and is_whole(base) and base >= 0:
            return sampling_fields(objective, float(shift), int(base))
    raise WeightsError(
        f"{source} records how it samples as {(shown or str(fields))[:120]!r}, which is not a record pixart writes "
        f'(e.g. {{"objective": "flow", "flow_shift": 3.0, "shift_base_tokens": 0}}): mend it, or delete it to '
        "sample the weights as an eps model"
    )


def sampling_metadata(path: str | Path) -> dict[str, str]:
    """{SAMPLING_METADATA: its JSON} where the weights at `path` record it (save_transformer's `metadata`):
    our .safetensors file's metadata, a .pth's "sampling" entry, a diffusers folder's SAMPLING_FILE, a
    training checkpoint's config (step-N.pt, step-N.dcp); else {}."""
    path = Path(path)
    recorded: object = None
    if is_sharded_checkpoint(path) and (settings := training_checkpoint_settings(path)) is not None:
        return _training_sampling_entry(settings)
    if path.is_dir() and (path / OURS_IN_FOLDER).is_file():  # a model folder of ours: its transformer file says
        path = path / OURS_IN_FOLDER
    if path.suffix == ".safetensors" and path.is_file():
        recorded = safetensors_metadata(path).get(SAMPLING_METADATA)
    elif path.suffix in (".pth", ".pt") and path.is_file():
        data = load_checkpoint_file(path)  # memory-mapped: its tensors are not read
        if is_training_checkpoint(data):  # the config it trained with says it
            return _training_sampling_entry(data)
        recorded = data.get(SAMPLING_METADATA) if isinstance(data, dict) else None
    elif path.is_dir() and (folder := diffusers_folder(path)) is not None and (folder / SAMPLING_FILE).is_file():
        recorded = (folder / SAMPLING_FILE).read_text()
    beside = path.parent / SAMPLING_FILE
    if recorded is None and path.suffix in (".safetensors", ".bin") and path.is_file() and beside.is_file():
        # a diffusers folder's weights file (a variant's, a .bin), read with the config.json beside it: its
        # folder says how it samples (a flow model sampled as an eps model, and convert dropped the record)
        recorded = beside.read_text()
    return {SAMPLING_METADATA: recorded} if isinstance(recorded, str) else {}


# ---------------------------------------------------------------------------------------------------
# Reading each layout into (config, our state dict)


def _training_sampling_entry(settings: dict[str, Any]) -> dict[str, str]:
    """sampling_entry of a training checkpoint's diffusion settings (their defaults where it predates one)."""
    diffusion = {**dataclasses.asdict(DiffusionConfig()), **settings["config"].get("diffusion", {})}
    return sampling_entry(diffusion["objective"], diffusion["flow_shift"], diffusion["shift_base_tokens"])


def refuse_ema_of_one_set(path: Path, use_ema: bool) -> None:
    """A folder, a .safetensors file or a diffusers weights file (a .bin beside its config.json) holds one set
    of weights: use_ema would be ignored there, silently."""
    if not use_ema:
        return
    if (
        (path.is_dir() and not is_sharded_checkpoint(path))
        or path.suffix == ".safetensors"
        or (path.is_file() and detect_format(path) == "diffusers")
    ):
        raise WeightsError(
            f"--ema reads a .pth/.pt checkpoint's EMA weights (use_ema=True); {path} holds one set of weights"
        )


def read_dit(path: Path, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], DiTConfig | None]:
    """A DiT checkpoint's state dict (its EMA with use_ema, where a training checkpoint holds one), and its
    config where the file carries one.

    Our trainer's stage-1 weights (.safetensors) keep it in the metadata and its checkpoints under
    config.dit; official DiT .pt files carry none, so their architecture is read from the shapes.
    """
    refuse_ema_of_one_set(path, use_ema)
    if path.suffix == ".safetensors":
        with reading(path):  # a corrupt file: one line naming it (stage 2's init_from reads it here first)
            metadata = safetensors_metadata(path)
            stored = (
                json.loads(metadata["config"]) if metadata.get("format") == "dit" and "config" in metadata else None
            )
            return load_file(path), DiTConfig(**stored) if stored else None
    data = load_checkpoint_file(path)
    state = dict(read_official_state(path, use_ema=use_ema, data=data))
    return state, DiTConfig(**data["config"]["dit"]) if is_training_checkpoint(data) else None


def _tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file, or a pickled one of tensors only (diffusers' .bin: read without running code)."""
    if path.suffix == ".safetensors":
        return load_file(path)
    data = load_checkpoint_file(path)
    if not (isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values())):
        raise WeightsError(f"{path} holds no flat dict of tensors")
    return data


def _read_diffusers(folder: Path, weights: Path | None = None) -> tuple[PixArtConfig, dict[str, torch.Tensor]]:
    """The transformer in `folder` (its config.json; `weights`, else the weights file or shards diffusers names)."""
    with reading(folder / "config.json"):
        data = json.loads((folder / "config.json").read_text())
    try:
        config = diffusers_config_to_ours(data)
    except WeightsError:
        raise
    except (ValueError, TypeError, AttributeError) as error:  # a list, a number written as a string...
        raise WeightsError(f"{folder / 'config.json'} is not a PixArt transformer's config: {error}") from None
    if config.mlp_ratio != 4.0:
        raise WeightsError("unexpected mlp ratio in a diffusers config")
    state: dict[str, torch.Tensor] = {}
    for file in [weights] if weights is not None else diffusers_weight_files(folder):
        state.update(_tensor_file(file))
    expected = {
        k
        for _, theirs in keys.key_pairs(config.depth, config.micro_conditions)
        for k in ([theirs] if isinstance(theirs, str) else theirs)
    }
    check_key_sets(expected, set(state), f"diffusers transformer in {folder}")
    ours = keys.from_diffusers(state, config.depth, config.micro_conditions)
    null_file = folder / NULL_CAPTION_FILE
    if null_file.is_file():
        null = load_file(null_file)["y_embedding"]
        ours["y_embedder.y_embedding"] = null
        config = dataclasses.replace(config, max_length=null.shape[0])
    else:  # diffusers weights guide with the encoded empty prompt, so no learned null caption exists
        dtype = ours["x_embedder.proj.weight"].dtype
        ours["y_embedder.y_embedding"] = torch.zeros(config.max_length, config.caption_channels, dtype=dtype)
    return config, ours


def read_state(
    path: str | Path, *, use_ema: bool = False, config: PixArtConfig | None = None, check_grid: bool = True
) -> tuple[PixArtConfig, dict[str, torch.Tensor], str]:
    """(config, state dict in our key names without pos_embed, format) for any supported path.

    With check_grid=False an official file's stored pos_embed need not be `config`'s: a training stage at
    another resolution starts from it (the pos_embed is computed, never loaded)."""
    with reading(path):
        config, state, fmt, _ = _read_state(Path(path), use_ema, config, check_grid)
        return config, state, fmt


def read_state_and_stored(
    path: str | Path, *, config: PixArtConfig | None = None, check_grid: bool = True
) -> tuple[PixArtConfig, dict[str, torch.Tensor], str, PixArtConfig | None]:
    """read_state's answer and the config the file stores, where it stores one: what the tensors' shapes
    cannot say (the head count, caption_norm) can be compared with a `config` given."""
    with reading(path):
        return _read_state(Path(path), False, config, check_grid)


def _read_state(
    path: Path,
    use_ema: bool,
    config: PixArtConfig | None,
    check_grid: bool = True,
    fields: Mapping[str, Any] | None = None,
    source: str = "--config",
) -> tuple[PixArtConfig, dict[str, torch.Tensor], str, PixArtConfig | None]:
    """read_state's answer, and the config the file stores (None where it stores none, or a config is given
    and what it stores is not a PixArtConfig: another tool's). `fields` (--config's, some of PixArtConfig's)
    stand in for a whole `config`: the rest is what the file stores, else what its shapes say."""
    if fields is not None:
        config = None
    refuse_ema_of_one_set(path, use_ema)
    fmt = detect_format(path)
    if fmt == "dit":
        raise WeightsError(
            f"{path} is a class-conditional DiT checkpoint (stage 1), not PixArt: it draws no image from text. "
            f"Turn it into a PixArt initialisation with: pixart convert {path} --to pixart --out init.safetensors "
            "(for T5-XXL captions; for another text encoder add its --caption-channels and --max-length, MiniLM's "
            "384 and 48), or give it as a text-to-image run's init_from, which does this with the run's own widths"
        )
    if fmt == "diffusers":
        # A folder, or a weights file (diffusers' name, or another: a variant's .fp16.safetensors) whose
        # folder holds the config.json that says the rest.
        if path.is_file() and SHARD_NAME.search(path.name):
            raise WeightsError(f"{path} is one shard of several: pass the folder that holds them all, {path.parent}")
        if path.is_file() and (path.parent / "config.json").is_file():
            found_config, state = _read_diffusers(path.parent, weights=path)
        else:
            folder = diffusers_folder(path)
            if folder is None:
                raise WeightsError(
                    f"{path} holds diffusers transformer weights without their config.json: pass the folder that "
                    f"holds both (config.json and {DIFFUSERS_WEIGHTS}), or the weights file beside its config.json"
                )
            found_config, state = _read_diffusers(folder)
        stored: PixArtConfig | None = found_config
    elif fmt == "pixart":
        file = path / OURS_IN_FOLDER if path.is_dir() else path
        try:
            stored = found_config = PixArtConfig.from_dict(json.loads(safetensors_metadata(file)["config"]))
        except (ValueError, TypeError) as error:  # fields of another version or tool
            if config is None and fields is None:
                raise WeightsError(f"{file}: its stored config is not a PixArtConfig: {error}") from None
            stored = found_config = None  # config= replaces it
        state = load_file(file)
    else:
        stored = None
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            data = load_checkpoint_file(path)
            state = dict(read_official_state(path, use_ema, data))
            try:
                stored = stored_official_config(data, path)
            except WeightsError:  # another tool's "config": config= replaces it, else the error says to give one
                if config is None and fields is None:
                    raise
        if "y_embedder.y_embedding" not in state and "y_embedder.y_proj.fc1.weight" in state:
            # No learned null caption (PixArt-Sigma's diffusers-to-official converter writes none; the official
            # loader is not strict): zeros, as for diffusers weights, which generate guides with the empty prompt
            known = config or stored
            length = known.max_length if known else int((fields or {}).get("max_length", PixArtConfig.max_length))
            projection = state["y_embedder.y_proj.fc1.weight"]  # (D, C_cap)
            state["y_embedder.y_embedding"] = projection.new_zeros(length, projection.shape[1])
        carried = config or stored
        if fields is not None:
            carried = complete_config(fields, state, stored, source)
        if carried is not None:  # a config given or carried must compute the stored pos_embed
            if check_grid:
                check_pos_embed(state, carried, path)
            found_config = carried
        else:  # inferred from the pos_embed itself, so it matches by construction
            found_config = infer_official_config(state)
    state.pop("pos_embed", None)
    if fields is not None and fmt in ("diffusers", "pixart"):
        found_config = complete_config(fields, state, found_config, source)
    used = config or found_config
    assert used is not None  # found_config is None only where config was given
    return used, state, fmt, stored


def check_key_sets(expected: set[str], found: set[str], what: str, shapes: str = "") -> None:
    """WeightsError naming the keys `found` lacks and those it has beyond `expected` (and `shapes`, a note)."""
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:8]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:8]}")
        if shapes:
            parts.append(shapes)
        raise WeightsError(f"{what} does not match the architecture: " + "; ".join(parts))


def check_state_matches(model: PixArt, state: dict[str, torch.Tensor], what: str) -> None:
    """Raise a WeightsError naming missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    mis_shaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    shapes = f"mis-shaped keys ({len(mis_shaped)}): {mis_shaped[:8]}" if mis_shaped else ""
    check_key_sets(set(expected), set(state), what, shapes)


def read_checked_state(
    path: str | Path,
    *,
    use_ema: bool = False,
    config: PixArtConfig | None = None,
    config_source: str = "",
    fields: Mapping[str, Any] | None = None,
) -> tuple[PixArtConfig, dict[str, torch.Tensor], str]:
    """read_state, with the tensors checked against the architecture they are read with: a WeightsError
    naming missing, unexpected and mis-shaped keys (and `config_source`, where `config` or `fields` came
    from). `fields`: some of PixArtConfig's, the rest read from the file (see _read_state).

    A `config` other than the one the file stores is refused: the tensors cannot tell a head count (or
    caption_norm), so the weights would silently become another model; init_from (read_state) may differ."""
    with reading(path):
        source = f"--config {config_source}" if config_source else "config="
        config, state, fmt, stored = _read_state(Path(path), use_ema, config, True, fields, source)
    if stored is not None and config != stored:
        theirs, ours = stored.to_dict(), config.to_dict()
        differs = ", ".join(f"{key} {ours[key]} vs {theirs[key]}" for key in ours if ours[key] != theirs.get(key))
        raise WeightsError(
            f"{config_source or 'config='} differs from the architecture {path} stores ({differs}): "
            f"drop {'--config' if config_source else 'config='}, the file says its own"
        )
    with torch.device("meta"):
        model = PixArt(config)
    given = f" with the architecture of {config_source}" if config_source else ""
    check_state_matches(model, state, f"{fmt} checkpoint {path}{given}")
    return config, state, fmt


def load_transformer(
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
    config: PixArtConfig | None = None,
    use_ema: bool = False,
) -> PixArt:
    """Build the PixArt a checkpoint describes and load it strictly (format detected from `path`): an official
    .pth, our .safetensors, a diffusers folder (or a pipeline's), a training checkpoint. The model's `sampling`
    holds how its outputs read where the weights record it (a flow model's objective and shift), which
    pixart.sample.sample and save_transformer follow."""
    if isinstance(dtype, str):  # "bfloat16", as in a config file
        named = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(named, torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype: e.g. torch.bfloat16 or 'bfloat16'")
        dtype = named
    config, state, _ = read_checked_state(path, use_ema=use_ema, config=config)
    with torch.device("meta"):
        model = PixArt(config)
    model.load_state_dict(state, strict=True, assign=True)
    recorded = sampling_metadata(path).get(SAMPLING_METADATA)
    model.sampling = read_sampling(recorded, path) if recorded else {}  # a flow model's objective and shift
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
    return model.eval()

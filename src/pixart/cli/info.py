"""`pixart info PATH`: format found, config, parameter count, how the weights sample."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixart.model.pixart import PixArtConfig


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        type=Path,
        help="weights file, model folder, diffusers pipeline folder, finished pixart train run folder, or training "
        "checkpoint (step-N.pt or step-N.dcp)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help='a JSON file of the PixArtConfig fields a file\'s shapes do not say (e.g. {"num_heads": 3} for a '
        "width not 72 per head); the rest are read from the file",
    )
    parser.add_argument(
        "--num-heads",
        type=int,
        help="a DiT checkpoint's head count, where its width does not say it (as pixart convert takes)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from pixart.cli.convert import check_num_heads, read_config_fields
    from pixart.cli.main import UserError
    from pixart.model.pixart import PixArtConfig
    from pixart.modelfolder import folder_kind, run_around, run_weights, sampling_record
    from pixart.weights import detect_format
    from pixart.weights.dit_init import infer_dit_config
    from pixart.weights.io import SAMPLING_METADATA, read_checked_state, read_dit
    from pixart.weights.pth import training_checkpoint_settings

    given = read_config_fields(args.config, PixArtConfig) if args.config else None
    # a finished training run, which generate and serve take whole: the weights they sample (its final EMA
    # weights, unless the EMA still holds mostly its start), and how it generates
    folder = args.path
    path = run_weights(folder, say=False) if folder.is_dir() and folder_kind(folder) == "run" else folder
    fmt = detect_format(path)
    if fmt == "dit":
        if given is not None:
            raise UserError(
                f"--config is for PixArt weights; {path} is a DiT checkpoint: --num-heads N says its head "
                "count where its width does not"
            )
        state, dit_config = read_dit(path)
        check_num_heads(path, dit_config, args.num_heads)
        config = (dit_config or infer_dit_config(state, num_heads=args.num_heads)).to_dict()
        architecture = "DiT (class-conditional)"
    else:
        # checked against the architecture it reports: a file missing a block was summarised as healthy
        source = str(args.config) if args.config else ""
        if args.num_heads is not None:
            raise UserError(f"--num-heads applies to a DiT checkpoint; {path} holds {fmt} weights: use --config")
        pixart_config, state, fmt = read_checked_state(path, fields=given, config_source=source)
        config = pixart_config.to_dict()
        architecture = "PixArtMS" if pixart_config.micro_conditions else "PixArt"
    params = sum(v.numel() for k, v in state.items() if k not in ("pos_embed", "y_embedder.y_embedding"))
    info: dict[str, Any] = {
        "path": str(path),
        "format": fmt,
        "architecture": architecture,
        "parameters": params,
        "dtype": stored_dtypes(state),
    }
    settings = training_checkpoint_settings(path)
    # a second set of weights --ema reads (not: "these are EMA weights"); our checkpoints always hold one
    ema_set, config_stored = pickled_file_facts(path)
    info["ema_set"] = settings is not None or ema_set
    recorded = sampling_record(path)
    if recorded:  # where nothing records it, generate samples the weights as the eps (IDDPM) model they are
        info["sampling"] = json.loads(recorded[SAMPLING_METADATA])
    learned = fmt != "dit" and bool(state["y_embedder.y_embedding"].any())
    # diffusers' weights, or converted from them; not a run's, which trained with its zeros as the null caption
    if fmt != "dit" and not learned and run_around(path) is None:
        info["null_caption"] = "none learned (all zeros): pixart generate guides with the encoded empty prompt"
    generation = {} if fmt == "dit" else generation_settings(folder, pixart_config, learned_null_caption=learned)
    if generation:  # a model folder, pipeline folder or finished run: what else generate uses
        info["generation"] = generation
    info["config"] = config
    if fmt == "official" and given is None and settings is None and not config_stored:
        # a bare or official state dict: every field is read off a tensor's shape but the head count
        info["guessed"] = {"num_heads": "width / 72, the official family's head size: --config FILE if another"}
    if settings is not None:
        stored = settings["config"]
        info["training_checkpoint"] = {
            "step": settings.get("step"),
            "recipe": stored.get("recipe"),
            "stage": stored["stage"],
        }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    what = f"{fmt} weights"
    if settings is not None:  # its keys are the official layout, but it is not an official file
        checkpoint = info["training_checkpoint"]
        what = (
            f"a pixart train checkpoint (step {checkpoint['step']}, recipe {checkpoint['recipe']}) in the {fmt} layout"
        )
    print(f"{path}: {what}, {architecture}, {params:,} parameters")
    print(f"  dtype: {info['dtype']}")
    print(  # the flag is convert's: info has none
        "  convert --ema: " + ("reads its EMA weights" if info["ema_set"] else "nothing to read (one set of weights)")
    )
    for key in ("sampling", "null_caption"):
        if key in info:
            print(f"  {key}: {describe(info[key])}")
    for key, value in info.get("generation", {}).items():
        print(f"  {key}: {describe(value)}")
    for key, value in config.items():
        guess = info.get("guessed", {}).get(key)
        print(f"  {key}: {value}" + (f" (a guess: {guess})" if guess else ""))
    return 0


def there_or_not(folder: Path, option: str) -> str:
    """The folder, or the folder and that it is not there (generate would stop on it) with the option to give."""
    return str(folder) if folder.exists() else f"{folder}: not there; generate needs {option}"


def generation_settings(path: Path, config: PixArtConfig, learned_null_caption: bool) -> dict[str, Any]:
    """What `pixart generate` takes from a folder besides the transformer, as it resolves them: text encoder,
    codec, sampler and its steps, guidance, buckets. Empty for bare weights; a note when the folder cannot say."""
    from pixart.modelfolder import folder_kind, read_spec, run_around, spec_for_weights
    from pixart.weights import WeightsError

    kind = folder_kind(path)
    if kind == "weights":
        if run_around(path) is None:
            return {}
        kind = "run weights"  # a run's other weights (final.safetensors, a checkpoint) generate as its own do
    try:
        spec, transformer_path, text_folder, _, codec_folder, scheduler = read_spec(path)
    except (FileNotFoundError, WeightsError, ValueError, KeyError) as error:
        return {"folder": f"cannot say how it generates: {error}"}
    spec = spec_for_weights(path, spec, transformer_path, config, learned_null_caption=learned_null_caption)
    sampler = "folder" if scheduler is not None else spec.sampler  # a diffusers folder's own scheduler first
    steps = spec.default_steps(sampler)
    if sampler == "folder":
        sampler = "folder (its scheduler/)"
    # A folder the spec names may be gone (a pipeline without text_encoder/): said, not shown as if it loads
    text = "the bundled MiniLM" if text_folder is None else there_or_not(text_folder, "--text-encoder DIR")
    codec = spec.codec + (f" ({there_or_not(codec_folder, '--vae PATH')})" if codec_folder is not None else "")
    buckets = spec.buckets or {}
    folders = {
        "pixart": "a pixart model folder",
        "diffusers": "a diffusers pipeline",
        "run": "a training run",
        "run weights": "weights of a training run",
    }
    return {
        "folder": folders[kind],
        "text_encoder": f"{spec.text_encoder} ({text}), {spec.text_max_length} tokens",
        "codec": codec,
        "defaults": {"sampler": sampler, "steps": steps, "cfg": spec.cfg_scale, "null caption": spec.null_caption},
        "buckets": ", ".join(f"{key} ({h}x{w})" for key, (h, w) in buckets.items()) or "the official table",
    }


def stored_dtypes(state: dict) -> str:
    """The tensors' dtypes as stored ("float32", or "float16, float32" for a mixed file)."""
    return ", ".join(sorted({str(tensor.dtype).removeprefix("torch.") for tensor in state.values()}))


def pickled_file_facts(path: Path) -> tuple[bool, bool]:
    """Of a .pth/.pt file, read once: whether it holds EMA weights (state_dict_ema) beside its state_dict, a
    second set for --ema (EMA weights alone are its one set, read with or without it), and whether it
    carries its config (ours, written with to='official'), which says the head count its tensors cannot.
    (False, False) for any other file."""
    from pixart.weights import WeightsError
    from pixart.weights.pth import is_state_dict, load_checkpoint_file, stored_official_config

    if path.suffix not in (".pt", ".pth", ".bin", ".ckpt") or not path.is_file():
        return False, False
    data = load_checkpoint_file(path)  # memory-mapped, and already read once: the page cache has it
    if not isinstance(data, dict):
        return False, False
    ema_set = is_state_dict(data.get("state_dict_ema")) and is_state_dict(data.get("state_dict"))
    try:
        return ema_set, stored_official_config(data, path) is not None
    except WeightsError:  # a config there, not ours (read_checked_state refused it unless --config replaced it)
        return ema_set, True


def describe(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {item}" for key, item in value.items())
    return str(value)

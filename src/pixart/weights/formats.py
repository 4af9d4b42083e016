"""Which layout a weights path holds (official .pth, our .safetensors, a diffusers folder, a DiT
checkpoint), the file names each layout uses, and the files of a diffusers folder. Reading them:
pixart.weights.io."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError, safe_open

from pixart.weights.errors import WeightsError
from pixart.weights.pth import read_official_state
from pixart.weights.sharded import is_sharded_checkpoint, sharded_model_keys

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_PICKLED_WEIGHTS = "diffusion_pytorch_model.bin"  # older folders (save_pretrained without safetensors)
SHARD_NAME = re.compile(r"-\d+-of-\d+\.")  # diffusion_pytorch_model-00001-of-00002.safetensors
NULL_CAPTION_FILE = "null_caption.safetensors"  # our sidecar: diffusers has no slot for y_embedding
SAMPLING_FILE = "pixart_sampling.json"  # our sidecar: how the weights sample (a flow model's objective)
OURS_IN_FOLDER = "transformer.safetensors"  # inside a model folder of ours (see pixart.modelfolder)
FINAL = "final.safetensors"  # what a finished `pixart train` run leaves in its folder
FINAL_EMA = "final_ema.safetensors"  # ... and its EMA weights, what the next stage and generate take
FORMATS = ("pixart", "official", "diffusers")
# The suffixes a layout's file takes (its reader tells the layouts apart by them); a diffusers layout is a folder
FILE_SUFFIXES = {"pixart": (".safetensors",), "official": (".pth", ".pt")}


# ---------------------------------------------------------------------------------------------------
# Format detection


def detect_format(path: str | Path) -> str:
    """'pixart', 'official', 'diffusers' or 'dit' for a weights path; a clear error otherwise."""
    with reading(path):
        return _detect_format(Path(path))


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """A corrupt, cut-short or mislabelled file's parse error, as one WeightsError naming the file."""
    try:
        yield
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"cannot read {path}: {error} (a corrupt or cut-short file, or not weights)") from None
    except KeyError as error:  # an entry every checkpoint of its format holds (a tensor, the stored config)
        raise WeightsError(
            f"cannot read {path}: it has no {error} (an incomplete file, or not PixArt weights)"
        ) from None


def _detect_format(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if is_sharded_checkpoint(path):  # a training checkpoint: its keys say which, without reading a tensor
        return _format_from_keys(sharded_model_keys(path), path)
    if path.is_dir():
        if (path / OURS_IN_FOLDER).is_file():
            return "pixart"
        if (folder := diffusers_folder(path)) is not None:
            refuse_other_diffusers_model(folder)
            return "diffusers"
        if (path / FINAL_EMA).is_file():  # a finished `pixart train` run folder
            raise WeightsError(f"{path} is a training run: give its weights, {path / FINAL_EMA}")
        if (path / "model" / OURS_IN_FOLDER).is_file():  # `pixart demo`'s folder: its model is model/
            raise WeightsError(f"{path} is not a model but holds one (a demo's folder?): give {path / 'model'}")
        raise WeightsError(
            f"{path} is a folder but holds neither {OURS_IN_FOLDER} (a pixart model folder) nor a diffusers "
            f"transformer (config.json + {DIFFUSERS_WEIGHTS}, or model_index.json with transformer/)"
        )
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("format") == "pixart":
                return "pixart"
            return _format_from_keys(list(f.keys()), path)
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return _format_from_keys(list(read_official_state(path, use_ema=False)), path)
    raise WeightsError(
        f"unknown weights format for {path}: expected an official .pth/.pt, a .safetensors file, or a diffusers folder"
    )


# The class names diffusers writes in a PixArt transformer's config.json (Transformer2DModel before 0.28)
TRANSFORMER_CLASSES = ("PixArtTransformer2DModel", "Transformer2DModel")


def refuse_other_diffusers_model(folder: Path) -> None:
    """A diffusers folder of another model (a pipeline's vae/, a UNet) was taken for a transformer: asked for
    --vae and --text-encoder, then refused for a missing caption_channels."""
    with reading(folder / "config.json"):
        config = json.loads((folder / "config.json").read_text())
    kind = config.get("_class_name") if isinstance(config, dict) else None
    if isinstance(kind, str) and kind not in TRANSFORMER_CLASSES:
        hint = ": pass it as --vae" if kind.startswith("Autoencoder") else ""
        raise WeightsError(f"{folder} holds a diffusers {kind}, not a PixArt transformer{hint}")


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a .safetensors file (ours keeps "format" and "config" there); {} if none."""
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _format_from_keys(names: list[str], path: Path) -> str:
    names_set = set(names)
    if "y_embedder.embedding_table.weight" in names_set and not any(".cross_attn." in n for n in names):
        return "dit"
    if "x_embedder.proj.weight" in names_set and any(n.startswith("blocks.") for n in names):
        return "official"
    if "pos_embed.proj.weight" in names_set and any(n.startswith("transformer_blocks.") for n in names):
        return "diffusers"
    sample = ", ".join(sorted(names)[:5])
    wrapped = " (every key starts with 'module.', as DDP names them: save the state dict without that prefix)"
    raise WeightsError(
        f"{path} does not hold a PixArt transformer (keys start with: {sample}); expected official PixArt "
        "keys (x_embedder, blocks.N...), diffusers PixArtTransformer2DModel keys, or a DiT checkpoint"
        + (wrapped if names and all(name.startswith("module.") for name in names) else "")
    )


def diffusers_folder(path: Path) -> Path | None:
    """The folder that holds the transformer's config.json and weights, or None."""
    for candidate in (path, path / "transformer"):
        if (candidate / "config.json").is_file() and diffusers_weight_files(candidate):
            return candidate
    return None


def diffusers_weight_files(folder: Path) -> list[Path]:
    """The files holding a diffusers folder's weights: diffusers' default names (one file, shards listed by
    an index, or the pickled .bin), else one variant's (save_pretrained(variant="fp16") writes
    diffusion_pytorch_model.fp16.safetensors, or shards with diffusion_pytorch_model.safetensors.index.fp16.json).
    [] if there are none; two variants and no default is an error naming them. An index comes before a single
    file beside it, as diffusers loads them."""
    if (folder / f"{DIFFUSERS_WEIGHTS}.index.json").is_file():
        return _shards(folder / f"{DIFFUSERS_WEIGHTS}.index.json")
    if (folder / DIFFUSERS_WEIGHTS).is_file():
        return [folder / DIFFUSERS_WEIGHTS]
    if (folder / DIFFUSERS_PICKLED_WEIGHTS).is_file():
        return [folder / DIFFUSERS_PICKLED_WEIGHTS]
    stem = DIFFUSERS_WEIGHTS.removesuffix(".safetensors")
    variants = [f for f in sorted(folder.glob(f"{stem}.*.safetensors")) if not SHARD_NAME.search(f.name)]
    variant_indexes = sorted(folder.glob(f"{DIFFUSERS_WEIGHTS}.index.*.json"))
    if len(variants) + len(variant_indexes) > 1:
        names = ", ".join(f.name for f in [*variants, *variant_indexes])
        raise WeightsError(f"{folder} holds the weights of several variants ({names}): pass the file of the one to use")
    return _shards(variant_indexes[0]) if variant_indexes else variants


def _shards(index: Path) -> list[Path]:
    """The shard files a diffusers index names."""
    with reading(index):
        return [index.parent / shard for shard in sorted(set(json.loads(index.read_text())["weight_map"].values()))]

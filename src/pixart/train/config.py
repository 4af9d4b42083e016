"""TrainConfig: every knob of a training run, nested frozen dataclasses, saved with every checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pixart.data.buckets import bucket_key, parse_size
from pixart.diffusion.objective import DiffusionConfig
from pixart.model.dit import DiTConfig
from pixart.model.pixart import PixArtConfig

STAGES = ("class", "t2i")
PRECISIONS = ("auto", "fp32", "bf16")
PARALLEL = ("ddp", "fsdp")
SYNTHETIC = ("", "shapes")  # data.synthetic: the datasets a run can build itself
CAPTION_PADDING = ("auto", "longest", "max_length")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    root: str = ""  # a feature dataset folder written by `pixart prepare`
    synthetic: str = ""  # "shapes": build a shapes-world feature dataset in the run folder (when root is unset)
    synthetic_count: int = 2048  # images per canvas size
    synthetic_sizes: tuple[str, ...] = ("32x32",)  # canvas sizes "HxW"; several give multi-aspect buckets
    synthetic_seed: int = 0
    caption_probs: dict[str, float] = field(default_factory=lambda: {"dense": 1.0})  # caption field draws
    batch_size: int = 32  # per rank and micro-step
    num_workers: int = 2
    # Seconds a loader worker may take for a batch before the run stops with an error (0: wait for ever): a read
    # stuck on a network file system hung training for good, its worker deaf to SIGTERM.
    loader_timeout: float = 600.0
    caption_dropout: float = 0.1  # share of captions replaced by the null caption (keeping their mask)
    class_dropout: float = 0.1  # stage 1: share of labels replaced by the null class
    # Caption tokens a batch reaches the model with: "longest" (the batch's longest caption), "max_length"
    # (model.max_length: one shape for every batch, so a compiled model and cuDNN's attention plans are
    # built once, not again for each new longest caption), "auto" (max_length on a GPU, longest elsewhere,
    # where the model packs the valid tokens anyway). Masked padding changes no result.
    caption_padding: str = "auto"

    def __post_init__(self) -> None:
        if self.caption_padding not in CAPTION_PADDING:
            choices = ", ".join(CAPTION_PADDING)
            raise ValueError(f"caption_padding must be one of {choices}; got {self.caption_padding!r}")
        if self.synthetic not in SYNTHETIC:
            raise ValueError(f"synthetic must be 'shapes', or '' to train on data.root; got {self.synthetic!r}")
        for name in ("caption_dropout", "class_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if self.batch_size < 1 or self.synthetic_count < 1:
            raise ValueError("batch_size and synthetic_count must be at least 1")
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0 (0: load in the training process)")
        if not (math.isfinite(self.loader_timeout) and self.loader_timeout >= 0):
            raise ValueError(
                f"loader_timeout must be a number of seconds >= 0 (0: no limit), got {self.loader_timeout}"
            )
        if not 0 <= self.synthetic_seed < 2**64:
            raise ValueError(f"synthetic_seed must lie in [0, 2**64 - 1], got {self.synthetic_seed}")
        if self.synthetic and not self.root and self.synthetic_count < self.batch_size:  # a size: one bucket
            raise ValueError(
                f"synthetic_count={self.synthetic_count} images per canvas size are fewer than one batch "
                f"(batch_size={self.batch_size}): raise synthetic_count or lower batch_size"
            )
        probs = list(self.caption_probs.values())
        if not probs or not all(math.isfinite(p) and p >= 0 for p in probs) or sum(probs) <= 0:
            raise ValueError(
                f"caption_probs must give each caption field a weight >= 0, not all 0 (e.g. {{'dense': 1.0}}), "
                f"got {self.caption_probs}"
            )
        if self.synthetic and not self.synthetic_sizes:  # found now, not as a traceback once the run folder is made
            raise ValueError("synthetic_sizes must name at least one canvas size, e.g. ['32x32']")
        keys: dict[str, str] = {}
        for size in self.synthetic_sizes:
            try:
                key = bucket_key(*parse_size(size))
            except ValueError as error:
                raise ValueError(f"synthetic_sizes: {error}") from None
            if key in keys:  # one bucket holds one canvas size: the batches would not stack
                raise ValueError(
                    f"synthetic_sizes: {keys[key]} and {size} have the same aspect ratio ({key}); keep one of them"
                )
            keys[key] = size


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with the official hyper-parameters (spec 6.2)."""

    lr: float = 2e-5  # base learning rate, before auto scaling
    auto_lr: bool = True  # lr * sqrt(global batch / 256), on by default officially
    weight_decay: float = 0.03  # on every parameter, as officially
    eps: float = 1e-10
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 1000  # linear warm-up, then constant
    grad_clip: float = 0.01
    grad_accum: int = 1
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay min(ema_decay, (1 + step) / (10 + step)): for short runs (officially off)

    def __post_init__(self) -> None:
        if self.grad_accum < 1 or self.warmup_steps < 0:
            raise ValueError("grad_accum must be at least 1 and warmup_steps >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("ema_decay must lie in [0, 1)")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):  # 0: a run that never learns
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not self.eps > 0 or not self.grad_clip > 0:  # grad_clip 0 would zero every gradient; inf: no clipping
            raise ValueError(f"eps and grad_clip must be > 0, got {self.eps} and {self.grad_clip}")
        if not math.isfinite(self.eps):  # AdamW's update would be 0: a run that never learns
            raise ValueError(f"eps must be finite, got {self.eps}")


def effective_lr(optim: OptimConfig, global_batch: int) -> float:
    """The learning rate a run trains at: lr * sqrt(global batch / 256) with auto_lr (officially on), else lr."""
    return optim.lr * (math.sqrt(global_batch / 256) if optim.auto_lr else 1.0)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    recipe: str = "custom"
    stage: str = "t2i"  # "class": the stage-1 class-conditional DiT; "t2i": PixArt on captions
    model: PixArtConfig = field(default_factory=PixArtConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)  # used by stage "class" only
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000  # optimizer steps
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    previews: bool = True  # sample grids at the end (and every sample_every steps)
    sample_every: int = 0  # preview grids of sample_prompts (0: only at the end)
    sample_prompts: tuple[str, ...] = ()
    sample_steps: int = 20
    sample_cfg: float = 4.5
    seed: int = 0
    precision: str = "auto"  # auto: bf16 autocast with fp32 master weights on CUDA, fp32 on CPU; bf16 on both
    gradient_checkpointing: bool = False
    parallel: str = "ddp"  # "ddp", or "fsdp" (FSDP2 fully_shard per block) for memory
    compile: bool = False  # torch.compile each transformer block (pixart.model.regional)
    init_from: str = ""  # weights or a finished run folder to start from (DiT checkpoints are re-parameterised)
    init_new_keys: tuple[str, ...] = ()  # key prefixes allowed to be missing from init_from (new modules)
    max_nonfinite_steps: int = 5  # stop after this many non-finite steps in a row
    # Under torchrun: minutes a process waits for the others in a collective (a stuck one) before the job stops
    collective_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        if not 0 <= self.seed < 2**64:  # no generator takes a negative seed; torch's hold 64 bits
            raise ValueError(f"seed must lie in [0, 2**64 - 1], got {self.seed}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel must be one of {PARALLEL}")
        if self.steps < 0 or self.checkpoint_every < 1 or self.keep_checkpoints < 1 or self.log_every < 1:
            raise ValueError("steps must be >= 0; checkpoint_every, keep_checkpoints and log_every >= 1")
        if self.sample_every < 0 or self.sample_steps < 1 or self.max_nonfinite_steps < 1:
            raise ValueError("sample_every must be >= 0 (0: only at the end); sample_steps, max_nonfinite_steps >= 1")
        if not (math.isfinite(self.collective_timeout) and self.collective_timeout > 0):
            raise ValueError(f"collective_timeout must be a positive number of minutes, got {self.collective_timeout}")
        if not (math.isfinite(self.sample_cfg) and self.sample_cfg >= 0):
            raise ValueError(f"sample_cfg must be a finite number >= 0, got {self.sample_cfg}")
        if any(not prefix.strip() for prefix in self.init_new_keys):  # "" starts every key: nothing would be checked
            raise ValueError(
                f"init_new_keys: {list(self.init_new_keys)} holds an empty prefix, which would let init_from miss "
                "every weight; name the new modules' key prefixes, e.g. ['csize_embedder.', 'ar_embedder.']"
            )
        model_key = "dit" if self.stage == "class" else "model"  # the model each stage trains
        if self.diffusion.objective == "iddpm" and not getattr(self, model_key).learn_sigma:
            raise ValueError(
                f"the iddpm objective needs {model_key}.learn_sigma=True (or use diffusion.objective=flow)"
            )
        if self.data.synthetic == "shapes" and not self.data.root:
            self._check_shapes_data()

    def _check_shapes_data(self) -> None:
        """What the synthetic shapes data must be for this model, known before it is built."""
        from pixart.data.shapes_features import FIELDS
        from pixart.encoders.codecs import PixelCodec
        from pixart.encoders.text import check_max_length, minilm_folder

        key, model = ("dit", self.dit) if self.stage == "class" else ("model", self.model)
        if model.in_channels != PixelCodec.latent_channels:  # found once the data was built, with another key named
            raise ValueError(
                f"the shapes data is RGB pixels ({PixelCodec.latent_channels} channels): set "
                f"{key}.in_channels={PixelCodec.latent_channels}, not {model.in_channels}"
            )
        patch = model.patch_size
        for size in self.data.synthetic_sizes:
            height, width = parse_size(size)
            if height % patch or width % patch:  # the shapes data is in pixels: one latent cell a pixel
                fit = f"{-(-height // patch) * patch}x{-(-width // patch) * patch}"
                raise ValueError(
                    f"data.synthetic_sizes: {size} is not a multiple of the patch size {patch} on each side; "
                    f"use {fit}, say"
                )
        if self.stage == "t2i":  # its captions are MiniLM's (512 positions): else a crash while building it
            check_max_length(minilm_folder(), self.model.max_length, kind="shapes data's MiniLM")
        unknown = sorted(set(self.data.caption_probs) - set(FIELDS))
        if unknown:
            raise ValueError(
                f"data.caption_probs: the shapes data has the caption fields {list(FIELDS)}, not {unknown}"
            )

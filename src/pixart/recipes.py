"""Named training configs as Python functions (torchtitan-style registry: a plain dict of functions).

The text-to-image stages use the official hyper-parameters (spec 6.2-6.3): AdamW, base lr 2e-5 scaled by
sqrt(global batch / 256), weight decay 0.03, eps 1e-10, 1000 warm-up steps, grad clip 0.01, EMA 0.9999,
bf16 autocast on GPU, gradient checkpointing. Stage 1 is the paper's released DiT checkpoint, so when it
is trained here it takes DiT's own recipe (DIT_OPTIM). Each stage names the checkpoint it starts from
and the exact keys allowed to be new.
"""

from __future__ import annotations

import dataclasses
import math

from pixart.diffusion.objective import DiffusionConfig
from pixart.model.dit import DiTConfig
from pixart.model.pixart import XL_2, XL_2_256, XL_2_1024_MS, PixArtConfig
from pixart.train.config import DataConfig, OptimConfig, TrainConfig

PAPER_OPTIM = OptimConfig()  # the defaults are the official values
# DiT's train.py, which made the checkpoint the paper's stage 1 is: AdamW at a constant 1e-4 (no warm-up,
# no scaling), no weight decay, PyTorch's default eps, no gradient clipping, EMA 0.9999, global batch 256
DIT_OPTIM = OptimConfig(lr=1e-4, auto_lr=False, weight_decay=0.0, eps=1e-8, warmup_steps=0, grad_clip=math.inf)


def tiny() -> TrainConfig:
    """A CPU smoke run of a few seconds a step that brings its own data: the shapes world, MiniLM, pixels."""
    return TrainConfig(
        recipe="tiny",
        model=PixArtConfig(
            input_size=32,
            patch_size=4,
            in_channels=3,
            hidden_size=96,
            depth=2,
            num_heads=3,
            caption_channels=384,
            max_length=48,
            caption_norm=True,
        ),
        data=DataConfig(synthetic="shapes", synthetic_count=256, batch_size=16, num_workers=0),
        optim=dataclasses.replace(PAPER_OPTIM, lr=1e-3, auto_lr=False, warmup_steps=5, grad_clip=1.0, ema_decay=0.9),
        steps=30,
        checkpoint_every=10,
        log_every=5,
        sample_steps=10,
        sample_cfg=3.0,
    )


def stage1_class_256() -> TrainConfig:
    """Stage 1, pixel-dependency pretraining: a class-conditional DiT-XL/2 on class labels at 256 px.

    For domains or sizes with no DiT checkpoint. With one (DiT-XL-2-256x256.pt), skip this stage: stage 2
    re-parameterises the checkpoint directly (init_from=DiT-XL-2-256x256.pt). 400k steps is the DiT paper's
    ablation length (its FID tables); the released DiT-XL/2 the paper started from trained 7M: raise --steps
    for a checkpoint of that quality.
    """
    return TrainConfig(
        recipe="stage1-class-256",
        stage="class",
        dit=DiTConfig(),
        data=DataConfig(batch_size=32, class_dropout=0.1),  # per process: DiT's 256 on 8 GPUs
        optim=DIT_OPTIM,
        steps=400_000,
        checkpoint_every=2_000,
    )


def stage2_t2i_256() -> TrainConfig:
    """Stage 2, text-image alignment at 256 px on dense (LLaVA) captions, from stage 1 by re-parameterisation."""
    return TrainConfig(
        recipe="stage2-t2i-256",
        model=XL_2_256,
        data=DataConfig(batch_size=176, caption_probs={"dense": 1.0}, caption_dropout=0.1),
        optim=PAPER_OPTIM,
        steps=200_000,
        checkpoint_every=2_000,
        gradient_checkpointing=True,
        init_from="runs/stage1-class-256",  # a DiT run or checkpoint: re-parameterised (no new keys to allow)
    )


def stage3_aesthetic_512() -> TrainConfig:
    """Stage 3a, high-aesthetic fine-tuning at 512 px with multi-aspect buckets (plain PixArt, as released)."""
    return TrainConfig(
        recipe="stage3-aesthetic-512",
        model=XL_2,
        data=DataConfig(batch_size=40, caption_probs={"dense": 1.0}),
        optim=PAPER_OPTIM,
        steps=100_000,
        checkpoint_every=1_000,
        gradient_checkpointing=True,
        init_from="runs/stage2-t2i-256",  # same architecture; the position embedding is recomputed per grid
    )


def stage3_aesthetic_1024() -> TrainConfig:
    """Stage 3b, 1024 px multi-aspect with micro-conditions (original size, bucket ratio): PixArt-XL-2-1024-MS."""
    return TrainConfig(
        recipe="stage3-aesthetic-1024",
        model=XL_2_1024_MS,
        data=DataConfig(batch_size=12, caption_probs={"dense": 1.0}),
        optim=PAPER_OPTIM,
        steps=50_000,
        checkpoint_every=1_000,
        gradient_checkpointing=True,
        init_from="runs/stage3-aesthetic-512",
        init_new_keys=("csize_embedder.", "ar_embedder."),  # the micro-condition embedders are new
    )


RECIPES = {
    "tiny": tiny,
    "stage1-class-256": stage1_class_256,
    "stage2-t2i-256": stage2_t2i_256,
    "stage3-aesthetic-512": stage3_aesthetic_512,
    "stage3-aesthetic-1024": stage3_aesthetic_1024,
}


def get_recipe(name: str) -> TrainConfig:
    """A fresh TrainConfig of the recipe `name` (the names are RECIPES' keys: tiny, the three stages...);
    change it with pixart.config.apply_overrides, as `pixart train --set` does."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return RECIPES[name]()


__all__ = ["RECIPES", "DiffusionConfig", "get_recipe"]

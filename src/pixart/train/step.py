"""What one optimisation step is made of: a micro-batch's loss with its random draws, AdamW, the EMA, MFU.

`pixart.train.loop.train` strings these together; the benchmarks time the same pieces (bench_cpu.py
builds its optimiser with build_optimizer, profile_gpu.py updates an EMA with update_ema).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pixart.diffusion.objective import draw_timesteps, training_loss
from pixart.model.dit import DiT
from pixart.model.layers import mlp_width
from pixart.model.pixart import PixArt
from pixart.train.config import OptimConfig, TrainConfig
from pixart.train.distributed import World
from pixart.train.metrics import forward_flops

if TYPE_CHECKING:
    from pixart.train.data import LatentScaling


def step_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """The generator of every random draw of micro-batch `micro` of step `step`: resumes draw the same."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step * 1_009 + micro) % (2**63))


def build_optimizer(params: Iterable[torch.nn.Parameter], optim: OptimConfig, lr: float) -> torch.optim.AdamW:
    """AdamW as the trainer runs it (benchmarks/bench_cpu.py times this one).

    Fused on CPUs too, not only on CUDA: one kernel over every tensor. On this project's 2-core CPU a
    step over 12.3M parameters (bench_cpu.py's model) took 11 ms fused against 34-40 ms foreach.
    """
    return torch.optim.AdamW(
        params,
        lr=lr,
        betas=(optim.beta1, optim.beta2),
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        fused=True,
    )


def compute_loss(
    wrapped: torch.nn.Module,
    inner: PixArt | DiT,
    batch: dict[str, torch.Tensor],
    config: TrainConfig,
    scaling: LatentScaling,
    world: World,
    step: int,
    micro: int,
    bf16: bool,
) -> torch.Tensor:
    """One micro-batch's mean loss, with every random draw made for the global batch and sliced."""
    device = world.device
    B = batch["mean"].shape[0]
    lo, hi = world.rank * B, (world.rank + 1) * B
    global_b = B * world.world_size
    g = step_generator(config.seed, step, micro, device)
    # Every copy non-blocking: a blocking one from the loader's pinned memory waits for the device.
    mean, std = batch["mean"].to(device, non_blocking=True), batch["std"].to(device, non_blocking=True)
    shape = (global_b, *mean.shape[1:])
    latent_eps = torch.randn(shape, generator=g, device=device)[lo:hi]
    noise = torch.randn(shape, generator=g, device=device)[lo:hi]
    patch = config.dit.patch_size if isinstance(inner, DiT) else config.model.patch_size
    tokens = (mean.shape[-2] // patch) * (mean.shape[-1] // patch)
    t = draw_timesteps(config.diffusion, global_b, g, device, num_tokens=tokens)[lo:hi]
    dropped = (torch.rand(global_b, generator=g, device=device) < _dropout(config))[lo:hi]
    x0 = scaling.to_model_space(mean, std, latent_eps)
    if isinstance(inner, DiT):
        labels = torch.where(dropped, inner.config.null_class, batch["label"].to(device, non_blocking=True))
        cond = {"labels": labels}
    else:
        y, mask = batch["text"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
        if pads_captions(config.data.caption_padding, device):
            y, mask = pad_captions(y, mask, inner.config.max_length)
        null = inner.y_embedder.y_embedding[: y.shape[1]].to(y.dtype)  # (L, C): keeps the sample's own mask
        y = torch.where(dropped[:, None, None], null[None], y)
        cond = {
            "y": y,
            "mask": mask,
            "img_hw": batch["img_hw"].to(device, non_blocking=True),
            "aspect_ratio": batch["aspect_ratio"].to(device, non_blocking=True),
        }
    # bf16 autocast on any device: on a CPU with AMX (Xeon 4th gen on) its products run about 4x faster
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with autocast:
        losses = training_loss(wrapped, x0, cond, config.diffusion, t=t, noise=noise, patch_size=patch)
    return losses["loss"].mean()


def pads_captions(caption_padding: str, device: torch.device) -> bool:
    """Whether batches reach the model padded to model.max_length (data.caption_padding)."""
    return caption_padding == "max_length" or (caption_padding == "auto" and device.type == "cuda")


def pad_captions(y: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, C) caption features and their (B, L) mask, padded with masked zero tokens to `length`.

    A batch holds its longest caption's tokens, so a run sees dozens of lengths: the second recompiles
    the compiled blocks into graphs dynamic in L, and on a GPU each new one asks cuDNN for new attention
    plans, forward and backward. Padded to one length there is one of each; the padded keys are masked.
    """
    extra = length - y.shape[1]
    if extra <= 0:
        return y, mask
    return F.pad(y, (0, 0, 0, extra)), F.pad(mask, (0, extra))  # (B, length, C), (B, length)


def _dropout(config: TrainConfig) -> float:
    return config.data.class_dropout if config.stage == "class" else config.data.caption_dropout


def ema_decay(optim: OptimConfig, index: int) -> float:
    """The EMA decay after step `index` (from 0); with ema_warmup, early weights do not linger in short runs."""
    if optim.ema_warmup:
        return min(optim.ema_decay, (1 + index) / (10 + index))
    return optim.ema_decay


def ema_start_share(optim: OptimConfig, steps: int) -> float:
    """How much of the starting weights the EMA still holds after `steps` updates: the product of the decays."""
    share = 1.0
    for index in range(steps):
        share *= ema_decay(optim, index)
        if share < 1e-6:  # nothing left to say; long runs stop early
            break
    return share


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """ema <- ema + (1 - decay) (weights - ema), one fused kernel over every tensor.

    `decay` is a Python number: a device tensor would make `_foreach_lerp_` read it back to the host.
    """
    names = [n for n, _ in model.named_parameters()]
    current = [p.detach().float() for _, p in model.named_parameters()]
    torch._foreach_lerp_([ema[n] for n in names], current, 1.0 - decay)


def mfu(model: PixArt, batch: dict[str, torch.Tensor], samples_per_s_per_device: float, peak: float) -> float:
    """Model FLOPs utilisation as performance.md counts it: the model's caption length (120), not the
    batch's valid tokens, so that the trainer's figure and the benchmarks' are on one basis."""
    cfg = model.config
    tokens = (batch["mean"].shape[-2] // cfg.patch_size) * (batch["mean"].shape[-1] // cfg.patch_size)
    width = mlp_width(cfg.hidden_size, cfg.mlp_ratio)
    flops = 3 * forward_flops(cfg.hidden_size, cfg.depth, tokens, cfg.max_length, cfg.caption_channels, width)
    return flops * samples_per_s_per_device / peak

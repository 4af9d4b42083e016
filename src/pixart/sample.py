"""The sampling loop: a guided denoiser driven through a diffusers scheduler, noise to latents.

The loop mirrors diffusers' PixArtAlphaPipeline step for step (scale_model_input, one batched guided
forward, scheduler.step with the generator when the scheduler takes one), so the same noise, caption
features and masks give the same latents as the pipeline. One deliberate difference: DPM-Solver on flow
sigmas asks the model at the exact sigma, not diffusers' integer timestep (see model_timesteps).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from pixart.diffusion.guidance import CaptionConditioned, GuidedDenoiser
from pixart.diffusion.objective import shift_at
from pixart.diffusion.schedulers import (
    SAMPLERS,
    build_scheduler,
    check_step_count,
    check_steps,
    default_sampler,
    get_sampler,
    repeats_a_level,
    set_steps,
)


class SamplingStopped(Exception):
    """Raised by sample() when its `stop` asked it to (a Stop button, a closed browser tab)."""


def model_timesteps(scheduler: Any) -> torch.Tensor:
    """The times the model is asked at, one per scheduler timestep.

    The scheduler's own timesteps, except for DPM-Solver on flow sigmas, which rounds them down to
    integers: a flow model trains on t = 1000 s with s in [0, 1], so it is asked at 1000 times the exact
    sigma the solver steps with (flow-euler keeps float timesteps already).
    """
    if getattr(scheduler.config, "use_flow_sigmas", False):
        return scheduler.sigmas[: len(scheduler.timesteps)] * scheduler.config.num_train_timesteps
    return scheduler.timesteps


@torch.no_grad()  # a sampling run never needs gradients: recording them kept every step's activations
def sample(
    model: CaptionConditioned,
    noise: torch.Tensor,
    cond: torch.Tensor,
    cond_mask: torch.Tensor,
    null: torch.Tensor,
    null_mask: torch.Tensor,
    *,
    scheduler: Any = None,  # a sampler name, a diffusers scheduler instance (theirs share no type), or None
    steps: int | None = None,
    cfg_scale: float = 4.5,
    img_hw: torch.Tensor | None = None,
    aspect_ratio: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,  # a list: one per sample
    progress: bool = True,
    flow_shift: float | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Denoise `noise` (B, C, h, w) into latents, guided by caption features `cond` (B, L, C_cap).

    `scheduler` is a sampler name (see pixart.diffusion.schedulers.SAMPLERS) or a diffusers scheduler
    instance (e.g. the one a diffusers pipeline folder ships); by default the model's own: flow-dpm-solver
    for a flow model (model.sampling, which load_transformer reads off the weights), else dpm-solver++; a
    sampler of the other kind than the weights record is refused (weights that record nothing take any).
    `steps` defaults to the sampler's own; `flow_shift` to the model's at this size (1 where none is known).
    `stop`, asked before each step, ends the sampling with SamplingStopped when it answers True.
    """
    channels = getattr(getattr(model, "config", None), "in_channels", None)
    if noise.ndim != 4 or (channels is not None and noise.shape[1] != channels):  # else the model named the
        # guided batch, twice the size given ("x must be (B, 4, H, W), got (4, 3, 32, 32)" for 2 samples)
        raise ValueError(f"noise must be (B, {channels or 'C'}, h, w) latents for this model, got {tuple(noise.shape)}")
    if noise.shape[0] != cond.shape[0]:  # else a reshape deep in the model failed, naming neither
        raise ValueError(f"noise holds {noise.shape[0]} sample(s) but cond {cond.shape[0]} caption(s): one each")
    own = getattr(model, "sampling", None) or {}  # {} for an eps model, or where the weights did not say
    objective = own.get("objective", "iddpm")
    if scheduler is None:
        scheduler = default_sampler(objective)
    if flow_shift is None:  # as trained: grown with the image where the model trained with shift_base_tokens
        patch = getattr(getattr(model, "config", None), "patch_size", 1)
        tokens = (noise.shape[-2] // patch) * (noise.shape[-1] // patch)
        flow_shift = shift_at(float(own.get("flow_shift", 1.0)), int(own.get("shift_base_tokens", 0)), tokens)
    if not math.isfinite(cfg_scale):  # NaN images else
        raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale}")
    if scheduler == "folder":
        raise ValueError("'folder' names a diffusers folder's own scheduler: pass that scheduler instance instead")
    if isinstance(scheduler, str):
        sampler = get_sampler(scheduler)
        if own and sampler.objective != objective:  # else images of noise: the outputs read as the other kind
            fitting = [name for name, other in SAMPLERS.items() if other.objective == objective]
            raise ValueError(
                f"the model was trained with the {objective} objective and {sampler.name} samples "
                f"{sampler.objective} models: choose one of {fitting}, or leave scheduler out for the model's own"
            )
        steps = sampler.default_steps if steps is None else steps  # 0 is refused below, not defaulted
        check_steps(sampler.name, steps)
        keep_variance = sampler.needs_variance
        scheduler = build_scheduler(sampler.name, flow_shift=flow_shift)
        set_steps(scheduler, sampler.name, steps, device=noise.device)
    else:
        steps = 20 if steps is None else steps
        keep_variance = getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")
        check_step_count(steps)
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        scheduler.set_timesteps(steps, device=noise.device)
    if keep_variance and not getattr(getattr(model, "config", None), "learn_sigma", True):
        # else diffusers' DDPM step failed after the first model call ("NoneType + int", in _get_variance)
        raise ValueError(
            "this sampler needs the learned variance the model does not predict (learn_sigma is off): choose "
            "another, e.g. dpm-solver++"
        )
    if hasattr(scheduler, "set_begin_index"):
        # From the first level. Left unset, diffusers finds its place by the first timestep's value and
        # takes the second of two equal ones (its image-to-image rule): flow DPM-Solver's integer
        # timesteps (floor of 1000 sigma) repeat at the top once the shift bunches the sigmas (shift 3 at
        # 501 steps, 12 at 92), so it skipped the first level and indexed past its last (IndexError).
        scheduler.set_begin_index(0)
    denoiser = GuidedDenoiser(
        model,
        cond,
        cond_mask,
        null,
        null_mask,
        cfg_scale,
        img_hw=img_hw,
        aspect_ratio=aspect_ratio,
        keep_variance=keep_variance,
    )
    if repeats_a_level(scheduler):  # a named sampler was refused above; a folder's scheduler is caught here
        raise ValueError(
            f"the scheduler repeats a noise level at {steps} steps (its update would divide by zero); use fewer"
        )
    step_kwargs = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = generator
    latents = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # flow schedulers start at sigma 1
    scale_input = getattr(scheduler, "scale_model_input", lambda x, t: x)
    timesteps = scheduler.timesteps
    model_times = model_timesteps(scheduler).to(noise.device)  # once: diffusers keeps sigmas on the CPU
    for index, (t, model_t) in enumerate(
        tqdm(zip(timesteps, model_times), total=len(timesteps), desc="sampling", disable=not progress, leave=False)
    ):
        if stop is not None and stop():
            raise SamplingStopped(f"stopped before step {index + 1} of {len(timesteps)}")
        model_input = scale_input(latents, t)
        output = denoiser(model_input, model_t)
        latents = scheduler.step(output, t, latents, **step_kwargs, return_dict=False)[0]
    return latents

"""The samplers, by name: diffusers schedulers built with the training schedule.

We write the guidance wrapper and the loop, not solvers (design decision 4). Every eps scheduler gets
the 1000-step linear betas PixArt trained with, whatever the number of sampling steps (a port that
built the betas with the step count broke, city96/ComfyUI_ExtraModels#3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sampler:
    name: str
    default_steps: int
    objective: str  # "iddpm" (eps models) or "flow" (velocity models)
    needs_variance: bool  # passes the learned-range variance channels to the scheduler
    description: str
    # Fewest steps that denoise at all. ddim and iddpm space their timesteps "leading" and euler
    # "linspace" (diffusers' defaults, which parity needs): one step is timestep 0 alone for all three,
    # and they return the noise (ddim, iddpm) or nearly zeros (euler) instead of an image. From 2 steps
    # they start at t >= 500 and end near the data (checked on the Gaussian oracle in test_sample).
    min_steps: int = 1


SAMPLERS = {
    s.name: s
    for s in [
        Sampler("dpm-solver++", 20, "iddpm", False, "DPM-Solver++ multistep, order 2 (PixArt's default)"),
        Sampler("sa-solver", 25, "iddpm", False, "SA-Solver, predictor and corrector order 2, tau 1 in [200, 800]"),
        Sampler("ddim", 50, "iddpm", False, "DDIM, deterministic (eta 0)", min_steps=2),
        Sampler(
            "iddpm", 100, "iddpm", True, "ancestral DDPM with the learned-range variance (official IDDPM)", min_steps=2
        ),
        Sampler("euler", 30, "iddpm", False, "Euler on the Karras sigma ODE of the eps model", min_steps=2),
        Sampler("flow-euler", 30, "flow", False, "Euler on the rectified-flow ODE (flow models)"),
        Sampler("flow-dpm-solver", 20, "flow", False, "DPM-Solver++ order 2 on flow sigmas (flow models)"),
    ]
}


def default_sampler(objective: str) -> str:
    """The sampler of a model trained with `objective` when none is named (previews, the demo's models)."""
    return "flow-dpm-solver" if objective == "flow" else "dpm-solver++"


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def check_steps(name: str, steps: int) -> None:
    """Refuse a step count the sampler cannot denoise with (see Sampler.min_steps)."""
    sampler = get_sampler(name)
    if steps < sampler.min_steps:
        one_step = [n for n, s in SAMPLERS.items() if s.objective == sampler.objective and s.min_steps == 1]
        raise ValueError(
            f"sampler {name!r} needs at least {sampler.min_steps} steps, got {steps} (with fewer it does not "
            f"denoise); use more steps, or a sampler that works in 1 step: {', '.join(one_step)}"
        )
    scheduler = build_scheduler(name)
    scheduler.set_timesteps(steps)
    if repeats_a_level(scheduler):
        fewer = next(n for n in range(steps - 1, 0, -1) if not repeats_a_level(_with_steps(scheduler, n)))
        raise ValueError(
            f"sampler {name!r} cannot take {steps} steps: its schedule then repeats a noise level, and its "
            f"update divides by the step between the two (NaN images); use at most {fewer}"
        )


# Multistep solvers divide by the gap between consecutive noise levels, so a repeated level gives NaN.
# Heun and KDPM2 repeat levels by design, and PNDM repeats timesteps in its warm-up: they sample fine.
GAP_DIVIDING = ("DPMSolverMultistepScheduler", "SASolverScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler")


def repeats_a_level(scheduler: Any) -> bool:
    """Whether a scheduler set for sampling is a multistep solver that repeats a noise level: with 1000
    training steps, diffusers' linspace spacing repeats t=500 at 1000 sampling steps."""
    if type(scheduler).__name__ not in GAP_DIVIDING:
        return False
    sigmas = getattr(scheduler, "sigmas", None)
    levels = sigmas[:-1] if sigmas is not None else scheduler.timesteps  # sigmas end with the final 0
    return len(set(levels.tolist())) < len(levels)


def _with_steps(scheduler: Any, steps: int) -> Any:
    scheduler.set_timesteps(steps)
    return scheduler


def training_schedule(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> dict:
    return dict(
        num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end, beta_schedule="linear"
    )


def build_scheduler(name: str, *, flow_shift: float = 1.0, **schedule: Any) -> Any:  # a diffusers scheduler
    """A fresh diffusers scheduler for sampler `name` (diffusers is imported here, lazily)."""
    import diffusers

    sampler = get_sampler(name)
    betas = training_schedule(**schedule)
    if name == "dpm-solver++":
        return diffusers.DPMSolverMultistepScheduler(
            **betas, algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon"
        )
    if name == "sa-solver":
        return diffusers.SASolverScheduler(
            **betas, predictor_order=2, corrector_order=2, algorithm_type="data_prediction", prediction_type="epsilon"
        )
    if name == "ddim":
        return diffusers.DDIMScheduler(**betas, clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon")
    if name == "iddpm":
        return diffusers.DDPMScheduler(
            **betas, variance_type="learned_range", clip_sample=False, prediction_type="epsilon"
        )
    if name == "euler":
        return diffusers.EulerDiscreteScheduler(**betas, prediction_type="epsilon")
    if name == "flow-euler":
        return diffusers.FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=betas["num_train_timesteps"], shift=flow_shift
        )
    if name == "flow-dpm-solver":
        return diffusers.DPMSolverMultistepScheduler(
            **betas,
            algorithm_type="dpmsolver++",
            solver_order=2,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=flow_shift,
        )
    raise AssertionError(f"sampler {sampler.name} has no builder")  # every SAMPLERS entry is handled above

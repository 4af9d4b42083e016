"""The samplers, by name: diffusers schedulers built with the training schedule.

We write the guidance wrapper and the loop, not solvers (design decision 4). Every eps scheduler gets
the 1000-step linear betas PixArt trained with, whatever the number of sampling steps (a port that
built the betas with the step count broke, city96/ComfyUI_ExtraModels#3).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

TRAIN_STEPS = 1000  # the training schedule's length, which every named sampler is built with


@dataclass(frozen=True)
class Sampler:
    name: str
    default_steps: int
    objective: str  # "iddpm" (eps models) or "flow" (velocity models)
    needs_variance: bool  # passes the learned-range variance channels to the scheduler
    description: str
    # Fewest steps that denoise. euler spaces its timesteps "linspace" (diffusers' default, which parity
    # needs) and iddpm as the official IDDPM (evenly strided from 0 to 999): one step is timestep 0 alone
    # for both, and they return nearly zeros (euler) or the noise (iddpm) instead of an image; from 2
    # steps they start at t=999 and end near the data (checked on the Gaussian oracle in test_sample).
    # ddim spaces them "leading", by 1000 // steps from 0: below 10 steps it starts more than a tenth of
    # the schedule below t=999 (5 steps at t=800), reading pure noise as a partly noised image (starts_low).
    min_steps: int = 1


SAMPLERS = {
    s.name: s
    for s in [
        Sampler("dpm-solver++", 20, "iddpm", False, "DPM-Solver++ multistep, order 2 (PixArt's default)"),
        Sampler("sa-solver", 25, "iddpm", False, "SA-Solver, predictor and corrector order 2, tau 1 in [200, 800]"),
        Sampler("ddim", 50, "iddpm", False, "DDIM, deterministic (eta 0)", min_steps=10),
        Sampler(
            "iddpm",
            100,
            "iddpm",
            True,
            "ancestral DDPM with the learned-range variance (official IDDPM; guidance on all 4 channels)",
            min_steps=2,
        ),
        Sampler("euler", 30, "iddpm", False, "Euler on the sigma ODE of the eps model (linspace sigmas)", min_steps=2),
        Sampler("flow-euler", 30, "flow", False, "Euler on the rectified-flow ODE (flow models)"),
        Sampler("flow-dpm-solver", 20, "flow", False, "DPM-Solver++ order 2 on flow sigmas (flow models)"),
    ]
}


def default_sampler(objective: str) -> str:
    """The sampler of a model trained with `objective` when none is named (previews, the demo's models)."""
    return "flow-dpm-solver" if objective == "flow" else "dpm-solver++"


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(
            f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)} (or folder: a diffusers pipeline "
            "folder's own scheduler)"
        )
    return SAMPLERS[name]


def check_step_count(steps: object) -> None:
    """A step count is a whole number: 2.5 (or True) reached diffusers and failed there as a TypeError."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise ValueError(f"steps must be a whole number, got {steps!r}")


def check_steps(name: str, steps: int) -> None:
    """Refuse a step count the sampler cannot denoise with (see Sampler.min_steps)."""
    sampler = get_sampler(name)
    check_step_count(steps)
    if steps < sampler.min_steps:
        # by objective: this check runs before the model is known, and a sampler of the other kind is refused
        one_step = {
            kind: ", ".join(n for n, s in SAMPLERS.items() if s.objective == objective and s.min_steps == 1)
            for kind, objective in (("eps (iddpm) models", "iddpm"), ("flow models", "flow"))
        }
        raise ValueError(
            f"sampler {name!r} needs at least {sampler.min_steps} steps, got {steps} (with fewer it does not "
            "denoise); use more steps, or a sampler that works in 1 step: "
            + "; ".join(f"for {kind}, {names}" for kind, names in one_step.items())
        )
    if steps > TRAIN_STEPS:  # more sampling steps than the schedule has timesteps
        raise ValueError(f"sampler {name!r} takes at most {TRAIN_STEPS} steps, got {steps}")
    scheduler = build_scheduler(name)
    set_steps(scheduler, name, steps)
    if repeats_a_level(scheduler):
        fewer = next(n for n in range(steps - 1, 0, -1) if not repeats_a_level(_with_steps(scheduler, name, n)))
        raise ValueError(
            f"sampler {name!r} cannot take {steps} steps: its schedule then repeats a noise level, and its "
            f"update divides by the step between the two (NaN images); use at most {fewer}"
        )
    if name == "ddim" and starts_low(steps):
        below = next(n for n in range(steps - 1, 0, -1) if not starts_low(n))  # min_steps (10) starts high
        above = next((n for n in range(steps + 1, TRAIN_STEPS + 1) if not starts_low(n)), None)
        choices = f"{below} or {above}" if above is not None else str(below)
        raise ValueError(
            f"sampler 'ddim' cannot take {steps} steps: diffusers' leading spacing (a stride of "
            f"{TRAIN_STEPS // steps}) would start at t={leading_start(steps)} instead of near {TRAIN_STEPS - 1}, "
            f"treating pure noise as a partly noised image; use {choices} steps, or the iddpm sampler, "
            "which starts at every step count from t=999"
        )


def leading_start(steps: int, total: int = TRAIN_STEPS) -> int:
    """The first timestep of diffusers' "leading" spacing: multiples of total // steps from 0 up."""
    return (total // steps) * (steps - 1)


def starts_low(steps: int, total: int = TRAIN_STEPS) -> bool:
    """Whether leading spacing starts lower than a tenth of the schedule below its top, beyond one stride
    (counts that divide `total` start a stride below it: 50 steps at t=980), or has a stride of more than a
    tenth itself. The remainder can reach half the schedule (251 steps start at t=750, 501 at t=500), and
    fewer than 10 steps start lower than t=900 by their stride alone (5 steps at t=800)."""
    return total % steps > total // 10 or total // steps > total // 10


def evenly_strided(total: int, count: int) -> list[int]:
    """The official IDDPM's respacing, space_timesteps(total, str(count)): `count` timesteps from 0 to
    total - 1 at a fractional stride, each rounded (one step is timestep 0 alone); ascending."""
    stride = (total - 1) / (count - 1) if count > 1 else 1.0
    taken, position = [], 0.0
    for _ in range(count):
        taken.append(round(position))
        position += stride  # accumulated, not multiplied, as the official loop does: the same roundings
    return taken


def set_steps(scheduler: Any, name: str, steps: int, device: Any = None) -> None:
    """Set named sampler `name`'s scheduler for `steps` sampling steps. iddpm takes the official IDDPM's
    timesteps (from t=999 at every count; diffusers' leading spacing starts at 990 for 100 steps and at
    750 for 251); the others keep diffusers' spacing, which their parity tests pin."""
    if name == "iddpm":
        timesteps = evenly_strided(scheduler.config.num_train_timesteps, steps)[::-1]  # descending, as diffusers asks
        scheduler.set_timesteps(timesteps=timesteps, device=device)
    else:
        scheduler.set_timesteps(steps, device=device)


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


def starts_below_the_top(scheduler: Any, steps: int) -> bool:
    """Whether a scheduler set for `steps` steps (a diffusers folder's own) starts lower than a tenth of its
    schedule below the top beyond one stride, the rule starts_low applies to the named ddim: leading spacing
    at 251 steps starts at t=750, leaving a quarter of the noise in the image."""
    total = getattr(scheduler.config, "num_train_timesteps", TRAIN_STEPS)
    return total - float(scheduler.timesteps.max()) > total // 10 + total / steps


def most_steps_starting_at_the_top(scheduler: Any, steps: int) -> int:
    """The most sampling steps below `steps` at which `scheduler` does not start below the top (1 at worst):
    what to suggest to a folder's scheduler refused by starts_below_the_top. It is left set to that count."""
    for fewer in range(steps - 1, 1, -1):
        scheduler.set_timesteps(fewer)
        if not starts_below_the_top(scheduler, fewer):
            return fewer
    return 1


def _with_steps(scheduler: Any, name: str, steps: int) -> Any:
    set_steps(scheduler, name, steps)
    return scheduler


def training_schedule(num_train_timesteps: int = TRAIN_STEPS, beta_start: float = 1e-4, beta_end: float = 0.02) -> dict:
    return dict(
        num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end, beta_schedule="linear"
    )


def build_scheduler(name: str, *, flow_shift: float = 1.0, **schedule: Any) -> Any:  # a diffusers scheduler
    """A fresh diffusers scheduler for sampler `name` (diffusers is imported here, lazily)."""
    import diffusers

    sampler = get_sampler(name)
    if sampler.objective == "flow" and not (math.isfinite(flow_shift) and flow_shift > 0):  # NaN images else
        raise ValueError(f"flow_shift must be a positive number (1 shifts nothing), got {flow_shift}")
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
        # set_alpha_to_one: the last step returns the predicted x0, as the official ddim_sample_loop
        # (alphas_cumprod_prev[0] = 1) and diffusers' default do; False left 0.01 eps in the image.
        return diffusers.DDIMScheduler(**betas, clip_sample=False, set_alpha_to_one=True, prediction_type="epsilon")
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

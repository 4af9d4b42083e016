"""Training objectives: PixArt's IDDPM hybrid loss, and rectified flow (beyond the paper).

`training_loss` draws timesteps and noise and returns per-sample losses, so callers can weight,
mask or average them (and skip non-finite steps) as they like.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pixart.diffusion.schedule import NoiseSchedule

OBJECTIVES = ("iddpm", "flow")


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """How noise is added and what the model learns to predict."""

    objective: str = "iddpm"  # "iddpm": eps MSE + VLB on the learned variance (paper); "flow": velocity
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # Fraction of each batch whose timesteps are drawn from the high-noise end [high_noise_start, 1) of
    # the range, where layout is decided; 0 is the paper's uniform sampling.
    high_noise_fraction: float = 0.0
    high_noise_start: float = 0.6
    # Rectified flow: noise level s = sigmoid(N(mean, std)) (SD3's logit-normal), then the time shift
    # s' = shift * s / (1 + (shift - 1) * s); with shift_base_tokens > 0 the shift grows as
    # flow_shift * sqrt(tokens / shift_base_tokens) (resolution-dependent, SD3 section 5.3.2).
    logit_mean: float = 0.0
    logit_std: float = 1.0
    flow_shift: float = 1.0
    shift_base_tokens: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0.0 <= self.high_noise_fraction <= 1.0:
            raise ValueError(f"high_noise_fraction must lie in [0, 1], got {self.high_noise_fraction}")
        # Outside these the draws leave the schedule (negative timesteps, or all at 0) and train silently.
        if not 0.0 <= self.high_noise_start < 1.0:
            raise ValueError(f"high_noise_start must lie in [0, 1), got {self.high_noise_start}")
        if not (math.isfinite(self.flow_shift) and self.flow_shift > 0):
            raise ValueError(f"flow_shift must be a positive number (1 shifts nothing), got {self.flow_shift}")
        if not (math.isfinite(self.logit_mean) and math.isfinite(self.logit_std) and self.logit_std >= 0):
            raise ValueError(
                f"logit_mean must be finite and logit_std finite and 0 or more, got {self.logit_mean}, {self.logit_std}"
            )
        if self.shift_base_tokens < 0:
            raise ValueError(f"shift_base_tokens must be 0 (a fixed shift) or more, got {self.shift_base_tokens}")
        # Every sampler (ours, diffusers', the official code's) denoises on this schedule, and the released
        # weights were trained on it: a model trained on another could be trained but not sampled.
        if (self.num_timesteps, self.beta_start, self.beta_end) != (1000, 1e-4, 0.02):
            raise ValueError(
                "num_timesteps, beta_start and beta_end must stay 1000, 1e-4 and 0.02 (the official linear "
                f"schedule that every sampler uses), got {self.num_timesteps}, {self.beta_start}, {self.beta_end}"
            )

    def schedule(self) -> NoiseSchedule:
        return _schedule(self.num_timesteps, self.beta_start, self.beta_end)


@functools.lru_cache(maxsize=8)
def _schedule(num_timesteps: int, beta_start: float, beta_end: float) -> NoiseSchedule:
    return NoiseSchedule(num_timesteps, beta_start, beta_end)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation the official code uses (Page 1977), kept for identical losses.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) of data in [-1, 1] quantised to 256 bins under N(means, e^(2 log_scales)), elementwise."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vlb_terms(
    schedule: NoiseSchedule, model_output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """(B,) VLB term in bits per dimension: KL(q posterior || p) for t > 0, decoder NLL at t = 0."""
    true_mean, true_log_var = schedule.posterior(x0, xt, t)
    mean, log_var = schedule.p_mean_log_variance(model_output, xt, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
    decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)) / math.log(2.0)
    return torch.where(t == 0, decoder_nll, kl)


def sample_unit_times(
    config: DiffusionConfig, batch: int, device: torch.device | str | None, generator: torch.Generator | None
) -> torch.Tensor:
    """(B,) times in [0, 1): uniform (iddpm) or logit-normal (flow), with the optional high-noise share."""
    if config.objective == "flow":
        u = torch.randn(batch, generator=generator, device=device) * config.logit_std + config.logit_mean
        times = torch.sigmoid(u)
    else:
        times = torch.rand(batch, generator=generator, device=device)
    if config.high_noise_fraction > 0:
        high = torch.rand(batch, generator=generator, device=device) < config.high_noise_fraction
        start = config.high_noise_start
        high_times = start + (1.0 - start) * torch.rand(batch, generator=generator, device=device)
        times = torch.where(high, high_times, times)
    return times


def time_shift(s: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's shift of flow noise levels towards noise: s' = shift * s / (1 + (shift - 1) * s)."""
    return shift * s / (1 + (shift - 1) * s)


def flow_shift_for(config: DiffusionConfig, num_tokens: int) -> float:
    return shift_at(config.flow_shift, config.shift_base_tokens, num_tokens)


def shift_at(flow_shift: float, shift_base_tokens: int, num_tokens: int) -> float:
    """The flow shift at `num_tokens` tokens: grown by sqrt(tokens / base) when a base is set (> 0)."""
    if shift_base_tokens > 0:
        return flow_shift * math.sqrt(num_tokens / shift_base_tokens)
    return flow_shift


def draw_timesteps(
    config: DiffusionConfig,
    batch: int,
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
    *,
    num_tokens: int = 256,
) -> torch.Tensor:
    """(B,) model timesteps: ints in [0, T) for iddpm; for flow, floats T * s with s the (shifted) noise level."""
    times = sample_unit_times(config, batch, device, generator)
    if config.objective == "flow":
        return time_shift(times, flow_shift_for(config, num_tokens)) * config.num_timesteps
    return (times * config.num_timesteps).long().clamp(max=config.num_timesteps - 1)


Model = Callable[..., torch.Tensor]


def training_loss(
    model: Model,
    x0: torch.Tensor,
    cond: dict,
    config: DiffusionConfig,
    *,
    schedule: NoiseSchedule | None = None,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    patch_size: int = 2,
) -> dict[str, torch.Tensor]:
    """Per-sample losses {"loss", "mse", "vb"} (each (B,)); `cond` is passed to model(x_t, t, **cond).

    iddpm: t ~ U{0..T-1}; loss = ||eps - eps_hat||^2 + VLB, the VLB computed on a detached eps_hat so it
    trains only the variance channels (IDDPM section 3.1). flow: x_s = (1 - s) x0 + s eps, target
    v = eps - x0, the model sees t = 1000 s.
    """
    B = x0.shape[0]
    device = x0.device
    if t is None:
        num_tokens = (x0.shape[-2] // patch_size) * (x0.shape[-1] // patch_size)
        t = draw_timesteps(config, B, generator, device, num_tokens=num_tokens)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
    C = x0.shape[1]
    if config.objective == "flow":
        s = t.float() / config.num_timesteps
        s_b = s.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        xt = (1 - s_b) * x0 + s_b * noise
        prediction = model(xt, s * config.num_timesteps, **cond)[:, :C].float()  # variance channels unused
        mse = mean_flat((noise - x0 - prediction) ** 2)
        return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}

    schedule = schedule or config.schedule()
    xt = schedule.add_noise(x0, t, noise)
    output = model(xt, t, **cond).float()
    if output.shape[1] != 2 * C:
        raise ValueError(
            f"the iddpm objective needs a learned-sigma model ({2 * C} output channels), got "
            f"{output.shape[1]}; set learn_sigma=True or use the flow objective"
        )
    eps, v = output.split(C, dim=1)
    mse = mean_flat((noise.float() - eps) ** 2)
    frozen = torch.cat([eps.detach(), v], dim=1)  # the VLB must not move the mean
    vb = vlb_terms(schedule, frozen, x0.float(), xt.float(), t)
    return {"loss": mse + vb, "mse": mse, "vb": vb}

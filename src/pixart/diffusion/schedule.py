"""The discrete Gaussian diffusion PixArt trains on: 1000 linear betas from 1e-4 to 0.02, float64.

Posterior q(x_{t-1} | x_t, x_0) and the learned-range variance of IDDPM (Nichol & Dhariwal 2021,
eq. 15: log sigma^2 = f log beta_t + (1 - f) log beta_tilde_t, f = (v + 1) / 2).
"""

from __future__ import annotations

import torch


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The official linear schedule in float64 (scaled by 1000 / T so that any T spans the same range)."""
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)


class NoiseSchedule:
    """Precomputed float64 tables of the forward process and its posterior."""

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.num_timesteps = num_timesteps
        betas = linear_betas(num_timesteps, beta_start, beta_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / alphas_cumprod - 1).sqrt()
        # beta_tilde_t; at t = 0 it is 0, so the log is clipped to the t = 1 value (as IDDPM does).
        self.posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod)
        self.log_betas = betas.log()
        self._on_device: dict[tuple[str, torch.device], torch.Tensor] = {}

    def gather(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table `name` at timesteps t as float32, shaped (B, 1, 1, 1) to broadcast against `like`.

        Each table is copied to t's device once: a copy from pageable host memory to a GPU waits for the
        stream, which at a dozen tables per training step would stall it a dozen times.
        """
        key = (name, t.device)
        if key not in self._on_device:
            self._on_device[key] = getattr(self, name).to(t.device)
        values = self._on_device[key][t].float()
        return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.device)

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        signal, spread = self.gather("sqrt_alphas_cumprod", t, x0), self.gather("sqrt_one_minus_alphas_cumprod", t, x0)
        return signal * x0 + spread * noise

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        recip = self.gather("sqrt_recip_alphas_cumprod", t, xt)
        return recip * xt - self.gather("sqrt_recipm1_alphas_cumprod", t, xt) * eps

    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        mean = self.gather("posterior_mean_coef1", t, xt) * x0 + self.gather("posterior_mean_coef2", t, xt) * xt
        return mean, self.gather("posterior_log_variance_clipped", t, xt).expand_as(xt)

    def learned_range_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """IDDPM learned-range variance: interpolate log beta_tilde_t (v = -1) and log beta_t (v = 1)."""
        min_log = self.gather("posterior_log_variance_clipped", t, v)
        max_log = self.gather("log_betas", t, v)
        fraction = (v + 1) / 2
        return fraction * max_log + (1 - fraction) * min_log

    def p_mean_log_variance(
        self, model_output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance of p(x_{t-1} | x_t) from a (B, 2C, ...) eps + variance output."""
        eps, v = model_output.chunk(2, dim=1)
        mean, _ = self.posterior(self.predict_x0(xt, t, eps), xt, t)
        return mean, self.learned_range_log_variance(v, t)

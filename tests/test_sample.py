"""The sampling loop: closed-form Gaussian checks for every sampler, equality with diffusers' pipeline."""

from __future__ import annotations

import dataclasses
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import randomize_, varied_mask

from pixart.diffusion import SAMPLERS, NoiseSchedule, build_scheduler
from pixart.diffusion.guidance import GuidedDenoiser, learned_null_caption
from pixart.diffusion.schedulers import set_steps
from pixart.model import TINY, TINY_MS, PixArt
from pixart.sample import model_timesteps, sample
from pixart.weights import save_transformer

diffusers = pytest.importorskip("diffusers")

MU = torch.tensor([-0.5, 0.2, 0.8, 0.0], dtype=torch.float64)
STD = torch.tensor([0.3, 0.5, 1.0, 0.8], dtype=torch.float64)


class GaussianOracle(torch.nn.Module):
    """The exact eps (or velocity) predictor for data x0 ~ N(MU, diag STD^2), per channel.

    For x_t = a x0 + s eps: E[eps | x_t] = s (x_t - a mu) / (a^2 std^2 + s^2), and for the flow
    velocity v = eps - x0 also E[x0 | x_t] = mu + a std^2 (x_t - a mu) / (a^2 std^2 + s^2).
    """

    def __init__(self, flow: bool):
        super().__init__()
        self.flow = flow
        self.config = SimpleNamespace(in_channels=4)
        abar = NoiseSchedule().alphas_cumprod
        self.sigmas = ((1 - abar) / abar).sqrt().numpy()  # the VE sigmas diffusers interpolates in t

    def noise_level(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = t.double().reshape(-1, 1, 1, 1)
        if self.flow:
            return 1 - t / 1000, t / 1000
        sigma = torch.from_numpy(np.interp(t.flatten().numpy(), np.arange(1000), self.sigmas)).view(-1, 1, 1, 1)
        a = 1 / (1 + sigma**2).sqrt()
        return a, sigma * a

    def forward(self, x, t, y, mask=None, img_hw=None, aspect_ratio=None):
        a, s = self.noise_level(t)
        mu, std = MU.view(1, -1, 1, 1), STD.view(1, -1, 1, 1)
        residual = x.double() - a * mu
        variance = a**2 * std**2 + s**2
        eps = s * residual / variance
        out = eps - (mu + a * std**2 * residual / variance) if self.flow else eps
        return torch.cat([out, torch.zeros_like(out)], 1).float()  # v = 0: geometric-mean variance


# Steps per sampler: the defaults for the second-order solvers; enough for the first-order ones to
# be converged to within the tolerance. Stochastic samplers target the data distribution itself.
STEPS = {
    "dpm-solver++": 20,
    "sa-solver": 50,
    "ddim": 200,
    "iddpm": 250,
    "euler": 200,
    "flow-euler": 100,
    "flow-dpm-solver": 20,
}
STOCHASTIC = {"sa-solver", "iddpm"}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_reproduces_gaussian_data(name):
    """Mean within 0.03 and std within 4% of the closed form.

    16,384 values per channel give a standard error of the std of 0.55% and of the mean of at most
    0.008, so 4% and 0.03 leave room for discretisation error (measured at most 3% at these steps).
    Deterministic samplers end by denoising from their last timestep t_L to 0, which returns
    E[x0 | x_tL]: its std is std * sqrt(a^2 std^2 / (a^2 std^2 + s^2)) at t_L, the closed form we use.
    """
    flow = SAMPLERS[name].objective == "flow"
    oracle = GaussianOracle(flow)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(4096, 4, 2, 2, generator=generator)
    y, mask = torch.zeros(4096, 1, 8), torch.ones(4096, 1)
    out = sample(
        oracle,
        noise,
        y,
        mask,
        y,
        mask,
        scheduler=name,
        steps=STEPS[name],
        cfg_scale=1.0,
        generator=generator,
        progress=False,
    )
    values = out.transpose(0, 1).reshape(4, -1).double()
    target_std = STD
    if name not in STOCHASTIC:
        scheduler = build_scheduler(name)
        scheduler.set_timesteps(STEPS[name])
        a, s = oracle.noise_level(model_timesteps(scheduler)[-1:].double())  # where the model was last asked
        a, s = a.flatten(), s.flatten()
        target_std = STD * (a**2 * STD**2 / (a**2 * STD**2 + s**2)).sqrt()
    assert (values.mean(1) - MU).abs().max() < 0.03
    assert ((values.std(1) / target_std) - 1).abs().max() < 0.04


def oracle_sample(name: str, steps: int, n: int = 1024) -> torch.Tensor:
    """(4, values) per channel: what sampler `name` draws from the Gaussian oracle in `steps` steps."""
    oracle = GaussianOracle(SAMPLERS[name].objective == "flow")
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(n, 4, 2, 2, generator=generator)
    y, mask = torch.zeros(n, 1, 8), torch.ones(n, 1)
    out = sample(
        oracle, noise, y, mask, y, mask, scheduler=name, steps=steps, cfg_scale=1.0, generator=generator, progress=False
    )
    return out.transpose(0, 1).reshape(4, -1).double()


def test_a_stop_asked_for_ends_the_sampling_before_the_next_step():
    """A Stop button (or a closed browser tab) had no way into a running sampler: the request ran to its end."""
    from pixart.sample import SamplingStopped

    oracle, asked = GaussianOracle(False), []
    real = oracle.forward
    oracle.forward = lambda *args, **kwargs: asked.append(1) or real(*args, **kwargs)
    y, mask = torch.zeros(2, 1, 8), torch.ones(2, 1)
    answers = iter([False, False, True])
    with pytest.raises(SamplingStopped, match="stopped before step 3 of 20"):
        sample(oracle, torch.randn(2, 4, 2, 2), y, mask, y, mask, steps=20, progress=False, stop=lambda: next(answers))
    assert len(asked) == 2  # the two steps before it, and no more
    never = sample(oracle, torch.randn(2, 4, 2, 2), y, mask, y, mask, steps=3, progress=False, stop=lambda: False)
    assert torch.isfinite(never).all()


def test_flow_dpm_solver_asks_the_model_at_the_exact_sigmas():
    """diffusers stores DPM-Solver's flow timesteps as integers (floor of 1000 sigma); a flow model trains
    on t = 1000 s, so it is asked at the sigma the solver steps with."""
    asked = []

    class Recording(GaussianOracle):
        def forward(self, x, t, *args, **kwargs):
            asked.append(float(t[0]))
            return super().forward(x, t, *args, **kwargs)

    y, mask = torch.zeros(1, 1, 8), torch.ones(1, 1)
    noise = torch.randn(1, 4, 2, 2)
    sample(
        Recording(True), noise, y, mask, y, mask, scheduler="flow-dpm-solver", steps=10, cfg_scale=1.0, progress=False
    )
    scheduler = build_scheduler("flow-dpm-solver")
    scheduler.set_timesteps(10)
    expected = (scheduler.sigmas[:-1] * 1000).tolist()
    assert asked == pytest.approx(expected, rel=1e-6)
    assert any(abs(a - round(a)) > 1e-3 for a in asked) and scheduler.timesteps.dtype == torch.int64


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_min_steps_is_the_fewest_that_denoise(name):
    """At min_steps every sampler lands near the data (mean within 0.1 of MU, spread no wider than the
    data's, where the noise's is 1); one step fewer would be timestep 0 alone, or, for ddim, start lower
    than t=900 (9 steps at t=888, as 112 steps do, which were refused while 2 to 9 were not: 2 steps
    biased its mean by 0.07)."""
    sampler = SAMPLERS[name]
    values = oracle_sample(name, sampler.min_steps)
    assert (values.mean(1) - MU).abs().max() < 0.1
    assert (values.std(1) <= STD + 0.1).all(), values.std(1)
    if sampler.min_steps > 1:
        scheduler = build_scheduler(name)
        set_steps(scheduler, name, sampler.min_steps - 1)
        first = int(scheduler.timesteps[0])
        assert scheduler.timesteps.tolist() == [0] if name != "ddim" else 800 < first < 900, first
        with pytest.raises(ValueError, match=f"needs at least {sampler.min_steps} steps"):
            oracle_sample(name, sampler.min_steps - 1)


class ConstantVariance(torch.nn.Module):
    """eps = 0.3 x and a learned-range variance output v = 0.2 everywhere; records where it is asked."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(in_channels=4)
        self.asked: list[tuple[torch.Tensor, int]] = []

    def forward(self, x, t, *args, **kwargs):
        self.asked.append((x.double(), int(t[0])))
        return torch.cat([0.3 * x, torch.full_like(x, 0.2)], 1)


@pytest.mark.parametrize("steps", [3, 100, 251])
def test_iddpm_steps_through_the_official_respaced_schedule(steps):
    """The official IDDPM (space_timesteps(1000, str(steps))) asks the model from t=999 down to 0 at a
    stride of 999 / (steps - 1), rounded, and moves x_t to x_prev by the respaced posterior: beta =
    1 - abar_t / abar_prev, mean from the predicted x0, log variance f log(beta) + (1 - f) log(beta~),
    f = (v + 1) / 2. diffusers' leading spacing would start at 990 for 100 steps and at 750 for 251."""
    model = ConstantVariance()
    noise = torch.randn(4096, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    y, mask = torch.zeros(4096, 1, 8), torch.ones(4096, 1)
    generator = torch.Generator().manual_seed(1)
    sample(
        model,
        noise,
        y,
        mask,
        y,
        mask,
        scheduler="iddpm",
        steps=steps,
        cfg_scale=1.0,
        generator=generator,
        progress=False,
    )
    asked = [t for _, t in model.asked]
    exact = [i * 999 / (steps - 1) for i in reversed(range(steps))]  # rounded by an accumulated sum, officially
    assert len(asked) == steps and all(abs(t - e) <= 0.5 + 1e-9 for t, e in zip(asked, exact))
    assert asked[:2] == ([999, 500] if steps == 3 else [999, 989] if steps == 100 else [999, 995])
    abar = NoiseSchedule().alphas_cumprod.double()
    for (x, t), (x_prev, prev) in zip(model.asked, model.asked[1:]):
        a_t, a_prev = abar[t], abar[prev]
        beta = 1 - a_t / a_prev
        x0 = (x - (1 - a_t).sqrt() * 0.3 * x) / a_t.sqrt()
        mean = (beta * a_prev.sqrt() * x0 + (1 - a_prev) * (1 - beta).sqrt() * x) / (1 - a_t)
        f = (0.2 + 1) / 2
        log_variance = f * beta.log() + (1 - f) * (beta * (1 - a_prev) / (1 - a_t)).log()
        z = (x_prev - mean) / (0.5 * log_variance).exp()  # the step's own noise, if the step is the official one
        assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02, (t, prev)


@pytest.mark.parametrize("name", ["iddpm", "flow-euler"])
def test_more_steps_than_the_schedule_has_are_refused_by_name(name):
    """iddpm's custom timesteps failed inside diffusers ("must be in descending order") at 1001 steps."""
    with pytest.raises(ValueError, match=f"sampler '{name}' takes at most 1000 steps, got 1001"):
        oracle_sample(name, 1001, n=4)


def test_ddim_refuses_step_counts_whose_leading_spacing_starts_low():
    """diffusers' DDIM spaces timesteps by 1000 // steps from 0: 251 steps start at t=750, a quarter of
    the schedule below pure noise. Such counts are refused, naming the nearest that start high."""
    scheduler = build_scheduler("ddim")
    scheduler.set_timesteps(251)
    assert int(scheduler.timesteps[0]) == 750  # diffusers' own schedule, not only our reading of it
    with pytest.raises(ValueError, match=r"'ddim' cannot take 251 steps: .* start at t=750 .*use 250 or 300 steps"):
        oracle_sample("ddim", 251, n=4)
    for steps in (250, 300, 111):
        scheduler.set_timesteps(steps)
        assert int(scheduler.timesteps[0]) >= 888  # what they start at: within a tenth and a stride of the top
        assert torch.isfinite(oracle_sample("ddim", steps, n=4)).all()


@pytest.mark.parametrize("name", ["ddim", "iddpm", "euler"])
def test_one_step_is_refused_where_it_would_not_denoise(name):
    with pytest.raises(
        ValueError,
        match=f"sampler '{name}' needs at least {SAMPLERS[name].min_steps} steps, got 1.*: "
        "for eps \\(iddpm\\) models, dpm-solver\\+\\+, sa-solver; for flow models, flow-euler, flow-dpm-solver$",
    ):
        oracle_sample(name, 1)


@pytest.mark.parametrize("name", ["dpm-solver++", "ddim"])
def test_zero_steps_are_refused_not_read_as_the_default(name):
    with pytest.raises(ValueError, match="got 0"):
        oracle_sample(name, 0)


@pytest.mark.parametrize("name", ["dpm-solver++", "sa-solver"])
def test_a_step_count_that_repeats_a_noise_level_is_refused(name):
    """At 1000 steps diffusers' linspace spacing repeats t=500, and these solvers divide by the gap: NaN."""
    scheduler = build_scheduler(name)
    scheduler.set_timesteps(1000)
    assert len(set(scheduler.timesteps.tolist())) == 999  # the repeat itself, not only our reading of it
    with pytest.raises(ValueError, match=re.escape(f"sampler '{name}' cannot take 1000 steps") + ".*use at most 999$"):
        oracle_sample(name, 1000, n=4)
    assert torch.isfinite(oracle_sample(name, 999, n=4)).all()


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # inside diffusers' Heun and KDPM2
def test_a_folder_scheduler_that_repeats_a_noise_level_is_refused():
    """A scheduler instance (a diffusers folder's own) is checked once set, in the loop; schedulers that
    repeat levels by design (Heun, KDPM2 as second-order methods, PNDM in its warm-up) sample as before."""
    import diffusers

    from pixart.diffusion.schedulers import training_schedule

    y, mask = torch.zeros(1, 1, 8), torch.ones(1, 1)
    noise = torch.randn(1, 4, 2, 2)
    folder_scheduler = build_scheduler("dpm-solver++")
    with pytest.raises(ValueError, match="repeats a noise level at 1000 steps"):
        sample(GaussianOracle(False), noise, y, mask, y, mask, scheduler=folder_scheduler, steps=1000)
    for name in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "PNDMScheduler"):
        scheduler = getattr(diffusers, name)(**training_schedule())
        out = sample(GaussianOracle(False), noise, y, mask, y, mask, scheduler=scheduler, steps=20, cfg_scale=1.0)
        assert torch.isfinite(out).all(), name


def test_unknown_sampler_lists_the_choices():
    with pytest.raises(ValueError, match="dpm-solver\\+\\+, sa-solver"):
        sample(
            PixArt(TINY),
            torch.zeros(1, 4, 4, 4),
            torch.zeros(1, 2, 48),
            torch.ones(1, 2),
            torch.zeros(1, 2, 48),
            torch.ones(1, 2),
            scheduler="heun-9000",
        )


def test_values_that_would_draw_nan_or_fail_deep_in_the_model_are_refused_by_name():
    """sample() is the library's entry: a NaN or infinite guidance scale and a flow shift of 0 or less drew NaN
    images; a float step count, a noise batch other than the captions', and a count of null captions other
    than one or one per caption failed inside diffusers or the model with errors that named none of them."""
    oracle, flow = GaussianOracle(False), GaussianOracle(True)
    y, mask, noise = torch.zeros(2, 3, 8), torch.ones(2, 3), torch.randn(2, 4, 2, 2)
    for scale in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"cfg_scale must be a finite number, got {scale}"):
            sample(oracle, noise, y, mask, y, mask, cfg_scale=scale, progress=False)
    for shift in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=f"flow_shift must be a positive number .* got {shift}"):
            sample(flow, noise, y, mask, y, mask, scheduler="flow-euler", flow_shift=shift, progress=False)
    for scheduler in ("dpm-solver++", build_scheduler("dpm-solver++")):
        with pytest.raises(ValueError, match="steps must be a whole number, got 2.5"):
            sample(oracle, noise, y, mask, y, mask, scheduler=scheduler, steps=2.5, progress=False)
    with pytest.raises(ValueError, match="noise holds 1 sample.* but cond 2 caption"):
        sample(oracle, noise[:1], y, mask, y, mask, progress=False)
    with pytest.raises(ValueError, match="3 null captions for 2 captions"):
        sample(oracle, noise, y, mask, y[[0, 1, 1]], mask[[0, 1, 1]], progress=False)
    with pytest.raises(ValueError, match=r"null_mask must be \(2, 3\)"):
        sample(oracle, noise, y, mask, y, mask[:, :2], progress=False)
    with pytest.raises(ValueError, match=r"cond must be \(batch, tokens, channels\) features, got \(2, 1, 3, 8\)"):
        sample(oracle, noise, y[:, None], mask, y, mask, progress=False)  # the official layout: not the mask's fault
    with pytest.raises(ValueError, match="pass that scheduler instance"):
        sample(oracle, noise, y, mask, y, mask, scheduler="folder", progress=False)


def test_each_sample_keeps_its_own_timestep_and_micro_conditions_under_guidance():
    """The guided batch is [uncond; cond]: per-sample timesteps and sizes are tiled as whole halves. Tiled
    sample by sample (repeat_interleave) they would pair one image's noise level with another's."""
    torch.manual_seed(0)
    model = randomize_(PixArt(TINY_MS)).eval()
    cond, cond_mask = torch.randn(2, 5, TINY_MS.caption_channels), varied_mask(2, 5, [5, 3])
    null, null_mask = learned_null_caption(model, cond_mask)
    hw, ar = torch.tensor([[64.0, 128.0], [128.0, 64.0]]), torch.tensor([0.5, 2.0])
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([900, 50])
    with torch.no_grad():
        both = GuidedDenoiser(model, cond, cond_mask, null, null_mask, 4.5, img_hw=hw, aspect_ratio=ar)(x, t)
        for i in range(2):
            one = GuidedDenoiser(
                model,
                cond[i : i + 1],
                cond_mask[i : i + 1],
                null[i : i + 1],
                null_mask[i : i + 1],
                4.5,
                img_hw=hw[i : i + 1],
                aspect_ratio=ar[i : i + 1],
            )(x[i : i + 1], t[i : i + 1])
            torch.testing.assert_close(both[i : i + 1], one, atol=1e-5, rtol=1e-5)


def test_one_null_caption_is_shared_by_the_batch():
    """One negative prompt's features for a batch of captions guide each as that caption repeated would."""
    torch.manual_seed(0)
    model = randomize_(PixArt(TINY)).eval()
    cond, cond_mask = torch.randn(2, 5, TINY.caption_channels), varied_mask(2, 5, [5, 2])
    null, null_mask = torch.randn(1, 3, TINY.caption_channels), torch.tensor([[1, 1, 0]])
    noise = torch.randn(2, 4, 4, 4)
    shared = sample(model, noise, cond, cond_mask, null, null_mask, steps=3, progress=False)
    repeated = sample(
        model, noise, cond, cond_mask, null.repeat(2, 1, 1), null_mask.repeat(2, 1), steps=3, progress=False
    )
    torch.testing.assert_close(shared, repeated, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["dpm-solver++", "sa-solver"])
@pytest.mark.parametrize("micro", [False, True])
def test_latents_equal_diffusers_pipeline(tmp_path, name, micro):
    """Same transformer weights, noise, embeddings and masks: the same latents as PixArtAlphaPipeline.

    Random weights make the trajectories large (|latents| ~ 600: x0 = (x - s eps) / a with a ~ 0.006
    at t = 999 and an eps that is not the noise), so we compare at 1e-5 of that scale (6e-3; measured
    3e-4): float32 alone resolves 6e-8 of it per operation, and a 1% error in the aspect-ratio
    micro-condition already fails. (diffusers sends micro-conditions only at sample_size 128.)
    """
    config = dataclasses.replace(TINY_MS, input_size=128) if micro else TINY
    model = randomize_(PixArt(config), seed=3, std=0.05).eval()
    save_transformer(model, tmp_path, to="diffusers")
    pipe = diffusers.PixArtAlphaPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        scheduler=build_scheduler(name),
        transformer=diffusers.PixArtTransformer2DModel.from_pretrained(tmp_path),
    )
    pipe.set_progress_bar_config(disable=True)
    B, L = 2, 10
    g = torch.Generator().manual_seed(0)
    cond, null = torch.randn(B, L, 48, generator=g), torch.randn(B, L, 48, generator=g)
    cond_mask, null_mask = varied_mask(B, L, [10, 3]), varied_mask(B, L, [1, 2])
    reference = pipe(
        prompt=None,
        negative_prompt=None,
        prompt_embeds=cond,
        prompt_attention_mask=cond_mask,
        negative_prompt_embeds=null,
        negative_prompt_attention_mask=null_mask,
        height=128,
        width=96,
        num_inference_steps=SAMPLERS[name].default_steps,
        guidance_scale=4.5,
        output_type="latent",
        use_resolution_binning=False,
        generator=torch.Generator().manual_seed(42),
    ).images

    generator = torch.Generator().manual_seed(42)
    noise = torch.randn(B, 4, 16, 12, generator=generator)  # what the pipeline draws first
    micro_kwargs = {"img_hw": torch.tensor([[128.0, 96.0]]), "aspect_ratio": torch.tensor([128 / 96])} if micro else {}
    ours = sample(
        model,
        noise,
        cond,
        cond_mask,
        null,
        null_mask,
        scheduler=name,
        cfg_scale=4.5,
        generator=generator,
        progress=False,
        **micro_kwargs,
    )
    scale = reference.abs().max()
    assert scale > 1
    assert (ours - reference).abs().max() <= 1e-5 * scale, ((ours - reference).abs().max(), scale)


def test_a_sampler_needing_the_learned_variance_refuses_a_model_without_it():
    """iddpm on a learn_sigma=False model failed inside diffusers' DDPM step after the first model call
    ("unsupported operand type(s) for +: 'NoneType' and 'int'"); generate refused it, the library did not."""
    model = randomize_(PixArt(dataclasses.replace(TINY, learn_sigma=False)), seed=1).eval()
    cond, mask = torch.randn(1, 6, 48), varied_mask(1, 6, [4])
    null, null_mask = learned_null_caption(model, mask)
    with pytest.raises(ValueError, match="needs the learned variance the model does not predict"):
        sample(model, torch.randn(1, 4, 8, 8), cond, mask, null, null_mask, scheduler="iddpm", steps=5, progress=False)
    latents = sample(model, torch.randn(1, 4, 8, 8), cond, mask, null, null_mask, steps=5, progress=False)
    assert latents.shape == (1, 4, 8, 8)  # dpm-solver++ needs none


def test_cfg_scale_one_is_the_conditional_branch_alone():
    model = randomize_(PixArt(TINY), seed=1).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor(500)
    cond, mask = torch.randn(2, 6, 48), varied_mask(2, 6, [6, 2])
    null, null_mask = learned_null_caption(model, mask)
    guided = GuidedDenoiser(model, cond, mask, null, null_mask, cfg_scale=1.0)
    with torch.no_grad():
        expected = model(x, torch.tensor([500, 500]), cond, mask)[:, :4]
        torch.testing.assert_close(guided(x, t), expected, rtol=0, atol=0)


def test_guidance_formula_and_official_null_semantics():
    torch.manual_seed(0)  # unseeded, 1 draw in 40 missed the tolerance below (1e-5), at 1.4e-5 on outputs of 10
    model = randomize_(PixArt(TINY), seed=2).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 10])
    cond, mask = torch.randn(2, 6, 48), varied_mask(2, 6, [6, 2])
    null, null_mask = learned_null_caption(model, mask)
    assert torch.equal(null_mask, mask)  # official: the null caption keeps the prompt's own mask
    assert torch.equal(null[1], model.y_embedder.y_embedding[:6])
    guided = GuidedDenoiser(model, cond, mask, null, null_mask, cfg_scale=4.5, keep_variance=True)
    with torch.no_grad():
        c = model(x, t, cond, mask)
        u = model(x, t, null, mask)
        out = guided(x, torch.tensor(10))
    # one batched forward of both branches against two: rounding of products over another batch, times 4.5
    torch.testing.assert_close(out[:, :4], u[:, :4] + 4.5 * (c[:, :4] - u[:, :4]), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out[:, 4:], c[:, 4:])  # the variance comes from the conditional branch


@pytest.mark.parametrize(
    ("cond_valid", "null_length"),
    [(6, 2), (0, 9)],  # a shorter negative prompt; a caption with no valid token beside a longer one
)
def test_negative_prompt_of_other_length_is_padded(cond_valid, null_length):
    """Each branch equals its caption alone. A caption with no valid token attends to all of its own tokens;
    padding for the other branch's length used to add the padded positions to them."""
    model = randomize_(PixArt(TINY), seed=2).eval()
    cond, mask = torch.randn(1, 6, 48), (torch.arange(6) < cond_valid).float()[None]
    null, null_mask = torch.randn(1, null_length, 48), torch.ones(1, null_length)
    guided = GuidedDenoiser(model, cond, mask, null, null_mask, cfg_scale=3.0)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        u = model(x, torch.tensor([7]), null, null_mask)[:, :4]
        c = model(x, torch.tensor([7]), cond, mask)[:, :4]
        torch.testing.assert_close(guided(x, torch.tensor(7)), u + 3.0 * (c - u), atol=1e-5, rtol=1e-5)


def test_trailing_padding_is_trimmed_exactly():
    """T5 pads prompts to 120 tokens: the denoiser drops positions no sample uses, with no change."""
    from pixart.diffusion.guidance import trim_padding

    model = randomize_(PixArt(TINY), seed=4).eval()
    cond, mask = torch.randn(2, 12, 48), varied_mask(2, 12, [3, 5])
    null, null_mask = learned_null_caption(model, mask)
    guided = GuidedDenoiser(model, cond, mask, null, null_mask, cfg_scale=3.0)
    assert guided.y.shape[1] == 5
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        t = torch.tensor([9, 9])
        u = model(x, t, null, null_mask)[:, :4]
        c = model(x, t, cond, mask)[:, :4]
        torch.testing.assert_close(guided(x, torch.tensor(9)), u + 3.0 * (c - u), atol=1e-5, rtol=1e-5)
    empty = torch.zeros(2, 4)
    empty[0, 0] = 1  # a sample with no valid token attends everywhere: nothing is trimmed
    assert trim_padding(torch.zeros(2, 4, 3), empty)[0].shape[1] == 4


def test_sampling_records_no_autograd_graph():
    """A sampling run keeps no activations for a backward pass, even for a model that could train.

    A refactor once moved `sample`'s no_grad onto a helper above it: every step's activations stayed
    alive through the latents' graph, and 1024 px sampling ran a 139 GiB GPU out of memory."""
    model = randomize_(PixArt(TINY), seed=5).eval()
    assert all(p.requires_grad for p in model.parameters())
    modes = []
    model.register_forward_hook(lambda module, args, out: modes.append(torch.is_grad_enabled()))
    cond, mask = torch.randn(1, 6, 48), varied_mask(1, 6, [4])
    null, null_mask = learned_null_caption(model, mask)
    latents = sample(model, torch.randn(1, 4, 8, 8), cond, mask, null, null_mask, steps=3, progress=False)
    assert modes == [False] * 3
    assert latents.grad_fn is None and not latents.requires_grad
    assert torch.is_grad_enabled()  # and the caller's mode is left as it was


def test_flow_dpm_solver_takes_every_level_when_the_shift_repeats_its_integer_timesteps():
    """diffusers keeps flow DPM-Solver's timesteps as floor(1000 sigma): a large shift bunches the top
    sigmas until two floor to 999 (shift 12 at 92 steps, 3 at 501). It then found its first step by that
    value, took the second match, skipped the first level and indexed past its last (IndexError, after all
    the work). Every level is asked once, from the first, and the result lands on the data."""
    asked = []

    class Recording(GaussianOracle):
        def forward(self, x, t, *args, **kwargs):
            asked.append(float(t[0]))
            return super().forward(x, t, *args, **kwargs)

    scheduler = build_scheduler("flow-dpm-solver", flow_shift=12.0)
    scheduler.set_timesteps(92)
    assert scheduler.timesteps[0] == scheduler.timesteps[1]  # the case itself
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(1024, 4, 2, 2, generator=generator)
    y, mask = torch.zeros(1024, 1, 8), torch.ones(1024, 1)
    out = sample(
        Recording(True), noise, y, mask, y, mask, scheduler="flow-dpm-solver", steps=92, cfg_scale=1.0,
        progress=False, flow_shift=12.0,
    )  # fmt: skip
    assert asked == pytest.approx((scheduler.sigmas[:-1] * 1000).tolist(), rel=1e-6)
    values = out.transpose(0, 1).reshape(4, -1).double()
    assert (values.mean(1) - MU).abs().max() < 0.1


def test_ddim_ends_on_the_predicted_clean_image():
    """DDIM's last step returns the model's x0 prediction at its last timestep, as the official
    ddim_sample_loop (alphas_cumprod_prev[0] = 1) and diffusers' default (set_alpha_to_one=True) do; it
    stopped at t=0's noise level instead, 0.01 eps short of clean."""
    last = {}

    class Recording(GaussianOracle):
        def forward(self, x, t, *args, **kwargs):
            out = super().forward(x, t, *args, **kwargs)
            last.update(x=x.double(), t=int(t[0]), eps=out[:, :4].double())
            return out

    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(64, 4, 2, 2, generator=generator)
    y, mask = torch.zeros(64, 1, 8), torch.ones(64, 1)
    out = sample(Recording(False), noise, y, mask, y, mask, scheduler="ddim", steps=50, cfg_scale=1.0, progress=False)
    abar = NoiseSchedule().alphas_cumprod[last["t"]].double()
    predicted_x0 = (last["x"] - (1 - abar).sqrt() * last["eps"]) / abar.sqrt()
    torch.testing.assert_close(out.double(), predicted_x0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["pixart", "official", "diffusers"])
def test_a_flow_model_keeps_its_objective_through_load_and_save_and_samples_as_one(tmp_path, layout):
    """Weights loaded, then saved, lost a flow model's objective and shift (the CLI's convert carried them, the
    Python path did not), and sample() then drew it as an eps model: latents hundreds off, without a word."""
    from pixart.weights import load_transformer
    from pixart.weights.io import SAMPLING_METADATA, sampling_metadata

    model = randomize_(PixArt(TINY)).eval()
    model.sampling = {"objective": "flow", "flow_shift": 3.0, "shift_base_tokens": 0}
    first = save_transformer(model, tmp_path / "first.safetensors")
    loaded = load_transformer(first)
    assert loaded.sampling == model.sampling
    name = {"pixart": "again.safetensors", "official": "again.pth", "diffusers": "again"}[layout]
    again = save_transformer(torch.compile(loaded), tmp_path / name, to=layout)  # the compiled wrapper: its model
    assert json.loads(sampling_metadata(again)[SAMPLING_METADATA]) == model.sampling  # in the file itself
    reloaded = load_transformer(again)
    assert reloaded.sampling == model.sampling

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 16, 16, generator=g)
    cond, null = torch.randn(2, 16, 48, generator=g), torch.randn(2, 16, 48, generator=g)
    mask = torch.ones(2, 16, dtype=torch.long)
    args = (noise, cond, mask, null, mask)
    own = sample(reloaded, *args, steps=4, progress=False)
    as_flow = sample(reloaded, *args, scheduler="flow-dpm-solver", flow_shift=3.0, steps=4, progress=False)
    assert torch.equal(own, as_flow)
    with pytest.raises(ValueError, match=r"trained with the flow objective and dpm-solver\+\+ samples iddpm models"):
        sample(reloaded, *args, scheduler="dpm-solver++", steps=4, progress=False)
    # a model whose weights say nothing samples as an eps model, as before
    plain = load_transformer(save_transformer(randomize_(PixArt(TINY)), tmp_path / "plain.safetensors"))
    assert plain.sampling == {} and SAMPLING_METADATA not in sampling_metadata(tmp_path / "plain.safetensors")
    assert torch.equal(
        sample(plain, *args, steps=4, progress=False),
        sample(plain, *args, scheduler="dpm-solver++", steps=4, progress=False),
    )


def test_noise_of_the_wrong_channels_is_named_with_the_shape_given():
    """The model's own check named the guided batch, twice the one given: "got (4, 3, 16, 16)" for noise of
    2 samples (review)."""
    model = PixArt(TINY)
    cond = torch.randn(2, 16, 48)
    mask = torch.ones(2, 16, dtype=torch.long)
    for shape in [(2, 3, 16, 16), (4, 16, 16)]:  # the second, unbatched, was "noise holds 4 sample(s)"
        said = f"noise must be (B, 4, h, w) latents for this model, got {shape}"
        with pytest.raises(ValueError, match=re.escape(said)):
            sample(model, torch.randn(shape), cond, mask, cond, mask, steps=2, progress=False)

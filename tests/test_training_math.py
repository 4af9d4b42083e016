"""What a training step computes, pinned to closed forms: caption dropout, the EMA, AdamW's settings, the flow
and IDDPM objectives, the timestep draw, the presets' interpolation scale and the caption LayerNorm.

Each of these once survived a hand-made mutation (inverted, ignored or swapped) with the whole suite passing:
the loss still fell, so only a test of the quantity itself can tell.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_

from pixart.diffusion.objective import DiffusionConfig, draw_timesteps, training_loss
from pixart.model import TINY, PixArt
from pixart.model.pixart import XL_2, XL_2_256, XL_2_1024_MS
from pixart.recipes import get_recipe
from pixart.train.config import OptimConfig
from pixart.train.data import LatentScaling
from pixart.train.distributed import World
from pixart.train.step import build_optimizer, compute_loss, step_generator, update_ema


class CaptionRecorder(torch.nn.Module):
    """A PixArt stand-in for compute_loss: records the captions it is given, predicts zeros (eps and v)."""

    def __init__(self, length: int, width: int):
        super().__init__()
        self.config = SimpleNamespace(max_length=length)
        self.y_embedder = SimpleNamespace(y_embedding=torch.randn(length, width))
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, y, mask, img_hw=None, aspect_ratio=None):
        self.seen.append(y)
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])


def dropped_rows(dropout: float, batch: int = 400, step: int = 0) -> tuple[torch.Tensor, CaptionRecorder, dict]:
    """Which rows of a batch compute_loss gave the learned null caption, at data.caption_dropout=`dropout`."""
    length, width = 6, 8
    recipe = get_recipe("tiny")
    config = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, caption_dropout=dropout))
    model = CaptionRecorder(length, width)
    batch = {
        "mean": torch.zeros(batch, 4, 2, 2),
        "std": torch.ones(batch, 4, 2, 2),
        "text": torch.randn(batch, length, width) + 10,  # far from every null row
        "mask": torch.ones(batch, length, dtype=torch.long),
        "img_hw": torch.zeros(batch, 2),
        "aspect_ratio": torch.ones(batch),
    }
    scaling = LatentScaling(4, 1.0, 0.0)
    compute_loss(model, model, batch, config, scaling, World(), step, 0, False)  # type: ignore[arg-type]
    (y,) = model.seen
    null = model.y_embedder.y_embedding
    is_null = (y == null[None]).flatten(1).all(dim=1)
    is_text = (y == batch["text"]).flatten(1).all(dim=1)
    assert bool((is_null ^ is_text).all()), "each row is its caption or the learned null caption, whole"
    return is_null, model, batch


def test_caption_dropout_gives_the_share_asked_of_rows_the_learned_null_caption():
    """At 0.1 about a tenth of the rows train unconditionally, on the model's own y_embedding (what sampling
    guides with), not on zeros; an inverted draw gave nine tenths."""
    assert not dropped_rows(0.0)[0].any()
    assert dropped_rows(1.0)[0].all()
    for share in (0.1, 0.5):
        rows = dropped_rows(share)[0]
        assert abs(rows.float().mean().item() - share) < 0.06, share
    assert not torch.equal(dropped_rows(0.5, step=0)[0], dropped_rows(0.5, step=1)[0])  # drawn anew each step
    assert torch.equal(dropped_rows(0.5, step=3)[0], dropped_rows(0.5, step=3)[0])  # and the same on a resume


def test_each_micro_batch_and_step_draws_its_own_numbers():
    """Gradient accumulation's micro-batches drew the same noise, timesteps and dropout when the micro index
    was left out of the seed."""
    draws = {
        (step, micro): torch.rand(8, generator=step_generator(5, step, micro, torch.device("cpu")))
        for step in (0, 1)
        for micro in (0, 1)
    }
    values = list(draws.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1 :])
    again = torch.rand(8, generator=step_generator(5, 1, 1, torch.device("cpu")))
    assert torch.equal(again, draws[(1, 1)])


def test_ema_moves_a_share_of_one_minus_decay_towards_the_weights():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = {"weight": torch.zeros(1, 1)}
    update_ema(ema, model, 0.9)
    torch.testing.assert_close(ema["weight"], torch.full((1, 1), 0.1))
    update_ema(ema, model, 0.9)
    torch.testing.assert_close(ema["weight"], torch.full((1, 1), 0.19))  # 0.1 + 0.1 * (1 - 0.1)


def test_the_trainers_adamw_steps_as_torchs_reference_adamw_with_its_settings():
    """Betas, eps and weight decay as OptimConfig says: swapped betas or no decay trained on unnoticed."""
    optim = OptimConfig(beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.1)
    ours_model, reference_model = randomize_(PixArt(TINY)), randomize_(PixArt(TINY))
    ours = build_optimizer(ours_model.parameters(), optim, lr=1e-2)
    reference = torch.optim.AdamW(
        reference_model.parameters(), lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, foreach=False
    )
    before = [p.detach().clone() for p in ours_model.parameters()]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(ours_model.parameters(), reference_model.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        ours.step()
        reference.step()
    for (name, a), b in zip(ours_model.named_parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert all(not torch.equal(a, b) for a, b in zip(ours_model.parameters(), before))  # it did step


class Recorder(torch.nn.Module):
    """A model stand-in for training_loss: records (x_t, t) and returns a fixed prediction."""

    def __init__(self, prediction: torch.Tensor):
        super().__init__()
        self.prediction = prediction
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t):
        self.calls.append((x, t))
        return self.prediction


def test_flow_objective_interpolates_towards_noise_and_regresses_the_velocity():
    """x_s = (1 - s) x0 + s eps (diffusers' FlowMatchEulerDiscreteScheduler.scale_noise: sigma eps + (1 - sigma)
    x0), the model asked at t = 1000 s, and the target v = eps - x0, the convention the flow samplers step by."""
    config = DiffusionConfig(objective="flow")
    x0, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([100.0, 500.0, 900.0])
    s = (t / 1000).view(-1, 1, 1, 1)
    prediction = torch.randn(3, 4, 2, 2)
    model = Recorder(prediction)
    losses = training_loss(model, x0, {}, config, t=t, noise=noise)
    ((xt, seen_t),) = model.calls
    torch.testing.assert_close(xt, (1 - s) * x0 + s * noise)
    torch.testing.assert_close(seen_t, t)
    torch.testing.assert_close(losses["loss"], ((noise - x0 - prediction) ** 2).mean(dim=(1, 2, 3)))
    exact = training_loss(Recorder(noise - x0), x0, {}, config, t=t, noise=noise)["loss"]
    torch.testing.assert_close(exact, torch.zeros(3))


def test_the_vlb_trains_only_the_variance_channels():
    """IDDPM section 3.1: the VLB term sees a detached mean, so its gradient reaches the v channels alone."""
    config = DiffusionConfig()
    x0, noise = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    output = torch.randn(2, 8, 2, 2, requires_grad=True)
    losses = training_loss(Recorder(output), x0, {}, config, t=torch.tensor([10, 600]), noise=noise)
    losses["vb"].sum().backward()
    assert output.grad is not None
    assert torch.count_nonzero(output.grad[:, :4]) == 0
    assert torch.count_nonzero(output.grad[:, 4:]) > 0


def test_iddpm_timesteps_cover_zero_to_999_uniformly():
    """floor(U * 1000): every level from 0 to 999, each about as often (a T - 1 scale never drew 999)."""
    t = draw_timesteps(DiffusionConfig(), 200_000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) == 0 and int(t.max()) == 999
    counts = torch.bincount(t, minlength=1000).float()
    assert counts[-10:].mean() == pytest.approx(200, rel=0.15) and counts[:10].mean() == pytest.approx(200, rel=0.15)


def test_presets_and_the_1024_recipe_use_the_official_interpolation_scale():
    """diffusers derives interpolation_scale = max(sample_size // 64, 1) (2 at 1024 px, 1 at 512 and 256, as
    the official 256 configs' lewei_scale 1); 1024 px trains with micro-conditions."""
    for config in (XL_2_256, XL_2, XL_2_1024_MS, get_recipe("stage3-aesthetic-1024").model):
        assert config.interpolation_scale == max(config.input_size // 64, 1), config
    assert XL_2_1024_MS.micro_conditions and not XL_2.micro_conditions


def test_caption_norm_is_a_parameter_free_layer_norm_before_the_projection():
    """The small-encoder recipes' caption_norm: y_proj of LayerNorm(y), so the projection no longer depends
    on the features' scale or offset."""
    model = randomize_(PixArt(dataclasses.replace(TINY, caption_norm=True)))
    y = torch.randn(2, 5, TINY.caption_channels)
    with torch.no_grad():
        out = model.y_embedder(y)
        torch.testing.assert_close(out, model.y_embedder.y_proj(F.layer_norm(y, y.shape[-1:], eps=1e-6)))
        torch.testing.assert_close(out, model.y_embedder(3 * y + 5), atol=1e-5, rtol=1e-4)
        plain = randomize_(PixArt(TINY)).y_embedder
        assert not torch.allclose(plain(y), plain(3 * y + 5))

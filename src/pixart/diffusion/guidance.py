"""Classifier-free guidance as a wrapper that turns the transformer into a guided denoiser.

One batched forward over [uncond; cond] (diffusers' order), guidance on all latent channels, and the
variance channels either dropped (schedulers that want eps only) or taken from the conditional branch
(DDPM with the learned-range variance, as the official sampler does).

The null caption is an argument, because two conventions exist:
- official: the model's learned `y_embedding`, cut to the prompt's length, with the prompt's own mask;
- diffusers: the encoded empty (or negative) prompt with its own mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from pixart.model.pixart import PixArt


class CaptionConditioned(Protocol):
    """What the guided sampler needs of a model: PixArt, or a DiT behind train.previews.LabelsAsCaptions.

    Called as model(x (B, C, H, W), t (B,), y (B, L, C_cap), mask (B, L), img_hw=..., aspect_ratio=...);
    `config.in_channels` names the latent channels; a `prepare_captions` method, where there is one, is
    used to compute the caption side once.
    """

    config: Any

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


def learned_null_caption(model: PixArt, cond_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Official semantics: (B, L, C) learned null caption and the prompt's own (B, L) mask."""
    table = model.y_embedder.y_embedding  # (max_length, C)
    B, L = cond_mask.shape
    if table.shape[0] < L:
        raise ValueError(f"prompts of {L} tokens are longer than the learned null caption ({table.shape[0]})")
    return table[:L][None].expand(B, L, table.shape[1]), cond_mask


def attend_all_when_empty(mask: torch.Tensor) -> torch.Tensor:
    """A (B, L) mask whose rows without a valid token become all ones, as the model reads such a row.

    Made explicit before padding: otherwise the padded positions would join that row's tokens, and its
    output would depend on the length of the other captions it is batched with.
    """
    empty = ~mask.bool().any(dim=1, keepdim=True)  # (B, 1)
    return torch.where(empty, torch.ones_like(mask), mask)


def pad_tokens(y: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (B, L, C) features and (B, L) mask with masked zeros to `length` tokens."""
    extra = length - y.shape[1]
    if extra <= 0:
        return y, mask
    return F.pad(y, (0, 0, 0, extra)), F.pad(mask, (0, extra))


def trim_padding(y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing caption positions that no sample uses (T5 pads every prompt to 120 tokens).

    Exact: masked tokens contribute nothing. Skipped when a sample has no valid token at all, since such
    a sample attends to every position (diffusers' behaviour) and trimming would change that.
    """
    used = mask.bool()
    if not bool(used.any(dim=1).all()):
        return y, mask
    length = int(used.any(dim=0).nonzero().max()) + 1
    return y[:, :length], mask[:, :length]


def one_per_caption(
    cond: torch.Tensor, cond_mask: torch.Tensor, null: torch.Tensor, null_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The null caption and its mask, one per caption: a single one (one negative prompt) is shared by the
    batch; other counts, or masks that do not match their features, are refused (a reshape deep in the
    model failed on them, naming neither)."""
    for name, features, mask in (("cond", cond, cond_mask), ("null", null, null_mask)):
        if features.ndim != 3:  # the official (B, 1, L, C) layout, which the model itself takes, is not this
            raise ValueError(f"{name} must be (batch, tokens, channels) features, got {tuple(features.shape)}")
        if mask.shape != features.shape[:2]:
            raise ValueError(
                f"{name}_mask must be {tuple(features.shape[:2])} (batch, tokens), got {tuple(mask.shape)}"
            )
    if null.shape[0] == 1 and cond.shape[0] > 1:
        return null.expand(cond.shape[0], *null.shape[1:]), null_mask.expand(cond.shape[0], -1)
    if null.shape[0] != cond.shape[0]:
        raise ValueError(
            f"{null.shape[0]} null captions for {cond.shape[0]} captions: give one null caption, or one per caption"
        )
    return null, null_mask


class GuidedDenoiser:
    """Callable (x (B, C, H, W), t) -> guided model output for the sampler."""

    def __init__(
        self,
        model: CaptionConditioned,
        cond: torch.Tensor,
        cond_mask: torch.Tensor,
        null: torch.Tensor,
        null_mask: torch.Tensor,
        cfg_scale: float,
        *,
        img_hw: torch.Tensor | None = None,
        aspect_ratio: torch.Tensor | None = None,
        keep_variance: bool = False,
    ):
        self.model = model
        self.cfg_scale = float(cfg_scale)
        self.keep_variance = keep_variance
        self.latent_channels = model.config.in_channels
        self.guided = self.cfg_scale != 1.0
        null, null_mask = one_per_caption(cond, cond_mask, null, null_mask)
        cond_mask, null_mask = attend_all_when_empty(cond_mask), attend_all_when_empty(null_mask)
        if self.guided:
            length = max(cond.shape[1], null.shape[1])
            null, null_mask = pad_tokens(null, null_mask, length)
            cond, cond_mask = pad_tokens(cond, cond_mask, length)
            self.y = torch.cat([null, cond])  # (2B, L, C)
            self.mask = torch.cat([null_mask, cond_mask])  # (2B, L)
        else:  # scale 1 is the conditional model alone: skip the unconditional half entirely
            self.y, self.mask = cond, cond_mask
        self.y, self.mask = trim_padding(self.y, self.mask)
        repeat = 2 if self.guided else 1
        self.img_hw = None if img_hw is None else torch.as_tensor(img_hw).reshape(-1, 2).repeat(repeat, 1)
        self.aspect_ratio = None if aspect_ratio is None else torch.as_tensor(aspect_ratio).reshape(-1).repeat(repeat)

        # The captions are the same at every step: models that can (PixArt) project them and compute
        # each block's keys and values once, here.
        prepare = getattr(model, "prepare_captions", None)
        self.captions = prepare(self.y, self.mask) if prepare is not None else None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        C = self.latent_channels
        batch = torch.cat([x, x]) if self.guided else x
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        t = t.expand(batch.shape[0]) if t.numel() == 1 else torch.cat([t, t]) if self.guided else t
        if self.captions is not None:  # prepared once in __init__: the features themselves are not passed again
            y, mask, extra = None, None, {"captions": self.captions}
        else:
            y, mask, extra = self.y, self.mask, {}
        out = self.model(batch, t, y, mask, img_hw=self.img_hw, aspect_ratio=self.aspect_ratio, **extra)
        out = out.to(x.dtype)
        if self.guided:
            uncond, cond = out.chunk(2)
            eps = uncond[:, :C] + self.cfg_scale * (cond[:, :C] - uncond[:, :C])
            rest = cond[:, C:]
        else:
            eps, rest = out[:, :C], out[:, C:]
        if self.keep_variance and rest.shape[1]:
            return torch.cat([eps, rest], dim=1)
        return eps

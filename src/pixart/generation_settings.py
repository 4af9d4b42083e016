"""What a generation request may ask for (Settings), and its checks, made before any model loads.

Shared by `pixart generate`, `pixart eval`, `pixart serve` and the library (pixart.generate.TextToImage).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from pixart.data.buckets import parse_aspect
from pixart.data.items import is_utf8
from pixart.diffusion.schedulers import check_step_count, check_steps, get_sampler


class GenerationError(ValueError):
    """Settings a user can fix (size, steps, sampler...)."""


@dataclass
class Settings:
    """Everything that decides an image besides the prompt and the seed."""

    negative: str | None = None
    height: int | None = None  # output size; None = the model's square bucket
    width: int | None = None
    aspect: str | None = None  # "H:W", snapped to the bucket table
    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None


@dataclass
class GeneratedImage:
    """One image of TextToImage.generate, with what made it (its sidecar JSON holds the same)."""

    image: Image.Image
    prompt: str
    seed: int
    settings: dict
    dropped_tokens: int = 0  # prompt tokens cut at the text encoder's limit (the image ignores them)


MAX_SIDE = 4096  # pixels: a larger output would only exhaust memory in the final resize, after sampling
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range (a signed 64-bit integer, here never negative)


def check_size(height: int, width: int) -> None:
    """An output size: any whole number of pixels a side in 8..MAX_SIDE. The image is drawn at the closest
    bucket (whose sides the model's codec and patch divide) and then resized to cover this size and cropped,
    so no side needs to divide by anything (a multiple of 8 was asked for, which refused a 36x72 model's
    own sizes)."""
    if not (8 <= height <= MAX_SIDE and 8 <= width <= MAX_SIDE):
        raise GenerationError(f"each side of the size must lie in 8..{MAX_SIDE} pixels, got {height}x{width}")


def check_counts(num_images: int, batch_size: int) -> None:
    """Refuse counts that would produce nothing (or loop forever) before any work is done."""
    if num_images < 1:
        raise GenerationError(f"the number of images per prompt must be at least 1, got {num_images}")
    if batch_size < 1:
        raise GenerationError(f"the batch size must be at least 1, got {batch_size}")


def requested_size(settings: Settings) -> tuple[int, int] | None:
    """The exact (height, width) asked for, checked; None when the request names an aspect or nothing."""
    if settings.height is None and settings.width is None:
        return None
    if settings.height is None or settings.width is None:
        raise GenerationError("give both height and width (--size HxW)")
    check_size(settings.height, settings.width)
    return settings.height, settings.width


def requested_aspect(settings: Settings) -> tuple[float, float] | None:
    """The (height, width) ratio asked for, parsed; None when the request names none."""
    if not settings.aspect:
        return None
    try:
        return parse_aspect(settings.aspect)
    except ValueError as error:
        raise GenerationError(str(error)) from error


def check_steps_for(name: str | None, steps: int) -> None:
    """`steps` for sampler `name`; 'folder' (a diffusers folder's own scheduler) and None (not known yet,
    the model's default) check the range only."""
    try:
        check_step_count(steps)
    except ValueError as error:
        raise GenerationError(str(error)) from None
    if not 1 <= steps <= 1000:
        raise GenerationError(f"steps must lie in 1..1000, got {steps}")
    if name not in (None, "folder"):
        try:
            check_steps(name, steps)
        except ValueError as error:
            raise GenerationError(str(error)) from error


# What each Settings field holds when given (None: the model's default); a wrong kind failed deep inside
# ("'float' object has no attribute 'strip'", "must be real number")
FIELD_KINDS = {
    "negative": (str, "a string"),
    "height": (numbers.Integral, "a whole number of pixels"),
    "width": (numbers.Integral, "a whole number of pixels"),
    "aspect": (str, 'a string such as "16:9"'),
    "sampler": (str, "a sampler's name"),  # steps: check_step_count says it
    "cfg_scale": (numbers.Real, "a number"),
}


def check_types(settings: Settings) -> None:
    for field, (kind, said) in FIELD_KINDS.items():
        value = getattr(settings, field)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise GenerationError(f"Settings.{field} must be {said} (or None for the model's own), got {value!r}")


def check_request(
    settings: Settings,
    num_images: int = 1,
    batch_size: int = 1,
    *,
    seed: int = 0,
    total_images: int = 1,
    prompts: Sequence[str] = (),
    skip: int = 0,
) -> None:
    """Refuse what no model could draw before one loads (minutes for a large one): counts, size, aspect,
    guidance, seeds, prompts that are not UTF-8, and a named sampler with its steps. What depends on the
    model is checked by TextToImage.resolve_sampler. `total_images` is the run's count (prompts x
    num_images): image k takes seed + k; the first `skip` of them are left out."""
    check_types(settings)
    for prompt in prompts:  # bytes of another encoding arrive as lone surrogates: the tokenizer's error
        if not is_utf8(prompt):
            raise GenerationError(f"the prompt {prompt!a} is not UTF-8 text (another encoding?): give it in UTF-8")
    check_counts(num_images, batch_size)
    if not 0 <= skip < max(total_images, 1):
        raise GenerationError(f"cannot skip {skip} of the run's {total_images} image(s): skip 0 to {total_images - 1}")
    if not 0 <= seed <= MAX_SEED - max(total_images - 1, 0):
        last = MAX_SEED - max(total_images - 1, 0)
        why = f" for {total_images} image(s) (image k takes seed + k)" if total_images > 1 else ""
        raise GenerationError(f"the seed must lie in 0..{last}{why}, got {seed}")
    if settings.cfg_scale is not None and not (math.isfinite(settings.cfg_scale) and settings.cfg_scale >= 0):
        raise GenerationError(f"the guidance scale must be a finite number >= 0, got {settings.cfg_scale}")
    requested_size(settings)
    requested_aspect(settings)
    if settings.negative is not None and not is_utf8(settings.negative):  # else the tokenizer fails, after loading
        raise GenerationError(f"the negative prompt {settings.negative!a} is not UTF-8 text (another encoding?)")
    if settings.sampler and settings.sampler != "folder":
        try:
            get_sampler(settings.sampler)
        except ValueError as error:
            raise GenerationError(str(error)) from error
    if settings.steps is not None:
        check_steps_for(settings.sampler, settings.steps)


def negative_prompt(text: str | None) -> str | None:
    """A blank negative prompt means none: the model's own null caption, the same in the CLI and the app
    (encoding "" would differ from the learned null caption of official models)."""
    return text if text and text.strip() else None

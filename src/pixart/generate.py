"""Prompts -> images: encode, pick the bucket, seeded noise, guided sampling, decode.

Used by `pixart generate`, `pixart serve`, the demo and training previews, so they all make the
same picture for the same settings. Image k of a run with seed s starts from the noise
`torch.randn(shape, generator=torch.Generator().manual_seed(s + k))` drawn on the CPU: what
diffusers' pipeline draws for generator=[Generator().manual_seed(s + k) for k ...], so a user
comparing the two starts from the same noise.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from pixart.data.buckets import bucket_table, closest_bucket
from pixart.diffusion.guidance import learned_null_caption
from pixart.diffusion.objective import shift_at
from pixart.diffusion.schedulers import (
    SAMPLERS,
    get_sampler,
    most_steps_starting_at_the_top,
    repeats_a_level,
    starts_below_the_top,
)
from pixart.encoders.codecs import ImageCodec, load_codec, to_uint8
from pixart.encoders.text import TextEncoder, check_max_length, load_text_encoder, minilm_folder, warn_truncated
from pixart.generation_settings import (
    GeneratedImage,
    GenerationError,
    Settings,
    check_request,
    check_steps_for,
    check_types,
    negative_prompt,
    requested_aspect,
    requested_size,
)
from pixart.model.pixart import PixArt
from pixart.model.regional import compile_blocks
from pixart.modelfolder import ModelSpec, load_components, read_spec
from pixart.quiet import silenced_library_progress_bars
from pixart.sample import sample


def read_scheduler(folder: Path) -> tuple[Any, dict]:
    """A diffusers scheduler folder's class and config, from which make_scheduler builds each run's."""
    import diffusers

    class_name = json.loads((folder / "scheduler_config.json").read_text())["_class_name"]
    kind = getattr(diffusers, class_name)
    return kind, kind.load_config(folder)


def micro_conditions(spec: ModelSpec, key: str, height: int, width: int) -> dict[str, torch.Tensor]:
    """PixArtMS's size and aspect-ratio conditions for an image generated at `height` x `width` (bucket `key`).

    The size is the bucket's in pixels (official inference and diffusers alike); the aspect ratio is the
    bucket's key or the exact height / width, as `spec.aspect_condition` says.
    """
    aspect = float(key) if spec.aspect_condition == "bucket" else height / width
    return {"img_hw": torch.tensor([[float(height), float(width)]]), "aspect_ratio": torch.tensor([aspect])}


def resize_cover_crop_tensor(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 3, h, w) -> (B, 3, height, width): scale to cover, centre crop (diffusers' binning does this)."""
    h, w = images.shape[-2:]
    scale = max(height / h, width / w)
    # Truncated as diffusers does (rounding resampled to another size for 38% of the 512 px requests); never
    # below the target, which float error could otherwise give on the covering side.
    new_h, new_w = max(int(h * scale), height), max(int(w * scale), width)
    images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return images[..., top : top + height, left : left + width]


ENCODE_CHUNK = 32  # prompts per text-encoder call


# An asked aspect ratio further than this from its bucket's key is said: a model of one bucket draws every
# aspect square, while the multi-aspect tables' keys lie within 14.3% of any ratio in their range (3.5 between
# 3.0 and 4.0, their widest gap)
ASPECT_TOLERANCE = 0.15


class TextToImage:
    """A loaded model (transformer, text encoder, codec) that turns prompts into images."""

    def __init__(
        self,
        transformer: PixArt,
        text_encoder: TextEncoder | None,
        codec: ImageCodec,
        spec: ModelSpec,
        *,
        scheduler_folder: Path | None = None,
        text_loader: Callable[[], TextEncoder] | None = None,
    ) -> None:
        self.transformer = transformer
        self._text_encoder = text_encoder
        self._text_loader = text_loader
        self.codec = codec
        self.spec = spec
        self.scheduler_folder = scheduler_folder  # its scheduler read at once (the property below)
        self.resolution = transformer.config.input_size * codec.downsample
        if spec.buckets:
            ordered = sorted(spec.buckets.items(), key=lambda kv: float(kv[0]))
            self.table = {key: (int(h), int(w)) for key, (h, w) in ordered}
        else:
            # sides the codec and the patches both divide: a 128 px model with an 8x codec got 64x232
            # (latent 8x29, which patch 2 does not divide) and failed once the prompts were encoded
            multiple = codec.downsample * transformer.config.patch_size
            self.table = bucket_table(self.resolution, inference=True, multiple=multiple)

    def compile(self) -> None:
        """torch.compile the transformer in place: each block on a GPU, the whole model on a CPU.

        Measured (BENCHMARKS.md), the first batch paying the compilation either way:
        - H100, bf16: compiled per block, a forward ran 1.13-1.16x faster than eager at 256-1024 px. The
          whole model with CUDA graphs (this method's earlier choice) sampled 1024 px, 20 steps with
          guidance, in 0.94-0.95 s against 0.76-0.78 s eager; compiled whole, a 1024 px forward ran 0.97x
          eager (77.3 ms against 74.8 ms). Per block, it compiles in seconds (one graph serves every block)
          and sampled the same 1024 px run in 0.67 s against 0.75 s eager.
        - This project's 2-core CPU, fp32: the whole model's sampler step took 176 ms, per block 188 ms,
          eager 220 ms.
        The images stay those of the eager model up to floating-point rounding.
        """
        if self.transformer.device.type == "cuda":
            compile_blocks(self.transformer)
        else:
            self.transformer.compile()

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        vae: str | Path | None = None,
        text_encoder: str | Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        text_device: torch.device | str | None = None,
        text_dtype: torch.dtype | None = None,
        vae_tiling: bool = False,
        load_in_8bit: bool = False,
    ) -> TextToImage:
        """Load what `path` names: a model folder of ours (the demo's model/), a training run (its EMA weights,
        else final.safetensors; or a run's final.safetensors or checkpoints/step-N.pt), a diffusers PixArt
        pipeline folder, or bare transformer weights with `vae` and `text_encoder` folders beside them (`vae`
        may be "pixels" for a model trained on pixels, `text_encoder` "minilm" for the bundled MiniLM). The
        text encoder loads at the first prompt, on `text_device` (default: `device`); `dtype` is the
        transformer's (bf16 on a GPU halves its memory); `vae_tiling` decodes large images in tiles, and
        `load_in_8bit` loads T5 in 8 bits (bitsandbytes)."""
        components = read_spec(path, vae=vae, text_encoder=text_encoder)
        kind = components[0].text_encoder
        if load_in_8bit and kind != "t5":  # it would be ignored, yet recorded with the images: said before loading
            raise GenerationError(f"8-bit loading is for T5; this model's text encoder is {kind}")
        if vae_tiling and components[0].codec != "sd-vae":  # as for 8-bit: ignored, yet recorded with the images
            raise GenerationError(f"tiled decoding is for the SD VAE; this model's codec is {components[0].codec}")
        spec, transformer, text_folder, tokenizer, codec_folder, scheduler = load_components(
            path, device=device, dtype=dtype, components=components
        )
        codec = load_codec(
            spec.codec, codec_folder, **({"device": device, "tiling": vae_tiling} if spec.codec == "sd-vae" else {})
        )
        if codec.latent_channels != transformer.config.in_channels:  # else a shape error deep in the first step
            raise GenerationError(
                f"the {spec.codec} codec makes {codec.latent_channels}-channel latents and the model takes "
                f"{transformer.config.in_channels}: give the codec it was trained with (--vae)"
            )

        def text_loader() -> TextEncoder:
            return load_text_encoder(
                spec.text_encoder,
                text_folder,
                tokenizer_folder=tokenizer,
                max_length=spec.text_max_length,
                **({"clean": spec.clean_captions} if spec.text_encoder == "t5" else {}),
                device=text_device or device,
                dtype=text_dtype or torch.float32,
                load_in_8bit=load_in_8bit,
            )

        try:  # said now, in one line, not as a traceback from the first prompt's encoding
            check_max_length(text_folder or minilm_folder(), spec.text_max_length, spec.text_encoder)
        except ValueError as error:
            raise GenerationError(f"{error} (text_max_length of {path})") from None
        return cls(transformer, None, codec, spec, scheduler_folder=scheduler, text_loader=text_loader)

    # -- text -------------------------------------------------------------------------------------

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None or self._text_encoder.model is None:
            if self._text_loader is None:
                raise GenerationError("the text encoder was freed and this pipeline has no way to load it again")
            encoder = self._text_loader()
            expected = self.transformer.config.caption_channels
            if encoder.width != expected:  # else a shape error in the middle of sampling
                raise GenerationError(
                    f"the text encoder {encoder.folder} gives {encoder.width}-wide features; this transformer "
                    f"reads {expected}-wide captions: give the text encoder it was trained with"
                )
            self._text_encoder = encoder
        return self._text_encoder

    def free_text_encoder(self) -> None:
        if self._text_encoder is not None:
            self._text_encoder.free()
            self._text_encoder = None

    def encode(self, prompts: list[str], negative: str | None = None) -> tuple[tuple, list[int]]:
        """(cond, cond_mask, null, null_mask), each batch len(prompts), in the host's memory (a long prompts
        file's T5-XXL features, 2 MB a prompt, would fill a GPU: each sampling batch takes its rows there), and
        the tokens truncation dropped from each prompt (for callers that report it)."""
        # In chunks: a 1,000-line prompts file was one text-encoder batch (T5-XXL's activations for all of it
        # at once). Padded to max_length, every chunk's features have one shape.
        parts = [self.text_encoder.encode(prompts[i : i + ENCODE_CHUNK]) for i in range(0, len(prompts), ENCODE_CHUNK)]
        dropped = [n for part in parts for n in part.dropped]
        warn_truncated(prompts, dropped, self.text_encoder.max_length)
        dtype = self.transformer.dtype
        cond = torch.cat([part.features.to("cpu", dtype) for part in parts])  # (B, L, C)
        cond_mask = torch.cat([part.mask.cpu() for part in parts])  # (B, L)
        if self.spec.null_caption == "learned":
            table = learned_null_caption(self.transformer, cond_mask[:1])[0].detach().to("cpu", dtype)  # (1, L, C)
            # An empty prompt is the unconditional image: the null caption the model learned (caption dropout
            # trains it), not the text encoder's features of "", which such a model never trained on
            cond[torch.tensor([not prompt.strip() for prompt in prompts])] = table
        if negative is None and self.spec.null_caption == "learned":
            null, null_mask = table.expand(len(prompts), -1, -1), cond_mask
        else:  # diffusers semantics: the encoded negative (default: empty) prompt with its own mask
            neg = self.text_encoder.encode([negative or ""])  # once, for every prompt (it was once per prompt)
            null = neg.features.to("cpu", dtype).expand(len(prompts), -1, -1)  # (B, L, C)
            null_mask = neg.mask.cpu().expand(len(prompts), -1)  # (B, L)
        return (cond, cond_mask, null, null_mask), dropped

    # -- sizes ------------------------------------------------------------------------------------

    def resolve_size(self, settings: Settings) -> tuple[str, tuple[int, int], tuple[int, int]]:
        """(bucket key, generation size, output size) for the requested size or aspect."""
        if size := requested_size(settings):
            key, bucket = closest_bucket(*size, self.table)
            return key, bucket, size
        if aspect := requested_aspect(settings):
            key, bucket = closest_bucket(*aspect, self.table)
            if abs(float(key) / (aspect[0] / aspect[1]) - 1) > ASPECT_TOLERANCE:  # the bucket's own ratio, as keyed
                keys = sorted(float(k) for k in self.table)
                held = f"only {keys[0]}" if len(keys) == 1 else f"{len(keys)} from {keys[0]} to {keys[-1]}"
                print(
                    f"warning: this model's aspect ratios (height over width) are {held}: {settings.aspect} is drawn "
                    f"at {bucket[0]}x{bucket[1]}; ask for a size (--size, or Settings height and width) to have the "
                    "image resized and cropped to it",
                    file=sys.stderr,
                )
            return key, bucket, bucket
        key, bucket = closest_bucket(1, 1, self.table)
        return key, bucket, bucket

    # -- generation -------------------------------------------------------------------------------

    def generate(
        self,
        prompts: list[str] | str,
        settings: Settings | None = None,
        *,
        seed: int = 0,
        num_images: int = 1,
        batch_size: int = 4,
        progress: bool = True,
        low_memory: bool = False,
        skip: int = 0,
    ) -> list[GeneratedImage]:
        """Every image of `generate_batches` (the same arguments), in order: num_images of each prompt, image k
        drawn from seed + k."""
        batches = self.generate_batches(
            prompts,
            settings,
            seed=seed,
            num_images=num_images,
            batch_size=batch_size,
            progress=progress,
            low_memory=low_memory,
            skip=skip,
        )
        return [image for batch in batches for image in batch]

    def generate_batches(
        self,
        prompts: list[str] | str,
        settings: Settings | None = None,
        *,
        seed: int = 0,
        num_images: int = 1,
        batch_size: int = 4,
        progress: bool = True,
        low_memory: bool = False,
        skip: int = 0,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[list[GeneratedImage]]:
        """num_images images of each prompt (prompt-major; image k takes seed + k), batch_size at a time, each
        batch given as soon as it is decoded: a caller writes it before the next is sampled, so a stop or a
        failure keeps what was made. `skip` leaves out the first images of that order (the rest of a stopped
        run: the same images, as each draws its noise from its own seed). `stop`, asked before each sampler
        step, ends the run with pixart.sample.SamplingStopped (the batches given before are whole)."""
        if isinstance(prompts, str):  # one prompt, not one per character
            prompts = [prompts]
        if not prompts:
            raise GenerationError('no prompt given: pass a list of at least one ("" draws an unconditional image)')
        settings = settings or Settings()
        check_types(settings)  # before a field is used
        settings = dataclasses.replace(settings, negative=negative_prompt(settings.negative))
        check_request(
            settings,
            num_images,
            batch_size,
            seed=seed,
            total_images=len(prompts) * num_images,
            prompts=prompts,
            skip=skip,
        )
        sampler_name, steps = self.resolve_sampler(settings)
        cfg = self.spec.cfg_scale if settings.cfg_scale is None else settings.cfg_scale
        # diffusers guides only above 1 (below, the conditional branch alone); the official sampler mixes the
        # two branches at any scale but 1 (0 is the unconditional model). Each model family as its own code.
        guidance = cfg if cfg > 1 or self.spec.null_caption == "learned" else 1.0
        key, (gen_h, gen_w), (out_h, out_w) = self.resolve_size(settings)

        jobs = [(p, k) for p in prompts for k in range(num_images)][skip:]  # prompt-major, like diffusers
        unique = list(dict.fromkeys(p for p, _ in jobs))  # a skipped prompt is not encoded
        with nullcontext() if progress else silenced_library_progress_bars():  # the text encoder's loading bar
            (cond, cond_mask, null, null_mask), dropped = self.encode(unique, settings.negative)
        if low_memory:
            self.free_text_encoder()
        row = {p: i for i, p in enumerate(unique)}
        f = self.codec.downsample
        shape = (self.codec.latent_channels, gen_h // f, gen_w // f)
        patch = self.transformer.config.patch_size
        tokens = (shape[-2] // patch) * (shape[-1] // patch)
        micro = micro_conditions(self.spec, key, gen_h, gen_w) if self.transformer.config.micro_conditions else {}
        record = {
            "negative": settings.negative,
            "sampler": sampler_name,
            "steps": steps,
            "cfg_scale": cfg,
            "size": [out_h, out_w],
            "bucket": key,
            "generated_size": [gen_h, gen_w],
            "dtype": str(self.transformer.dtype).removeprefix("torch."),  # bf16 and fp32 draw different images
        }
        device = self.transformer.device
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            seeds = [seed + skip + start + i for i in range(len(chunk))]
            generators = [torch.Generator().manual_seed(s) for s in seeds]
            noise = torch.cat([torch.randn((1, *shape), generator=g) for g in generators])
            idx = torch.tensor([row[p] for p, _ in chunk])
            latents = sample(
                self.transformer,
                # fp32 whatever the transformer's dtype, as the official inference keeps it: the sampler's
                # state (latents, a solver's history) rounded to bf16 at every step was 4-10x further off
                noise.to(device),
                cond[idx].to(device),
                cond_mask[idx].to(device),
                null[idx].to(device),
                null_mask[idx].to(device),
                scheduler=self.make_scheduler(sampler_name),
                steps=steps,
                cfg_scale=guidance,
                generator=generators if len(generators) > 1 else generators[0],
                progress=progress,
                # as trained: the shift grows with the image where the model trained with shift_base_tokens
                flow_shift=shift_at(self.spec.flow_shift, self.spec.shift_base_tokens, tokens),
                stop=stop,
                **micro,
            )
            images = self.codec.decode(latents.float())
            if (out_h, out_w) != (gen_h, gen_w):
                images = resize_cover_crop_tensor(images, out_h, out_w)
            yield [
                GeneratedImage(Image.fromarray(pixels), prompt, s, dict(record), dropped_tokens=dropped[row[prompt]])
                for (prompt, _), s, pixels in zip(chunk, seeds, to_uint8(images).numpy())
            ]

    def default_sampler(self) -> str:
        return "folder" if self.scheduler_folder is not None else self.spec.sampler

    def resolve_sampler(self, settings: Settings) -> tuple[str, int]:
        """(sampler name, steps): the user's choice, else the model's defaults, checked against its objective."""
        name = settings.sampler or self.default_sampler()
        choices = [n for n, s in SAMPLERS.items() if s.objective == self.spec.objective]  # this model's samplers
        if name == "folder":  # a diffusers folder's own scheduler
            if self.scheduler_folder is None:
                raise GenerationError(
                    f"sampler 'folder' is a diffusers folder's own scheduler, and this model has none: choose one of "
                    f"{choices}"
                )
            steps = settings.steps if settings.steps is not None else self.spec.default_steps("folder")
            check_steps_for("folder", steps)  # the range first: the scheduler cannot be set outside it
            scheduler = self.make_scheduler("folder")
            try:
                scheduler.set_timesteps(steps)
            except ValueError as error:  # its own limits: an LCM scheduler takes at most 50 steps
                raise GenerationError(
                    f"this model's scheduler ({type(scheduler).__name__}) refuses {steps} steps: {error}"
                ) from None
            if repeats_a_level(scheduler):
                raise GenerationError(
                    f"this model's scheduler ({type(scheduler).__name__}) repeats a noise level at {steps} steps, "
                    "and its update divides by the gap between the two (NaN images): use fewer steps"
                )
            if float(scheduler.timesteps.max()) == 0:  # DDIM's leading spacing at 1 step: the noise comes back
                raise GenerationError(
                    f"this model's scheduler ({type(scheduler).__name__}) samples only at timestep 0 at {steps} "
                    "steps, which does not denoise: use more steps"
                )
            if starts_below_the_top(scheduler, steps):  # DDIM's leading spacing: 251 steps start at t=750
                first = float(scheduler.timesteps.max())
                fewer = most_steps_starting_at_the_top(scheduler, steps)
                raise GenerationError(
                    f"this model's scheduler ({type(scheduler).__name__}) starts at timestep {first:.0f} of "
                    f"{scheduler.config.num_train_timesteps} at {steps} steps (its timestep spacing), which leaves "
                    f"noise in the image: use {fewer} steps"
                )
            variance = getattr(scheduler.config, "variance_type", None)
            if variance in ("learned", "learned_range") and not getattr(self.transformer.config, "learn_sigma", True):
                raise GenerationError(  # diffusers would fail inside its step on the missing variance
                    f"this model's scheduler ({type(scheduler).__name__}, variance_type {variance}) needs the "
                    f"learned variance this transformer does not predict (learn_sigma is off): choose one of {choices}"
                )
        else:
            try:
                sampler = get_sampler(name)
            except ValueError as error:
                raise GenerationError(str(error)) from error
            if sampler.objective != self.spec.objective:
                raise GenerationError(
                    f"sampler {name!r} is for {sampler.objective} models; this model was trained "
                    f"with {self.spec.objective}: choose one of {choices}"
                )
            if sampler.needs_variance and not getattr(self.transformer.config, "learn_sigma", True):
                raise GenerationError(
                    f"sampler {name!r} needs the learned variance this model does not predict (learn_sigma is "
                    "off): choose another, e.g. dpm-solver++"
                )
            steps = settings.steps if settings.steps is not None else self.spec.default_steps(name)
            check_steps_for(name, steps)  # the model's defaults too
        return name, steps

    @property
    def scheduler_folder(self) -> Path | None:
        """A diffusers folder's own scheduler/ (the 'folder' sampler), or None."""
        return self._scheduler_folder

    @scheduler_folder.setter
    def scheduler_folder(self, folder: Path | None) -> None:
        # (its class, its config), read now: a server whose model folder went away later kept sampling
        self._scheduler_folder = folder
        self._folder_scheduler = None if folder is None else read_scheduler(folder)

    def make_scheduler(self, name: str) -> Any:  # a sampler name, or a diffusers scheduler
        """A sampler name, or the diffusers folder's own scheduler ('folder')."""
        if name != "folder":
            return name
        if self.scheduler_folder is None:  # resolve_sampler refuses "folder" without one first
            raise ValueError("sampler 'folder' needs a model folder with a scheduler/ folder (diffusers layout)")
        assert self._folder_scheduler is not None  # read with the folder
        kind, config = self._folder_scheduler
        return kind.from_config(config)  # a new one each time: a scheduler keeps the state of its run

    def with_spec(self, **changes: Any) -> TextToImage:
        clone = TextToImage(
            self.transformer,
            self._text_encoder,
            self.codec,
            dataclasses.replace(self.spec, **changes),
            scheduler_folder=self.scheduler_folder,
            text_loader=self._text_loader,
        )
        return clone

"""Sample grids during training: fixed prompts (or classes) and fixed seeds, with the EMA weights."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pixart.diffusion.guidance import CaptionConditioned, learned_null_caption
from pixart.diffusion.objective import flow_shift_for
from pixart.diffusion.schedulers import default_sampler
from pixart.encoders.codecs import ImageCodec, load_codec, to_uint8
from pixart.grids import image_grid
from pixart.model.dit import DiT
from pixart.outputs import save_png
from pixart.sample import sample
from pixart.train.config import TrainConfig
from pixart.train.distributed import World, gather_full
from pixart.train.init import build_model

if TYPE_CHECKING:
    from pixart.data.dataset import FeatureDataset


class LabelsAsCaptions(nn.Module):
    """Lets the caption-guided sampler drive a class-conditional DiT: y (B, 1, 1) holds the label."""

    def __init__(self, dit: DiT):
        super().__init__()
        self.dit = dit
        self.config = dit.config

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        img_hw: torch.Tensor | None = None,
        aspect_ratio: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.dit(x, t, y[:, 0, 0].long())


def check_preview_models(stage: str, info: dict) -> None:
    """FileNotFoundError unless the codec (and, for a text-to-image stage, the text encoder) that dataset.json
    `info` names are on this machine, read off their files: features prepared elsewhere reached the first
    preview grid (or the end of a finished run) before the missing VAE failed it."""
    from pixart.encoders.codecs import check_vae_folder
    from pixart.encoders.folder_files import MissingModel
    from pixart.encoders.text import ENCODERS

    codec, text = info.get("codec", {}), info.get("text_encoder", {})
    needed = [("image codec", codec.get("kind", "sd-vae"), codec.get("path"))]
    if stage == "t2i":
        needed.append(("text encoder", text.get("kind", "t5"), text.get("path")))
    for what, kind, path in needed:
        if kind in ("pixels", "minilm") and path is None:  # nothing to load, or the bundled MiniLM
            continue
        try:
            if path is None:
                raise MissingModel("it records no path to it")
            if not Path(path).exists():
                raise MissingModel(f"{path} is not on this machine")
            if kind == "sd-vae":
                check_vae_folder(path)
            elif kind in ENCODERS and what == "text encoder":
                ENCODERS[kind].check_folder(Path(path))
        except MissingModel as error:  # the reason alone: the loaders' advice names options train does not have
            raise FileNotFoundError(
                f"previews (on by default) load the {what} the data's dataset.json names ({kind}, {path}), and "
                f"{error.reason}: make it available at that path, or set previews=false"
            ) from None


def preview_codec(info: dict) -> ImageCodec:
    codec = info.get("codec", {})
    return load_codec(codec.get("kind", "sd-vae"), codec.get("path"))


def preview_weights(inner: nn.Module, ema: dict[str, torch.Tensor], sharded: bool) -> dict[str, torch.Tensor]:
    """The whole state dict with the EMA parameters, in tensors training does not share.

    Under FSDP it gathers the shards, a collective: every rank calls it. Only the EMA and the buffers are
    gathered, not the training parameters the EMA replaces.
    """
    weights = {**{k: v for k, v in inner.state_dict().items() if k not in ema}, **ema}
    if sharded:
        return gather_full(weights)  # full_tensor() returns new tensors
    return {k: v.detach().clone() for k, v in weights.items()}


class Previewer:
    """Encodes the preview prompts once at start; `write` samples a grid and saves it as a PNG.

    It lives on the main rank. `write` takes whole (unsharded) weights, `preview_weights`: under FSDP
    every rank gathers them first, then the main rank samples from a plain copy of the model.
    """

    def __init__(
        self,
        config: TrainConfig,
        info: dict,
        run_dir: Path,
        world: World,
        latent_shape: tuple | None = None,
        prompts: list[str] | None = None,
        bucket: str | None = None,
    ):
        """`bucket`: the aspect key of latent_shape's training samples, the aspect condition a
        micro-conditioned model trained on (None: the grid's height / width)."""
        self.config = config
        self.info = info
        self.out = run_dir / "samples"
        self.world = world
        self.latent_shape = latent_shape
        self.bucket = bucket
        self.prompts = list(config.sample_prompts or prompts or [])
        self.codec: ImageCodec | None = None
        self.failed = False  # a preview that failed turns the rest off: they are not worth the run
        self.captions: tuple[torch.Tensor, torch.Tensor] | None = None  # (P, L, C_cap) features, (P, L) mask
        if config.stage == "t2i" and self.prompts:
            self.captions = self._encode(self.prompts)

    @classmethod
    def for_run(cls, config: TrainConfig, dataset: FeatureDataset, run_dir: Path, world: World) -> Previewer:
        """A run's previewer: sample_prompts, else the first 8 distinct captions of the training data."""
        first = range(min(64, len(dataset)))
        # the field the run trains on most: fields[0] showed alt-text prompts to a run on dense captions alone
        field = max(dataset.fields, key=lambda name: config.data.caption_probs.get(name, 0.0))
        captions = list(dict.fromkeys(dataset.record(i)["captions"][field] for i in first))
        sample_zero = dataset[0]
        shape, bucket = tuple(sample_zero["mean"].shape), sample_zero["bucket"]
        return cls(config, dataset.info, run_dir, world, latent_shape=shape, prompts=captions[:8], bucket=bucket)

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from pixart.encoders.text import load_text_encoder

        text = self.info.get("text_encoder", {})
        encoder = load_text_encoder(text.get("kind", "t5"), text.get("path"), max_length=self.config.model.max_length)
        encoded = encoder.encode(prompts)
        encoder.free()
        return encoded.features, encoded.mask

    def write_or_warn(self, weights: dict[str, torch.Tensor], step: int) -> Path | None:
        """`write`, where a failure (a codec that will not load, memory) is a warning that turns previews off
        for the rest of the run: it stopped the run, before its checkpoint or after its final weights."""
        if self.failed:
            return None
        try:
            return self.write(weights, step)
        except Exception as error:  # whatever it is, training goes on without its pictures
            self.failed = True
            print(
                f"[pixart train] warning: the preview grid at step {step} failed ({type(error).__name__}: "
                f"{error}); previews are off for the rest of this run, training goes on",
                file=sys.stderr,
                flush=True,
            )
            return None

    @torch.no_grad()
    def write(self, weights: dict[str, torch.Tensor], step: int) -> Path | None:
        """Sample the grid with `weights`, the model's whole state dict (EMA parameters in it), which the
        preview model takes as its own tensors: the caller passes tensors training no longer changes."""
        if self.latent_shape is None:
            return None
        with torch.device("meta"):  # no initialisation work and no draw from the training RNG
            model = build_model(self.config)
        model.load_state_dict(weights, assign=True)
        model.eval()
        device = next(model.parameters()).device
        denoiser: CaptionConditioned = model
        if isinstance(model, DiT):
            count = min(8, model.config.num_classes)
            labels = [str(i) for i in range(count)]
            cond = torch.arange(count, dtype=torch.float32).view(-1, 1, 1).to(device)
            mask = torch.ones(count, 1, device=device)
            null = torch.full_like(cond, float(model.config.null_class))
            null_mask = mask
            denoiser = LabelsAsCaptions(model)
        else:
            if self.captions is None:
                return None
            labels = self.prompts
            cond, mask = (tensor.to(device) for tensor in self.captions)
            null, null_mask = learned_null_caption(model, mask)
        noise = torch.cat(
            [
                torch.randn((1, *self.latent_shape), generator=torch.Generator().manual_seed(k))
                for k in range(len(labels))
            ]
        ).to(device)
        sampler = default_sampler(self.config.diffusion.objective)
        h, w = self.latent_shape[-2:]
        patch = model.config.patch_size
        # a flow model samples on the noise levels it trained on: the training's shift at this grid
        flow_shift = flow_shift_for(self.config.diffusion, (h // patch) * (w // patch))
        img_hw = aspect_ratio = None
        if getattr(model.config, "micro_conditions", False):
            f = int(self.info.get("codec", {}).get("downsample", 1))
            # the bucket's key, as training and generation condition on it (768x1344 is 0.57, not 0.5714)
            aspect = float(self.bucket) if self.bucket is not None else h / w
            img_hw, aspect_ratio = torch.tensor([[float(h * f), float(w * f)]]), torch.tensor([aspect])
        latents = sample(
            denoiser,
            noise,
            cond,
            mask,
            null,
            null_mask,
            scheduler=sampler,
            steps=self.config.sample_steps,
            cfg_scale=self.config.sample_cfg,
            progress=False,
            img_hw=img_hw,
            aspect_ratio=aspect_ratio,
            flow_shift=flow_shift,
        )
        if self.codec is None:
            self.codec = preview_codec(self.info)
        images = to_uint8(self.codec.decode(latents.float().cpu())).numpy()
        from PIL import Image

        grid = image_grid([Image.fromarray(im) for im in images], labels=labels, cell=max(96, max(h, w) * 2))
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"step-{step:07d}.png"
        save_png(grid, path)  # whole or absent: a resume never draws this step's grid again
        return path

"""Image codecs: pixels <-> the space the transformer works in.

- `SDVAE`: the Stable Diffusion VAE through diffusers' AutoencoderKL (PixArt-alpha's, sd-vae-ft-ema),
  scale factor from its config;
- `PixelCodec`: the identity on pixels in [-1, 1], for the embedded CPU default.

`encode` returns the raw posterior (mean, std) so datasets can store both and draw a fresh latent on
every load (EDM2's raw/final split); `to_model_space` turns them into what the model trains on, and
`decode` maps model-space latents back to images in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pixart.encoders.folder_files import MissingModel, read_config, weights_variant


class ImageCodec:
    kind = "codec"
    latent_channels: int
    downsample: int  # pixels per latent cell along each axis
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> raw posterior mean and std, each (B, C, H/f, W/f)."""
        raise NotImplementedError

    def decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_model_space(
        self, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw z ~ N(mean, std^2) and scale it: x0 = (z - shift) * scaling_factor."""
        z = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents -> (B, 3, H, W) images in [-1, 1]."""
        return self.decode_raw(latents / self.scaling_factor + self.shift_factor)


class PixelCodec(ImageCodec):
    """The identity: the transformer denoises RGB pixels directly (3 channels, no downsampling)."""

    kind = "pixels"
    latent_channels = 3
    downsample = 1

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images, torch.zeros_like(images)

    def decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1, 1)


def vae_folder(folder: str | Path) -> Path:
    """The VAE's own folder: `folder`, or the vae/ inside a pipeline folder."""
    folder = Path(folder)
    return folder / "vae" if (folder / "vae" / "config.json").is_file() else folder


def check_vae_folder(folder: str | Path) -> Path:
    """The VAE's own folder (see vae_folder); FileNotFoundError unless its config.json describes an
    AutoencoderKL, read without loading anything."""
    folder = vae_folder(folder)
    if not (folder / "config.json").is_file():
        raise MissingModel(
            f"no VAE in {folder} (expected config.json + diffusion_pytorch_model.safetensors, "
            "e.g. the vae/ folder of PixArt-alpha/PixArt-XL-2-512x512)",
            "point --vae at it",
        )
    try:
        config = read_config(folder)
    except ValueError as error:
        raise MissingModel(f"no VAE in {folder}: {error}") from None
    # a transformers folder (T5, say) names a model_type and no class: diffusers took it for an AutoencoderKL
    # and failed on a missing diffusion_pytorch_model.bin
    described = config.get("_class_name") or (f"{config['model_type']} model" if "model_type" in config else None)
    if (described or "AutoencoderKL") != "AutoencoderKL":  # loaded anyway, it is random weights and a traceback
        raise MissingModel(
            f"no VAE in {folder}: its config.json describes a {described}",
            "point --vae at an AutoencoderKL folder (the vae/ folder of a diffusers pipeline, or the pipeline "
            "folder itself)",
        )
    return folder


class SDVAE(ImageCodec):
    """diffusers AutoencoderKL from a local folder (a vae/ folder, or a pipeline folder holding vae/)."""

    kind = "sd-vae"

    def __init__(
        self,
        folder: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        tiling: bool = False,
    ):
        from diffusers import AutoencoderKL

        folder = check_vae_folder(folder)
        self.folder = folder
        variant = weights_variant(folder, "diffusers")  # a folder of fp16 files alone, say
        self.vae = (
            AutoencoderKL.from_pretrained(folder, dtype=dtype, variant=variant, local_files_only=True).to(device).eval()
        )
        config = self.vae.config
        self.latent_channels = config.latent_channels
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        if tiling:
            self.vae.enable_tiling()

    def set_tiling(self, enabled: bool) -> None:
        if enabled:
            self.vae.enable_tiling()
        else:
            self.vae.disable_tiling()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(images.to(self.vae.device, self.vae.dtype)).latent_dist
        return posterior.mean.float(), posterior.std.float()

    @torch.no_grad()
    def decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.device, self.vae.dtype)).sample.float()


def load_codec(kind: str, folder: str | Path | None = None, **kwargs: Any) -> ImageCodec:
    """The codec `kind` names; `folder` holds its weights (the SD VAE's folder, the shapes codec's file), and
    `kwargs` go to SDVAE (device, dtype, tiling)."""
    if kind == "pixels":
        return PixelCodec()
    if kind == "sd-vae":
        if folder is None:
            raise ValueError("the SD VAE needs a local folder (--vae DIR)")
        return SDVAE(folder, **kwargs)
    if kind == "shapes-ae":
        from pixart.encoders.shapes_ae import ShapesCodec

        if folder is None:  # else Path(None) fails with a TypeError that names no file
            raise ValueError("the shapes codec needs its weights file (a shapes-codec-*.safetensors)")
        return ShapesCodec.load(folder)
    raise ValueError(f"unknown image codec {kind!r}; choose one of ['pixels', 'sd-vae', 'shapes-ae']")


def codec_info(codec: ImageCodec) -> dict:
    """What dataset.json and model.json record so others can load the same codec and scale latents."""
    folder = getattr(codec, "folder", None)
    return {
        "kind": codec.kind,
        "path": str(Path(folder).resolve()) if folder else None,
        "latent_channels": codec.latent_channels,
        "downsample": codec.downsample,
        "scaling_factor": codec.scaling_factor,
        "shift_factor": codec.shift_factor,
    }


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, rounded as diffusers' image processor does."""
    images = (images / 2 + 0.5).clamp(0, 1)
    return (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu()


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0

"""A small autoencoder for the shapes world: the embedded default's latent space.

PixArt works in SD-VAE latents so the transformer sees a short token grid while the decoder draws
detail. The embedded CPU demo does the same at toy scale: an autoencoder trained on shapes-world images
(about a minute and a half on 2 cores, then cached) whose 12x downsampling maps each 12 px cell of a
36 px canvas to one latent cell, so a scene is a 3x3 token grid at patch 1. Edges and shapes come from
the decoder; the transformer only has to say what sits in each cell.

Training adds Gaussian noise to the latent (a cheap stand-in for a VAE's KL term) so the decoder
tolerates the imperfect latents a diffusion model samples.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pixart.encoders.codecs import ImageCodec
from pixart.files import atomic_write, cache_dir

AE_VERSION = "shapes-ae-2"


class ShapesAE(nn.Module):
    """(B, 3, H, W) in [-1, 1] <-> (B, C, H/d, W/d), d = `downsample` (4 by default; the codec trained for the
    shapes world below uses 12); H and W multiples of d.

    Mostly matrix products on d x d patches (fast on CPUs, where small convolutions are not), with one
    3x3 convolution at latent resolution on each side so a patch sees its neighbours: the decoder
    draws each patch from the codes around it, which is what makes edges line up.
    """

    def __init__(self, latent_channels: int = 8, width: int = 96, downsample: int = 4):
        super().__init__()
        self.latent_channels = latent_channels
        self.width = width
        self.downsample = downsample
        patch = downsample * downsample * 3
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, downsample, stride=downsample),
            nn.GELU(),  # one linear map per f x f patch
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, latent_channels, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 1),
            nn.GELU(),
            nn.Conv2d(2 * width, patch, 1),
            nn.PixelShuffle(downsample),  # (B, 3, H, W)
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.decoder(latents))


class ShapesCodec(ImageCodec):
    """The trained ShapesAE as an image codec; latents scaled to unit variance like the SD VAE's."""

    kind = "shapes-ae"

    def __init__(self, ae: ShapesAE, scaling_factor: float, shift_factor: float, path: Path | None = None):
        self.ae = ae.eval()
        self.downsample = ae.downsample
        self.latent_channels = ae.latent_channels
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)
        self.folder = path  # recorded in dataset.json / model.json so others can load the same codec
        self.train_seconds: float | None = None  # how long train_shapes_ae took; None when loaded from a file

    @property
    def device(self) -> torch.device:
        return next(self.ae.parameters()).device

    # Inputs move to the codec's device (it stays where it was loaded, usually the CPU, while the
    # transformer may be on a GPU), as the SD VAE wrapper does.
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.ae.encode(images.to(self.device, torch.float32))
        return mean, torch.zeros_like(mean)

    @torch.no_grad()
    def decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        return self.ae.decode(latents.to(self.device, torch.float32))

    def save(self, path: Path) -> Path:
        metadata = {
            "format": AE_VERSION,
            "latent_channels": str(self.latent_channels),
            "width": str(self.ae.width),
            "downsample": str(self.ae.downsample),
            "scaling_factor": repr(self.scaling_factor),
            "shift_factor": repr(self.shift_factor),
        }
        state = {k: v.contiguous() for k, v in self.ae.state_dict().items()}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
        self.folder = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> ShapesCodec:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no shapes codec at {path}; `pixart demo` trains and caches one")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as error:  # noqa: BLE001 - said in one line below, not as a traceback
            if path.suffix == ".safetensors":  # one of ours cut short, or damaged: not "an SD VAE's file"
                raise FileNotFoundError(f"{path} cannot be read ({error}): cut short or damaged?") from None
            meta = {"format": f"not safetensors ({path.suffix or 'no suffix'})"}  # an SD VAE's .ckpt or .bin
        if meta.get("format") != AE_VERSION:  # an SD VAE's weights file, say: its folder is what loads
            raise FileNotFoundError(
                f"{path} is not a shapes codec file ({AE_VERSION}; its format: {meta.get('format')}); an SD VAE is "
                "given as its folder (config.json and weights)"
            )
        ae = ShapesAE(int(meta["latent_channels"]), int(meta["width"]), int(meta.get("downsample", 4)))
        ae.load_state_dict(load_file(path))
        return cls(ae, float(meta["scaling_factor"]), float(meta["shift_factor"]), path)


def object_weights(images: torch.Tensor, boost: float = 20.0) -> torch.Tensor:
    """(B, 1, H, W) loss weights: objects cover a few percent of a shapes-world image, so pixels away from the
    background colour (the per-image median) weigh `boost` times more; otherwise the AE learns blurry blobs."""
    background = images.flatten(2).median(dim=2).values[:, :, None, None]  # (B, 3, 1, 1)
    return 1.0 + boost * ((images - background).abs().amax(1, keepdim=True) > 0.1).float()


def train_shapes_ae(
    *,
    latent_channels: int = 16,
    width: int = 128,
    downsample: int = 12,
    steps: int = 4000,
    batch_size: int = 64,
    seed: int = 0,
    latent_noise: float = 0.05,
    sizes: tuple = ((36, 36), (36, 72), (72, 36)),
    progress: bool = True,
) -> ShapesCodec:
    """Train on freshly rendered shapes-world images at `sizes` (the first size in 70% of the steps).

    The defaults suit the demo: 36 px canvases whose 12 px grid cells each become one latent cell, so a
    3x3 scene is a 3x3 token grid; the wide and tall canvases are the multi-aspect stage's buckets.
    """
    from tqdm.auto import tqdm

    from pixart.data import synthetic_dataset
    from pixart.encoders.codecs import from_uint8

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae = ShapesAE(latent_channels, width, downsample)
    optimizer = torch.optim.AdamW(ae.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    pools = [
        from_uint8(torch.from_numpy(synthetic_dataset.make_dataset(4096 if i == 0 else 1024, seed + i, h, w).images))
        for i, (h, w) in enumerate(sizes)
    ]  # each (N, 3, h, w)
    started = time.time()
    bar = tqdm(range(steps), desc="training the shapes autoencoder", disable=not progress, leave=False)
    for step in bar:
        choice = 0 if step % 10 < 7 or len(pools) == 1 else 1 + step % (len(pools) - 1)
        pool = pools[choice]
        images = pool[torch.randint(0, len(pool), (batch_size,), generator=generator)]
        latents = ae.encode(images)
        noisy = latents + latent_noise * latents.detach().std() * torch.randn(latents.shape, generator=generator)
        error = ae.decode(noisy) - images
        # L1 + L2 keeps edges sharp; the small latent penalty keeps the code scale bounded.
        loss = (object_weights(images) * (error.abs() + error.square())).mean() + 1e-3 * latents.square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    ae.eval()
    with torch.no_grad():
        latents = ae.encode(pools[0][:1024])
    codec = ShapesCodec(ae, scaling_factor=1.0 / latents.std().item(), shift_factor=latents.mean().item())
    codec.train_seconds = time.time() - started
    return codec


def load_or_train_shapes_codec(cache: Path | None = None, progress: bool = True, **kwargs: Any) -> ShapesCodec:
    """The cached codec for this world and these settings (defaults filled in), trained on first use."""
    import inspect

    from pixart.data.synthetic import WORLD_VERSION

    settings = {
        name: p.default for name, p in inspect.signature(train_shapes_ae).parameters.items() if name != "progress"
    }
    unknown = set(kwargs) - set(settings)
    if unknown:
        raise TypeError(f"unknown shapes codec settings {sorted(unknown)}")
    settings.update(kwargs)
    key = hashlib.sha1(f"{AE_VERSION}|{WORLD_VERSION}|{sorted(settings.items())}".encode()).hexdigest()[:12]
    path = (cache or cache_dir()) / f"shapes-codec-{key}.safetensors"
    if path.is_file():
        try:
            return ShapesCodec.load(path)
        except (SafetensorError, RuntimeError, OSError, ValueError) as error:  # cut short, damaged: as the probe
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"note: the cached codec {path} cannot be read ({reason}); training it again", file=sys.stderr)
    codec = train_shapes_ae(progress=progress, **settings)
    codec.save(path)
    return codec

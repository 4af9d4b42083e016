"""The attribute probe: a small CNN that reads a shapes-world image back into objects.

For each of the 9 grid cells it predicts whether the cell holds an object and, if so, the object's
colour, shape and size. A per-cell head handles positions and several objects without any matching.
It is trained on the world's exact ground truth (pixart.data.synthetic), then scores generated
images against their prompts (pixart.evaluate.probe_scores) and gives features for a Fréchet distance.

Images of any size and aspect are resized to PROBE_RESOLUTION x PROBE_RESOLUTION first: the grid is
relative to the canvas, so squeezing a non-square canvas keeps every object in its cell. Training mixes
square and non-square canvases (TRAIN_CANVASES) and adds 1-pixel shifts, blur, noise and colour jitter,
so softer, noisier generated images still read well. Outside that it degrades: objects more than about
a pixel (at 36 x 36) off their cell centre, and aspects beyond 3:4 / 4:3, lose shape accuracy first.

Training it, its held-out accuracy and its cache: pixart.evaluate.probe_training (`python -m
pixart.evaluate.probe_training` trains the full probe and prints its held-out accuracy and timing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pixart.data.synthetic import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    world_fingerprint,
)
from pixart.files import atomic_write

PROBE_RESOLUTION = 36  # 3 cells of 12 pixels; the network below assumes it
# Changes with the world's fingerprint, so a changed world never reuses a stale probe; bump the
# leading number when the network or its training changes.
PROBE_VERSION = f"probe-1-{world_fingerprint()}"
# 400 steps already read held-out images at >= 0.999 on every attribute; 600 also leave no systematic
# error on any single-object scene (all 1800 at four canvas sizes) for the seeds tried. About 30 s on 2 cores.
DEFAULT_STEPS = 600
PROBE_SEED = 0  # the seed eval trains its probe with (reports record it with the steps)
# (H, W) canvases the probe trains on: squares and aspects from 3:4 to 4:3.
TRAIN_CANVASES: tuple[tuple[int, int], ...] = ((32, 32), (48, 48), (64, 64), (48, 64), (64, 48), (36, 48), (48, 36))

COLOR_NAMES = tuple(COLORS)
NUM_CELLS = len(POSITIONS)
# Per-cell logits: occupancy, then colour, shape and size classes.
_HEAD_SPLIT = (1, len(COLOR_NAMES), len(SHAPES), len(SIZES))
IGNORE = -100  # target of an attribute in an empty cell (cross_entropy's ignore_index)


@dataclass(frozen=True)
class DetectedObject:
    position: str  # cell name, e.g. "top left"
    cell: int  # 0..8, row-major
    color: str
    shape: str
    size: str
    confidence: float  # probability that the cell is occupied


class ProbeNet(nn.Module):
    """(B, 3, 36, 36) in [-1, 1] -> features (B, 9 * F) and per-cell logits (B, 9, 1 + colours + shapes + sizes).

    Fully convolutional and aligned with the grid: a cell is 12 x 12 pixels, 4 x 4 units after the 3x3
    space-to-depth, and exactly one unit of the final 3 x 3 map, whose receptive field is the cell plus
    6 pixels on each side. Every cell shares the same weights, so a shape learnt in one cell is known in
    all nine (nine times the data per image), and the convolutions run at 12 x 12 or below (cheap on a CPU).
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), cell_features: int = 32):
        super().__init__()
        w1, w2, w3 = widths
        # Batch norm cuts the steps to a given accuracy by about three (shape is the slow attribute).
        self.body = nn.Sequential(
            nn.PixelUnshuffle(3),  # (B, 27, 12, 12)
            nn.Conv2d(27, w1, 3, padding=1, bias=False),
            nn.BatchNorm2d(w1),
            nn.ReLU(),
            nn.Conv2d(w1, w2, 4, stride=2, padding=1, bias=False),  # (B, w2, 6, 6); 4 wide keeps cells centred
            nn.BatchNorm2d(w2),
            nn.ReLU(),
            nn.Conv2d(w2, w3, 2, stride=2, bias=False),  # (B, w3, 3, 3): one unit per cell
            nn.BatchNorm2d(w3),
            nn.ReLU(),
            nn.Conv2d(w3, cell_features, 1),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(cell_features, sum(_HEAD_SPLIT), 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cells = self.body(x)  # (B, F, 3, 3)
        logits = self.head(cells).flatten(2).transpose(1, 2)  # (B, 9, 1 + C + S + Z), cells row-major
        return cells.flatten(1), logits  # features (B, F * 9)


def split_logits(logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(B, 9, 1 + C + S + Z) -> occupancy (B, 9), colour (B, 9, C), shape (B, 9, S), size (B, 9, Z)."""
    occupancy, color, shape, size = logits.split(_HEAD_SPLIT, dim=-1)
    return occupancy.squeeze(-1), color, shape, size


def resize_uint8(images: np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> uint8 (N, 3, R, R), antialiased bilinear.

    Resized as uint8 in channels-last layout: torch has a fast path for exactly that (about ten times
    quicker than float), and the probe's training pool is stored as uint8 anyway.
    """
    x = torch.as_tensor(images).permute(0, 3, 1, 2)  # (N, 3, H, W) view, channels-last in memory
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


def to_probe_input(images: np.ndarray | torch.Tensor, resolution: int = PROBE_RESOLUTION) -> torch.Tensor:
    """(N, 3, R, R) float32 in [-1, 1] from uint8 (N, H, W, 3) images or float (N, 3, H, W) in [-1, 1].

    uint8 input (numpy or torch) is channels-last, as rendered and as saved; float input is the
    channels-first [-1, 1] tensor a pixel-space sampler or a VAE decoder returns (clamped here).
    Any size and aspect is resized to R x R: the grid is relative to the canvas.
    """
    x = torch.as_tensor(images)
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (4 dims), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise ValueError(f"expected uint8 images as (N, H, W, 3), got shape {tuple(x.shape)}")
        return resize_uint8(x, resolution).float() / 127.5 - 1.0
    if x.shape[1] != 3:
        raise ValueError(f"expected float images as (N, 3, H, W), got shape {tuple(x.shape)}")
    x = x.float().clamp(-1.0, 1.0)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


class Probe:
    """A trained ProbeNet with the reading, feature and saving logic around it."""

    def __init__(self, net: ProbeNet, resolution: int = PROBE_RESOLUTION, version: str = PROBE_VERSION):
        self.net = net.eval()
        self.resolution = resolution
        self.version = version

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def _forward(self, images: np.ndarray | torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_probe_input(images, self.resolution)
        outputs = [self.net(x[i : i + chunk].to(self.device)) for i in range(0, len(x), chunk)]
        return torch.cat([f for f, _ in outputs]).cpu(), torch.cat([lg for _, lg in outputs]).cpu()

    def features(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, F) float32 penultimate features, for a Fréchet distance (pixart.evaluate.frechet)."""
        return self._forward(images)[0]

    def predict(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-cell probabilities: occupancy (N, 9), color (N, 9, C), shape (N, 9, S), size (N, 9, Z)."""
        return _probabilities(self._forward(images)[1])

    def read(self, images: np.ndarray | torch.Tensor, threshold: float = 0.5) -> list[list[DetectedObject]]:
        """The objects found in each image: cells whose occupancy probability exceeds `threshold`."""
        return _detections(self.predict(images), threshold)

    def read_with_features(
        self, images: np.ndarray | torch.Tensor, threshold: float = 0.5
    ) -> tuple[list[list[DetectedObject]], torch.Tensor]:
        """`read` and `features` from one pass over the images."""
        features, logits = self._forward(images)
        return _detections(_probabilities(logits), threshold), features

    def save(self, path: Path) -> None:
        """Weights and resolution to a safetensors file, written atomically (others may be reading)."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        metadata = {"version": self.version, "resolution": str(self.resolution)}
        atomic_write(Path(path), lambda tmp: save_file(state, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "cpu") -> Probe:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        resolution = int(metadata.get("resolution", PROBE_RESOLUTION))
        net = ProbeNet()
        net.load_state_dict(load_file(path))
        return cls(net.to(device), resolution, metadata.get("version", "unknown"))


# --- reading images -----------------------------------------------------------------------------------


def _probabilities(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    occupancy, color, shape, size = split_logits(logits)
    return {
        "occupancy": occupancy.sigmoid(),
        "color": color.softmax(-1),
        "shape": shape.softmax(-1),
        "size": size.softmax(-1),
    }


def _detections(p: dict[str, torch.Tensor], threshold: float) -> list[list[DetectedObject]]:
    color, shape, size = (p[k].argmax(-1).tolist() for k in ("color", "shape", "size"))
    found = []
    for i, occupancy in enumerate(p["occupancy"].tolist()):
        found.append(
            [
                DetectedObject(
                    POSITIONS[c], c, COLOR_NAMES[color[i][c]], SHAPES[shape[i][c]], SIZES[size[i][c]], occupancy[c]
                )
                for c in range(NUM_CELLS)
                if occupancy[c] > threshold
            ]
        )
    return found

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

`python -m pixart.evaluate.probe` trains the full probe and prints its held-out accuracy and timing.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pixart.data.synthetic import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    world_fingerprint,
)
from pixart.data.synthetic_dataset import make_dataset
from pixart.files import atomic_write
from pixart.files import cache_dir as default_cache_dir

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

_COLOR_NAMES = tuple(COLORS)
_NUM_CELLS = len(POSITIONS)
# Per-cell logits: occupancy, then colour, shape and size classes.
_HEAD_SPLIT = (1, len(_COLOR_NAMES), len(SHAPES), len(SIZES))
_IGNORE = -100  # target of an attribute in an empty cell (cross_entropy's ignore_index)


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


def _split(logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(B, 9, 1 + C + S + Z) -> occupancy (B, 9), colour (B, 9, C), shape (B, 9, S), size (B, 9, Z)."""
    occupancy, color, shape, size = logits.split(_HEAD_SPLIT, dim=-1)
    return occupancy.squeeze(-1), color, shape, size


def _resize_uint8(images: np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
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
        return _resize_uint8(x, resolution).float() / 127.5 - 1.0
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


# --- ground truth and training -----------------------------------------------------------------------


def scene_targets(scenes: list[Scene]) -> torch.Tensor:
    """(N, 9, 4) int64: per cell occupancy (0/1) and colour, shape, size indices (_IGNORE when empty)."""
    color_index = {c: i for i, c in enumerate(_COLOR_NAMES)}
    targets = np.full((len(scenes), _NUM_CELLS, 4), _IGNORE, dtype=np.int64)
    targets[..., 0] = 0
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            targets[i, POSITIONS.index(o.position)] = (
                1,
                color_index[o.color],
                SHAPES.index(o.shape),
                SIZES.index(o.size),
            )
    return torch.from_numpy(targets)


def _real_pool(
    num_images: int, seed: int, resolution: int, canvases: tuple[tuple[int, int], ...] = TRAIN_CANVASES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes-world images spread over `canvases`, as uint8 (N, 3, R, R), with (N, 9, 4) targets."""
    images, targets = [], []
    per_canvas = math.ceil(num_images / len(canvases))
    for k, (h, w) in enumerate(canvases):
        data = make_dataset(per_canvas, seed=seed * 1000 + k, height=h, width=w)
        images.append(_resize_uint8(data.images, resolution))  # (n, 3, R, R) uint8
        targets.append(scene_targets(data.scenes))
    return torch.cat(images)[:num_images], torch.cat(targets)[:num_images]


def _shift(images: torch.Tensor, generator: torch.Generator, reach: int = 1) -> torch.Tensor:
    """Each (C, R, R) image moved by up to `reach` pixels along each axis, edges replicated."""
    N, C, R, _ = images.shape
    padded = F.pad(images, (reach,) * 4, mode="replicate")  # (N, C, R + 2 reach, R + 2 reach)
    dy, dx = torch.randint(0, 2 * reach + 1, (2, N), generator=generator)
    rows = (torch.arange(R)[None, :] + dy[:, None])[:, None, :, None].expand(N, C, R, R + 2 * reach)
    cols = (torch.arange(R)[None, :] + dx[:, None])[:, None, None, :].expand(N, C, R, R)
    return padded.gather(2, rows).gather(3, cols)  # (N, C, R, R)


_BINOMIAL = torch.tensor([0.25, 0.5, 0.25])
_BLUR = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).expand(3, 1, 3, 3)  # (3, 1, 3, 3) depthwise kernel


def _jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image blur (half the images, random strength), colour gain and offset (+-3%) and Gaussian
    noise (sigma up to 0.04) on (B, 3, R, R) images in [-1, 1]: generated images are softer and noisier.
    """
    B = len(x)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), _BLUR, groups=3)  # (B, 3, R, R)
    strength = torch.rand(B, 1, 1, 1, generator=generator) * (torch.rand(B, 1, 1, 1, generator=generator) < 0.5)
    x = x + strength * (blurred - x)
    gain = 1 + 0.06 * (torch.rand(B, 3, 1, 1, generator=generator) - 0.5)
    bias = 0.06 * (torch.rand(B, 3, 1, 1, generator=generator) - 0.5)
    sigma = 0.04 * torch.rand(B, 1, 1, 1, generator=generator)
    return x * gain + bias + sigma * torch.randn(x.shape, generator=generator)


def probe_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Occupancy BCE over all cells plus attribute cross-entropies over occupied cells."""
    occupancy, color, shape, size = _split(logits)
    loss = F.binary_cross_entropy_with_logits(occupancy, targets[..., 0].float())
    for k, attribute in enumerate((color, shape, size), start=1):
        loss = loss + F.cross_entropy(attribute.flatten(0, 1), targets[..., k].flatten(), ignore_index=_IGNORE)
    return loss


def train_probe(
    seed: int = PROBE_SEED,
    steps: int = DEFAULT_STEPS,
    device: str | torch.device = "cpu",
    *,
    batch_size: int = 256,
    pool_size: int = 50_000,
    lr: float = 3e-3,
    progress: bool = False,
) -> Probe:
    """Train a probe from scratch on freshly generated shapes-world images; deterministic per seed on CPU.

    The images come from a pre-generated pool (seeds derived from `seed`), augmented on the fly. The
    global torch RNG is left as it was.
    """
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    pool_images, pool_targets = _real_pool(min(pool_size, steps * batch_size), seed + 1, PROBE_RESOLUTION)
    # Shifts once per pool image: generated objects are not always centred in their cells.
    pool_images = _shift(pool_images, generator)  # (N, 3, R, R) uint8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ProbeNet().to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    # Linear warm-up, then cosine decay to zero: the fastest reliable schedule on a fixed budget.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    net.train()
    bar = tqdm(range(steps), desc="training the shapes probe", disable=not progress, leave=False)
    for step in bar:
        index = torch.randint(0, len(pool_images), (batch_size,), generator=generator)
        x = _jitter(pool_images[index].float() / 127.5 - 1.0, generator).to(device)  # (B, 3, R, R)
        _, logits = net(x)
        loss = probe_loss(logits, pool_targets[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return Probe(net.eval())


# --- accuracy on real images -------------------------------------------------------------------------


def probe_accuracy(probe: Probe, images: np.ndarray | torch.Tensor, scenes: list[Scene]) -> dict[str, float]:
    """Accuracy against ground truth.

    color / shape / size: over all true objects, the attribute read at the object's cell.
    occupancy: over all cells of all images, occupied or not.
    position: over images, the set of occupied cells is exactly right.
    """
    p = probe.predict(images)
    targets = scene_targets(scenes)  # (N, 9, 4)
    occupied = targets[..., 0] == 1  # (N, 9)
    predicted = p["occupancy"] > 0.5  # (N, 9)
    result = {}
    for k, name in enumerate(("color", "shape", "size"), start=1):
        result[name] = (p[name].argmax(-1) == targets[..., k])[occupied].float().mean().item()
    result["occupancy"] = (predicted == occupied).float().mean().item()
    result["position"] = (predicted == occupied).all(dim=1).float().mean().item()
    return result


def held_out_accuracy(probe: Probe, num_images: int = 3500, seed: int = 10_000) -> dict[str, float]:
    """probe_accuracy on fresh real images over all training canvases, from seeds training never uses."""
    per_canvas = math.ceil(num_images / len(TRAIN_CANVASES))
    images, scenes = [], []
    for k, (h, w) in enumerate(TRAIN_CANVASES):
        data = make_dataset(per_canvas, seed=seed * 1000 + k, height=h, width=w)
        images.append(to_probe_input(data.images, probe.resolution))
        scenes.extend(data.scenes)
    return probe_accuracy(probe, torch.cat(images), scenes)


# --- cache -------------------------------------------------------------------------------------------


def load_or_train_probe(
    cache_dir: Path | None = None,
    *,
    seed: int = PROBE_SEED,
    steps: int = DEFAULT_STEPS,
    version: str = PROBE_VERSION,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Probe:
    """The cached probe for (version, seed, steps), training and caching it first if there is none."""
    path = Path(cache_dir or default_cache_dir()) / f"shapes-{version}-seed{seed}-steps{steps}.safetensors"
    if path.exists():
        try:
            return Probe.load(path, device)
        except (SafetensorError, RuntimeError, OSError, ValueError) as error:  # cut short, corrupt, another net
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"note: the cached probe {path} cannot be read ({reason}); training it again", file=sys.stderr)
    probe = train_probe(seed=seed, steps=steps, device=device, progress=progress)
    probe.version = version
    probe.save(path)
    return probe


# --- reading images -----------------------------------------------------------------------------------


def _probabilities(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    occupancy, color, shape, size = _split(logits)
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
                    POSITIONS[c], c, _COLOR_NAMES[color[i][c]], SHAPES[shape[i][c]], SIZES[size[i][c]], occupancy[c]
                )
                for c in range(_NUM_CELLS)
                if occupancy[c] > threshold
            ]
        )
    return found


def main(argv: list[str] | None = None) -> None:
    """Train the full probe, print its held-out accuracy per attribute and the wall-clock."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path, default=None, help="also write the weights here (.safetensors)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    probe = train_probe(seed=args.seed, steps=args.steps, progress=True)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    accuracy = held_out_accuracy(probe)
    # CPU time too: on a shared machine the wall-clock also counts other people's work.
    print(f"trained in {elapsed:.1f}s wall, {cpu:.1f}s CPU ({args.steps} steps, {args.threads} threads)")
    print("held-out accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
    if args.save:
        probe.save(args.save)


if __name__ == "__main__":
    main()

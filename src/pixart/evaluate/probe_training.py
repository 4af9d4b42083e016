"""Training the attribute probe (pixart.evaluate.probe) on the shapes world's exact ground truth, its
accuracy on held-out images, and the cache that trains it once per world, seed and step count.

`python -m pixart.evaluate.probe_training` trains the full probe and prints its held-out accuracy and timing.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError

from pixart.data.synthetic import POSITIONS, SHAPES, SIZES, Scene
from pixart.data.synthetic_dataset import make_dataset
from pixart.evaluate.probe import (
    COLOR_NAMES,
    DEFAULT_STEPS,
    IGNORE,
    NUM_CELLS,
    PROBE_RESOLUTION,
    PROBE_SEED,
    PROBE_VERSION,
    TRAIN_CANVASES,
    Probe,
    ProbeNet,
    resize_uint8,
    split_logits,
    to_probe_input,
)
from pixart.files import cache_dir as default_cache_dir

# --- ground truth and training -----------------------------------------------------------------------


def scene_targets(scenes: list[Scene]) -> torch.Tensor:
    """(N, 9, 4) int64: per cell occupancy (0/1) and colour, shape, size indices (IGNORE when empty)."""
    color_index = {c: i for i, c in enumerate(COLOR_NAMES)}
    targets = np.full((len(scenes), NUM_CELLS, 4), IGNORE, dtype=np.int64)
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
        images.append(resize_uint8(data.images, resolution))  # (n, 3, R, R) uint8
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
    occupancy, color, shape, size = split_logits(logits)
    loss = F.binary_cross_entropy_with_logits(occupancy, targets[..., 0].float())
    for k, attribute in enumerate((color, shape, size), start=1):
        loss = loss + F.cross_entropy(attribute.flatten(0, 1), targets[..., k].flatten(), ignore_index=IGNORE)
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

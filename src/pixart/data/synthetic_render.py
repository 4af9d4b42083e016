"""Rendering shapes-world scenes to pixels: anti-aliased coverage masks and batched compositing.

Edges are anti-aliased by supersampling (see synthetic._SUPERSAMPLE). Rendering is batched: the
coverage mask of every (shape, size, cell) is computed once per canvas size and cached, and a batch of
scenes is composited with one small batched matmul over the object slots.

The tables that define the images live in pixart.data.synthetic and are covered by world_fingerprint;
a change to the drawing code here that they do not show needs a WORLD_VERSION bump there.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pixart.data.synthetic import (
    _BACKGROUND_NAMES,
    _COLOR_NAMES,
    _SUPERSAMPLE,
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZE_FRACTIONS,
    SIZES,
    Scene,
    _Layout,
    _layout_from_scenes,
)

_COLOR_RGB = np.array([COLORS[c] for c in _COLOR_NAMES], dtype=np.float32)  # (C, 3)
_BACKGROUND_RGB = np.array([BACKGROUNDS[b] for b in _BACKGROUND_NAMES], dtype=np.float32)  # (B, 3)


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u right, v down), in units of the object's half extent, lie inside `shape`."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        # Slightly smaller than its bounding box so its area stays close to the circle's.
        return (au <= 0.85) & (av <= 0.85)
    if shape == "triangle":
        # Apex up at v = -1, base at v = 0.8 spanning u in [-1, 1].
        return (v <= 0.8) & (au <= (v + 1.0) / 1.8)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "cross":
        return ((au <= 1.0) & (av <= 0.33)) | ((au <= 0.33) & (av <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=8)
def _coverage_masks(height: int, width: int) -> np.ndarray:
    """(S, Z, 9, H, W) float32 anti-aliased coverage of each shape, size and cell on an H x W canvas."""
    masks = np.zeros((len(SHAPES), len(SIZES), len(POSITIONS), height, width), dtype=np.float32)
    cell_h, cell_w = height / 3, width / 3
    offsets = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE  # sample points inside a pixel
    for cell in range(len(POSITIONS)):
        row, col = divmod(cell, 3)
        cy, cx = (row + 0.5) * cell_h, (col + 0.5) * cell_w
        for z, size in enumerate(SIZES):
            r = SIZE_FRACTIONS[size] * min(cell_h, cell_w) / 2
            # Only the object's bounding box needs sampling; pixel i covers [i, i + 1).
            y0, y1 = max(0, int(np.floor(cy - r))), min(height, int(np.ceil(cy + r)))
            x0, x1 = max(0, int(np.floor(cx - r))), min(width, int(np.ceil(cx + r)))
            v = ((np.arange(y0, y1)[:, None] + offsets[None, :]).reshape(-1) - cy) / r  # (ny * ss,)
            u = ((np.arange(x0, x1)[:, None] + offsets[None, :]).reshape(-1) - cx) / r  # (nx * ss,)
            for s, shape in enumerate(SHAPES):
                inside = _inside(shape, u[None, :], v[:, None])  # (ny * ss, nx * ss)
                coverage = inside.reshape(y1 - y0, _SUPERSAMPLE, x1 - x0, _SUPERSAMPLE).mean(axis=(1, 3))
                masks[s, z, cell, y0:y1, x0:x1] = coverage
    masks.setflags(write=False)
    return masks


def _render_layout(layout: _Layout, height: int, width: int, chunk: int = 1024) -> np.ndarray:
    """(N, H, W, 3) uint8 images of a batch of scenes."""
    if height < 3 or width < 3:
        raise ValueError(f"canvas must be at least 3x3, got {height}x{width}")
    masks = _coverage_masks(height, width).reshape(-1, height * width)  # (S * Z * 9, HW)
    n = len(layout.background)
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        bg = _BACKGROUND_RGB[layout.background[sl]]  # (n, 3)
        index = (layout.shape[sl] * len(SIZES) + layout.size[sl]) * len(POSITIONS) + layout.cell[sl]  # (n, K)
        alpha = masks[index]  # (n, K, HW)
        # Objects sit in distinct cells and never leave them, so the image is the background plus each
        # object's coverage times its colour offset: one small batched matmul over the object slots.
        offset = (_COLOR_RGB[layout.color[sl]] - bg[:, None, :]) * layout.valid[sl, :, None]  # (n, K, 3)
        img = np.matmul(alpha.transpose(0, 2, 1), offset)  # (n, HW, 3)
        img += bg[:, None, :]
        np.rint(img, out=img)
        out[sl] = img.reshape(-1, height, width, 3)
    return out


def render(scene: Scene, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 image of one scene."""
    return _render_layout(_layout_from_scenes([scene]), height, width)[0]


def render_batch(scenes: list[Scene], height: int, width: int) -> np.ndarray:
    """(N, H, W, 3) uint8 images of a list of scenes."""
    return _render_layout(_layout_from_scenes(scenes), height, width)

"""Fixed 2-D sin-cos position embedding (MAE/DiT convention), computed per token grid and cached.

PixArt never stores this table: it depends only on the grid, the base size and the interpolation
scale. Width coordinates fill the first half of the channels and each half is [sin | cos] (the
opposite order from the timestep sinusoid), as in the official `get_2d_sincos_pos_embed`.
"""

from __future__ import annotations

import functools

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(N,) float64 positions -> (N, dim) embedding laid out [sin(pos*w_k) | cos(pos*w_k)]."""
    if dim % 2:
        raise ValueError(f"a 1-D sin-cos embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (N, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, base_size: int, interpolation_scale: float) -> torch.Tensor:
    """(grid_h * grid_w, dim) float64 embedding, rows ordered row-major (h outer, w inner).

    Each axis is normalised on its own so that it spans [0, base_size / interpolation_scale):
    non-square grids get different spacing per axis (PixArtMS and diffusers do the same).
    """
    if dim % 4:
        raise ValueError(f"the 2-D position embedding needs a width divisible by 4, got {dim}")
    h_coords = torch.arange(grid_h, dtype=torch.float64) / (grid_h / base_size) / interpolation_scale
    w_coords = torch.arange(grid_w, dtype=torch.float64) / (grid_w / base_size) / interpolation_scale
    h_grid = h_coords[:, None].expand(grid_h, grid_w).reshape(-1)  # (N,)
    w_grid = w_coords[None, :].expand(grid_h, grid_w).reshape(-1)  # (N,)
    # The official meshgrid puts w first: channels [emb(w) | emb(h)].
    return torch.cat([sincos_1d(dim // 2, w_grid), sincos_1d(dim // 2, h_grid)], dim=1)


@functools.lru_cache(maxsize=64)
def _cached(dim: int, grid_h: int, grid_w: int, base_size: int, scale: float, device: str, dtype: str) -> torch.Tensor:
    table = sincos_2d(dim, grid_h, grid_w, base_size, scale).to(torch.float32)
    return table.to(device=torch.device(device), dtype=getattr(torch, dtype))


def position_embedding(
    dim: int,
    grid_h: int,
    grid_w: int,
    base_size: int,
    interpolation_scale: float,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(1, grid_h * grid_w, dim) embedding on `device` in `dtype`, cached per grid, device and dtype."""
    name = str(dtype).removeprefix("torch.")
    if torch.compiler.is_compiling():  # traced once into the graph (a constant there); dynamo skips lru_cache
        return _cached.__wrapped__(dim, grid_h, grid_w, base_size, float(interpolation_scale), str(device), name)[None]
    return _cached(dim, grid_h, grid_w, base_size, float(interpolation_scale), str(device), name)[None]

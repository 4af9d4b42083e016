"""The class-conditional DiT (Peebles & Xie) used for stage 1, pixel-dependency pretraining.

Parameter names follow the DiT repository, so `DiT-XL-2-256x256.pt` loads into it strictly. Its weights
become a PixArt initialisation by the re-parameterisation in `pixart.weights.reparameterize_dit`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pixart.model.layers import (
    FinalLayer,
    Mlp,
    PatchEmbed,
    SelfAttention,
    TimestepEmbedder,
    linear_at,
    mlp_width,
    modulate,
    per_sample_timesteps,
    residual_dtype,
    unpatchify,
)
from pixart.model.pos_embed import position_embedding


@dataclass(frozen=True, kw_only=True)
class DiTConfig:
    """Architecture of a class-conditional DiT. Defaults are DiT-XL/2 at 256 px (ImageNet)."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    learn_sigma: bool = True
    num_classes: int = 1000  # the table has one more row: the null class used for guidance

    def __post_init__(self) -> None:
        sizes = (self.depth, self.num_heads, self.hidden_size, self.patch_size, self.input_size, self.num_classes)
        if min(*sizes, self.in_channels) < 1:
            raise ValueError(
                "depth, num_heads, hidden_size, patch_size, input_size, num_classes and in_channels must be at least 1"
            )
        if self.input_size % self.patch_size:  # the position table is built for input_size // patch_size a side
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads and by 4")
        mlp_width(self.hidden_size, self.mlp_ratio)  # refuses a ratio that leaves the MLP no unit

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def null_class(self) -> int:
        return self.num_classes

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class LabelEmbedder(nn.Module):
    """Class label -> (B, D); row `num_classes` is the null class (classifier-free guidance)."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    """adaLN-Zero block: its own modulation MLP from the (timestep + class) embedding."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, mlp_width(hidden_size, mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(
            6, dim=-1
        )  # each (B, 1, D)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class DiT(nn.Module):
    """Class-conditional DiT: latents, timesteps, class labels -> eps (and variance)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.gradient_checkpointing = False
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(config.num_classes, D)
        # Typed as what it holds: to a type checker an nn.ModuleList yields plain Modules.
        self.blocks = cast(
            Sequence[DiTBlock],
            nn.ModuleList(DiTBlock(D, config.num_heads, config.mlp_ratio) for _ in range(config.depth)),
        )
        self.final_layer = FinalLayer(D, config.patch_size, config.out_channels, per_block_adaln=True)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier linears, N(0, 0.02) embeddings, adaLN-Zero, zero output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        assert self.x_embedder.proj.bias is not None  # PatchEmbed's convolution is built with a bias
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for linear in self.t_embedder.mlp_linears():
            nn.init.normal_(linear.weight, std=0.02)
        for module in [*(b.adaLN_modulation for b in self.blocks), self.final_layer.adaLN_modulation]:
            nn.init.zeros_(linear_at(module, 1).weight)
            nn.init.zeros_(linear_at(module, 1).bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), t (B,), labels (B,) int -> (B, out_channels, H, W)."""
        cfg = self.config
        B, _, H, W = x.shape
        p = cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"latent height and width must be multiples of the patch size {p}, got {H}x{W}")
        t = per_sample_timesteps(t, B, x.device)  # a (B, 1) timestep was a shape error deep in the embedder
        grid_h, grid_w = H // p, W // p
        dtype = residual_dtype(x.device, self.dtype)
        # At its training size DiT's table spans [0, grid) per axis: base size = that grid, scale 1.
        pos = position_embedding(
            cfg.hidden_size, grid_h, grid_w, cfg.input_size // p, 1.0, device=x.device, dtype=dtype
        )
        tokens = self.x_embedder(x.to(dtype)) + pos  # (B, N, D)
        c = self.t_embedder(t).to(dtype) + self.y_embedder(labels).to(dtype)  # (B, D)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, use_reentrant=False)
            else:
                tokens = block(tokens, c)
        out = self.final_layer(tokens, c)  # (B, N, p*p*C_out)
        return unpatchify(out, grid_h, grid_w, p)

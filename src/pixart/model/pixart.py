"""PixArt-alpha: a DiT with T5 cross-attention and adaLN-single (one PixArt class covers PixArtMS).

Short names come from the official checkpoint so released weights load strictly:
x_embedder (patchify), t_embedder (timestep MLP), t_block (the adaLN-single global MLP), y_embedder
(caption projection + learned null caption), csize_embedder / ar_embedder (PixArtMS micro-conditions),
blocks.i.scale_shift_table (the per-block table E(i)), final_layer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pixart.model.layers import (
    CaptionEmbedder,
    CrossAttention,
    FinalLayer,
    Mlp,
    PatchEmbed,
    SelfAttention,
    SizeEmbedder,
    TimestepEmbedder,
    linear_at,
    mlp_width,
    modulate,
    per_sample_timesteps,
    residual_dtype,
    unpatchify,
)
from pixart.model.pos_embed import position_embedding

ADALN_MODES = ("single", "per_block")


@dataclass
class CaptionCache:
    """The caption side of every block, computed once: a sampler reuses it for all its steps.

    Captions do not change while sampling, so projecting them and computing each block's keys and values
    on every step (as diffusers does) repeats the same work; `PixArt.prepare_captions` does it once.
    """

    attn_mask: torch.Tensor | None  # (B, 1, 1, L) bool
    kv: list[torch.Tensor]  # per block, (B, L, 2D)


@dataclass(frozen=True, kw_only=True)
class PixArtConfig:
    """Architecture of a PixArt transformer. Defaults are PixArt-XL/2 at 512 px."""

    input_size: int = 64  # latent side the model was trained at (32/64/128 for 256/512/1024 px)
    patch_size: int = 2
    in_channels: int = 4  # latent channels
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    learn_sigma: bool = True  # IDDPM learned-range variance: out_channels = 2 * in_channels
    caption_channels: int = 4096  # T5-XXL width
    max_length: int = 120  # caption tokens (the shape of the learned null caption)
    interpolation_scale: float = 1.0  # official lewei_scale: 2 at 1024 px, 1 below
    micro_conditions: bool = False  # PixArtMS: image size and aspect ratio added to the timestep embedding
    adaln: str = "single"  # "single" (PixArt) or "per_block" (DiT's adaLN-Zero, for the ablation)
    caption_norm: bool = False  # parameter-free LayerNorm on caption features (small encoders)

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):  # a stored config of another tool, or a hand-edited one
            value, kind = getattr(self, spec.name), type(spec.default)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number if kind is float else type(value) is kind):
                raise ValueError(f"{spec.name} must be {'a number' if kind is float else kind.__name__}, got {value!r}")
        sizes = (self.depth, self.num_heads, self.hidden_size, self.patch_size, self.input_size, self.max_length)
        if min(*sizes, self.caption_channels, self.in_channels) < 1:
            raise ValueError(
                "depth, num_heads, hidden_size, patch_size, input_size, max_length, caption_channels and in_channels "
                "must be at least 1"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(
                f"hidden_size must be a multiple of 4 for the 2-D position embedding, got {self.hidden_size}"
            )
        if self.micro_conditions and self.hidden_size % 3:
            raise ValueError(
                f"micro_conditions split hidden_size into three size embeddings: "
                f"{self.hidden_size} is not divisible by 3 (use a multiple of 12)"
            )
        if self.adaln not in ADALN_MODES:
            raise ValueError(f"adaln must be one of {ADALN_MODES}, got {self.adaln!r}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        mlp_width(self.hidden_size, self.mlp_ratio)  # refuses a ratio that leaves the MLP no unit
        if not (math.isfinite(self.interpolation_scale) and self.interpolation_scale > 0):  # it divides positions
            raise ValueError(f"interpolation_scale must be a positive number, got {self.interpolation_scale}")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def base_size(self) -> int:
        """Token-grid side the position embedding is normalised to (input_size // patch_size)."""
        return self.input_size // self.patch_size

    def at_resolution(self, resolution: int) -> PixArtConfig:
        """The same architecture set up as officially for `resolution` px (SD VAE, factor 8)."""
        return dataclasses.replace(
            self,
            input_size=resolution // 8,
            interpolation_scale=2.0 if resolution >= 1024 else 1.0,
            micro_conditions=resolution >= 1024,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PixArtConfig:
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object of PixArtConfig fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PixArtConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)


XL_2 = PixArtConfig()  # PixArt-XL-2-512x512
XL_2_256 = XL_2.at_resolution(256)
XL_2_1024_MS = XL_2.at_resolution(1024)  # PixArt-XL-2-1024-MS
TINY = PixArtConfig(input_size=16, hidden_size=96, depth=2, num_heads=3, caption_channels=48, max_length=16)
TINY_MS = dataclasses.replace(TINY, micro_conditions=True, interpolation_scale=2.0)
PRESETS = {"XL_2": XL_2, "XL_2_256": XL_2_256, "XL_2_1024_MS": XL_2_1024_MS, "TINY": TINY, "TINY_MS": TINY_MS}


class PixArtBlock(nn.Module):
    """Self-attention, cross-attention (no norm, no gate), MLP; adaLN-single modulation."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, adaln: str = "single"):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, mlp_width(hidden_size, mlp_ratio))
        if adaln == "single":
            self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)
        else:  # DiT's per-block adaLN-Zero, kept for the ablation against adaLN-single
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def modulation(self, c: torch.Tensor, stream_dtype: torch.dtype) -> torch.Tensor:
        """(B, 6D) shared t_block output (or (B, D) embedding for per-block) -> (B, 6, D).

        The table is added in the residual stream's dtype: under autocast c is bf16, and FSDP's bf16 table
        would otherwise make a bf16 sum where one process's fp32 table makes an fp32 one."""
        if hasattr(self, "scale_shift_table"):
            table = self.scale_shift_table[None].to(stream_dtype)  # (1, 6, D)
            return table + c.reshape(c.shape[0], 6, -1)  # S(i) = S_bar + E(i)
        return self.adaLN_modulation(c).reshape(c.shape[0], 6, -1)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
        c: torch.Tensor,
        kv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Chunk order (official): shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c, x.dtype).chunk(6, dim=1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, N, D)
        x = x + self.cross_attn(x, y, attn_mask, kv)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class PixArt(nn.Module):
    """The PixArt-alpha transformer: latents, timesteps and caption features -> eps (and variance).

    Set `gradient_checkpointing = True` from outside to recompute each block in the backward pass.
    """

    def __init__(self, config: PixArtConfig):
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.gradient_checkpointing = False
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, D)
        self.t_embedder = TimestepEmbedder(D)
        if config.adaln == "single":
            self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.y_embedder = CaptionEmbedder(config.caption_channels, D, config.max_length, config.caption_norm)
        if config.micro_conditions:
            self.csize_embedder = SizeEmbedder(D // 3)
            self.ar_embedder = SizeEmbedder(D // 3)
        # Typed as what it holds: to a type checker an nn.ModuleList yields plain Modules.
        self.blocks = cast(
            Sequence[PixArtBlock],
            nn.ModuleList(
                PixArtBlock(D, config.num_heads, config.mlp_ratio, config.adaln) for _ in range(config.depth)
            ),
        )
        self.final_layer = FinalLayer(D, config.patch_size, config.out_channels, config.adaln == "per_block")
        # How the outputs read, where the weights recorded it (load_transformer): {"objective", "flow_shift",
        # "shift_base_tokens"}; {} for unknown (an eps model). sample() and save_transformer follow it.
        self.sampling: dict[str, Any] = {}
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official initialisation (spec 2.1); per-block adaLN is zeroed as in DiT."""

        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(basic_init)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        normal: list[nn.Linear] = [
            *self.t_embedder.mlp_linears(),
            self.y_embedder.y_proj.fc1,
            self.y_embedder.y_proj.fc2,
        ]
        if self.config.adaln == "single":
            normal.append(linear_at(self.t_block, 1))
        if self.config.micro_conditions:
            normal += [*self.csize_embedder.mlp_linears(), *self.ar_embedder.mlp_linears()]
        for linear in normal:
            nn.init.normal_(linear.weight, std=0.02)
        zeroed: list[nn.Linear] = []
        for block in self.blocks:
            zeroed.append(block.cross_attn.proj)  # cross-attention is a no-op at init
            if self.config.adaln == "per_block":
                zeroed.append(linear_at(block.adaLN_modulation, 1))
        if self.config.adaln == "per_block":
            zeroed.append(linear_at(self.final_layer.adaLN_modulation, 1))
        for linear in zeroed:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.x_embedder.proj.weight.device

    def embed_conditions(
        self, t: torch.Tensor, batch_size: int, img_hw: torch.Tensor | None, aspect_ratio: torch.Tensor | None
    ) -> torch.Tensor:
        """(B,) timesteps (+ micro-conditions) -> (B, D) embedding that drives all modulation."""
        temb = self.t_embedder(t)  # (B, D)
        if self.config.micro_conditions:
            if img_hw is None or aspect_ratio is None:
                raise ValueError(
                    "this model uses micro-conditions (PixArtMS): pass img_hw (B, 2) = [height, width] in "
                    "pixels and aspect_ratio (B,) = height / width"
                )
            img_hw = torch.as_tensor(img_hw, device=temb.device, dtype=torch.float32)
            aspect_ratio = torch.as_tensor(aspect_ratio, device=temb.device, dtype=torch.float32)
            for name, values, width, shape in (
                ("img_hw", img_hw, 2, "({}, 2)"),
                ("aspect_ratio", aspect_ratio, 1, "({},)"),
            ):
                rows = values.numel() // width  # one per sample, one for the batch, or one per CFG half
                if values.numel() % width or not rows or batch_size % rows:  # else an empty repeat, a reshape error
                    raise ValueError(
                        f"{name} of shape {tuple(values.shape)} does not fit a batch of {batch_size}: give "
                        f"{shape.format(batch_size)} values, or {shape.format(1)} for the whole batch"
                    )
            csize = self.csize_embedder(img_hw.reshape(-1, 2), batch_size)  # (B, 2D/3)
            ar = self.ar_embedder(aspect_ratio.reshape(-1, 1), batch_size)  # (B, D/3)
            temb = temb + torch.cat([csize, ar], dim=1)
        return temb

    def prepare_captions(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> CaptionCache:
        """y (B, L, C_cap) and mask (B, L) -> the per-block keys and values `forward(captions=...)` reuses."""
        if y.ndim == 4:
            y = y.squeeze(1)
        attn_mask = self.caption_attention_mask(mask, y.shape[0], y.shape[1], y.device)
        projected = self.embed_captions(y.to(self.dtype), attn_mask)  # (B, L, D)
        return CaptionCache(attn_mask, [block.cross_attn.kv_linear(projected) for block in self.blocks])

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None,
        mask: torch.Tensor | None = None,
        img_hw: torch.Tensor | None = None,
        aspect_ratio: torch.Tensor | None = None,
        captions: CaptionCache | None = None,
    ) -> torch.Tensor:
        """x (B, C, H, W), t (B,), y (B, L, C_cap), mask (B, L) 1 = valid -> (B, out_channels, H, W).

        `captions` (from `prepare_captions`) replaces y and mask (pass None for both) when the same captions
        come back every step.
        """
        cfg = self.config
        p = cfg.patch_size
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        B, _, H, W = x.shape
        if H % p or W % p:
            raise ValueError(f"latent height and width must be multiples of the patch size {p}, got {H}x{W}")
        t = per_sample_timesteps(t, B, x.device)
        if captions is not None and (y is not None or mask is not None):
            # Either would be silently unread: captions already holds the projected keys and values
            raise ValueError("pass caption features y and mask, or captions from prepare_captions, not both")
        if captions is None:
            if y is None:
                raise ValueError("pass caption features y (B, L, C_cap), or captions from prepare_captions")
            if y.ndim == 4:  # official layout (B, 1, L, C)
                y = y.squeeze(1)
            if y.ndim != 3 or y.shape[0] != B or y.shape[2] != cfg.caption_channels:
                raise ValueError(f"y must be (B={B}, L, {cfg.caption_channels}), got {tuple(y.shape)}")

        dtype = residual_dtype(x.device, self.dtype)
        grid_h, grid_w = H // p, W // p
        pos = position_embedding(
            cfg.hidden_size, grid_h, grid_w, cfg.base_size, cfg.interpolation_scale, device=x.device, dtype=dtype
        )
        tokens = self.x_embedder(x.to(dtype)) + pos  # (B, N, D)
        temb = self.embed_conditions(t, B, img_hw, aspect_ratio).to(dtype)  # (B, D)
        c = self.t_block(temb) if cfg.adaln == "single" else temb  # (B, 6D) or (B, D)
        kvs: Sequence[torch.Tensor | None]
        if captions is None:
            assert y is not None  # checked above
            attn_mask = self.caption_attention_mask(mask, B, y.shape[1], x.device)
            y = self.embed_captions(y.to(dtype), attn_mask)  # (B, L, D)
            kvs = [None] * len(self.blocks)
        else:
            attn_mask, kvs, y = captions.attn_mask, captions.kv, None

        for block, kv in zip(self.blocks, kvs, strict=True):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, y, attn_mask, c, kv, use_reentrant=False)
            else:
                tokens = block(tokens, y, attn_mask, c, kv)
        out = self.final_layer(tokens, temb)  # (B, N, p*p*C_out)
        return unpatchify(out, grid_h, grid_w, p)  # (B, C_out, H, W)

    def embed_captions(self, y: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, L, C_cap) -> (B, L, D); padded tokens come out as zeros (attention never reads them).

        On a CPU only the valid tokens are projected: the projection is the widest matrix product of the
        caption path and, at small image sizes, a real share of the step. On a GPU it is 0.1% of a 512 px
        step's FLOPs, while packing reads the number of valid tokens back to the host and stalls the
        stream, so every token is projected and the padded ones are zeroed, which also compiles.
        """
        if attn_mask is None:
            return self.y_embedder(y)
        if y.device.type == "cpu":
            return self._embed_valid_captions(y, attn_mask)
        return self._embed_all_captions(y, attn_mask)

    def _embed_all_captions(self, y: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """embed_captions projecting every token, then zeroing the padded ones: no data-dependent shape.

        Padded features are zeroed before the projection too: whatever they hold (NaN included) would
        otherwise reach the weight gradients through 0 * NaN.
        """
        keep = attn_mask[:, 0, 0, :, None]  # (B, L, 1)
        return torch.where(keep, self.y_embedder(torch.where(keep, y, 0)), 0)  # (B, L, D)

    @torch.compiler.disable  # data-dependent shapes: runs eagerly between compiled graphs
    def _embed_valid_captions(self, y: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """embed_captions projecting only the valid tokens, packed as (n_valid, C_cap)."""
        keep = attn_mask[:, 0, 0, :]  # (B, L)
        projected = self.y_embedder(y[keep])  # (n_valid, C_cap) -> (n_valid, D); bf16 under autocast
        out = projected.new_zeros(*y.shape[:2], self.config.hidden_size)
        out[keep] = projected
        return out

    @staticmethod
    def caption_attention_mask(
        mask: torch.Tensor | None, batch_size: int, length: int, device: torch.device
    ) -> torch.Tensor | None:
        """(B, L) 0/1 mask -> (B, 1, 1, L) bool for SDPA. A mask of batch 1 (or B/2 under CFG) is tiled.

        A caption with no valid token attends uniformly to all of its tokens (diffusers' behaviour)
        rather than producing NaN.
        """
        if mask is None:
            return None
        if mask.shape[-1] != length:  # reshaping would fold the surplus into other samples' masks
            raise ValueError(f"the caption mask covers {mask.shape[-1]} tokens but the captions have {length}")
        if mask.is_floating_point() and bool(((mask != 0) & (mask != 1)).any()):  # read on the host: float masks only
            raise ValueError(
                "the caption mask holds 1 for a real token and 0 for padding (bool, or 0/1 numbers); an additive mask "
                "(0 for a real token, -inf for padding) reads the other way round: pass (mask == 0) instead"
            )
        mask = mask.to(device).reshape(-1, length) != 0  # (B_mask, L): (B, L) or the official (B, 1, 1, L)
        if mask.shape[0] != batch_size:
            if batch_size % mask.shape[0]:
                raise ValueError(f"mask batch {mask.shape[0]} does not divide the input batch {batch_size}")
            mask = mask.repeat(batch_size // mask.shape[0], 1)
        mask = mask | ~mask.any(dim=1, keepdim=True)
        return mask[:, None, None, :]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

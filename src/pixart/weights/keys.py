"""One key table between our (= official) parameter names and diffusers', used in both directions.

Fused tensors split on the way to diffusers: `attn.qkv` -> to_q, to_k, to_v and
`cross_attn.kv_linear` -> to_k, to_v (dim 0, in that order), and are concatenated on the way back.
Conversions pop every key they use and fail on anything left over, so nothing is dropped silently.
"""

from __future__ import annotations

import torch

Names = str | tuple[str, ...]  # one diffusers key, or the keys a fused tensor splits into

# (ours, diffusers) module prefixes outside the blocks; each carries .weight and .bias.
TOP_LEVEL = [
    ("x_embedder.proj", "pos_embed.proj"),
    ("y_embedder.y_proj.fc1", "caption_projection.linear_1"),
    ("y_embedder.y_proj.fc2", "caption_projection.linear_2"),
    ("t_embedder.mlp.0", "adaln_single.emb.timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "adaln_single.emb.timestep_embedder.linear_2"),
    ("t_block.1", "adaln_single.linear"),
    ("final_layer.linear", "proj_out"),
]
MICRO_CONDITIONS = [
    ("csize_embedder.mlp.0", "adaln_single.emb.resolution_embedder.linear_1"),
    ("csize_embedder.mlp.2", "adaln_single.emb.resolution_embedder.linear_2"),
    ("ar_embedder.mlp.0", "adaln_single.emb.aspect_ratio_embedder.linear_1"),
    ("ar_embedder.mlp.2", "adaln_single.emb.aspect_ratio_embedder.linear_2"),
]
# Inside block i: ours under "blocks.{i}.", diffusers under "transformer_blocks.{i}.". A tuple is a split.
PER_BLOCK: list[tuple[str, Names]] = [
    ("attn.qkv", ("attn1.to_q", "attn1.to_k", "attn1.to_v")),
    ("attn.proj", "attn1.to_out.0"),
    ("cross_attn.q_linear", "attn2.to_q"),
    ("cross_attn.kv_linear", ("attn2.to_k", "attn2.to_v")),
    ("cross_attn.proj", "attn2.to_out.0"),
    ("mlp.fc1", "ff.net.0.proj"),
    ("mlp.fc2", "ff.net.2"),
]
# Whole tensors (no .weight/.bias suffix).
TABLES = [("final_layer.scale_shift_table", "scale_shift_table")]
BLOCK_TABLE = ("scale_shift_table", "scale_shift_table")

# In our state dict but not in diffusers': the learned null caption (diffusers uses T5("") instead).
NOT_IN_DIFFUSERS = ("y_embedder.y_embedding",)


def key_pairs(depth: int, micro_conditions: bool) -> list[tuple[str, Names]]:
    """Every (our key, diffusers key or keys) pair of a model with `depth` blocks."""
    pairs: list[tuple[str, Names]] = []
    modules: list[tuple[str, Names]] = [*TOP_LEVEL, *(MICRO_CONDITIONS if micro_conditions else [])]
    for i in range(depth):
        modules += [(f"blocks.{i}.{ours}", _prefix(f"transformer_blocks.{i}.", theirs)) for ours, theirs in PER_BLOCK]
    for ours, theirs in modules:
        for suffix in (".weight", ".bias"):
            pairs.append((ours + suffix, _suffix(theirs, suffix)))
    pairs += TABLES
    pairs += [(f"blocks.{i}.{BLOCK_TABLE[0]}", f"transformer_blocks.{i}.{BLOCK_TABLE[1]}") for i in range(depth)]
    return pairs


def _prefix(prefix: str, name: Names) -> Names:
    return prefix + name if isinstance(name, str) else tuple(prefix + n for n in name)


def _suffix(name: Names, suffix: str) -> Names:
    return name + suffix if isinstance(name, str) else tuple(n + suffix for n in name)


def to_diffusers(state: dict[str, torch.Tensor], depth: int, micro_conditions: bool) -> dict[str, torch.Tensor]:
    """Our state dict (without pos_embed and y_embedding) -> diffusers' PixArtTransformer2DModel keys."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in key_pairs(depth, micro_conditions):
        tensor = state.pop(ours)
        if isinstance(theirs, str):
            out[theirs] = tensor
        else:
            for name, part in zip(theirs, tensor.chunk(len(theirs), dim=0), strict=True):
                out[name] = part.clone()
    if state:
        raise ValueError(f"keys with no diffusers equivalent: {sorted(state)[:10]}")
    return out


def from_diffusers(state: dict[str, torch.Tensor], depth: int, micro_conditions: bool) -> dict[str, torch.Tensor]:
    """diffusers PixArtTransformer2DModel keys -> our keys (no y_embedding: diffusers has none)."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in key_pairs(depth, micro_conditions):
        if isinstance(theirs, str):
            out[ours] = state.pop(theirs)
        else:
            out[ours] = torch.cat([state.pop(name) for name in theirs], dim=0)
    if state:
        raise ValueError(f"diffusers keys with no PixArt equivalent: {sorted(state)[:10]}")
    return out

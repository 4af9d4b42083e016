"""Stage-1 initialisation: a class-conditional DiT becomes a PixArt by re-parameterisation.

PixArt paper, section 2.3 ("re-parameterization"): the shared weights (patchify, timestep MLP,
attention, MLP, output projection) are copied, and each block's table E(i) is set so that at a fixed
t* = 500 the adaLN-single modulation S_bar + E(i) equals what DiT computes for the unconditional
(null) class. The final layer likewise. Cross-attention, caption projection and t_block start fresh
(official init; cross-attention output zero), so at t* the new model is DiT's null-class model.

We read "without c" as DiT's learned null-class row (index num_classes), which is what DiT itself uses
for the unconditional branch of guidance.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from pixart.model.dit import DiT, DiTConfig
from pixart.model.layers import timestep_sinusoid
from pixart.model.pixart import PixArt, PixArtConfig
from pixart.weights.errors import WeightsError
from pixart.weights.io import check_key_sets

REPARAM_T = 500
SHARED_PREFIXES = ("x_embedder.proj.", "t_embedder.mlp.", "final_layer.linear.")
SHARED_BLOCK_PARTS = ("attn.qkv.", "attn.proj.", "mlp.fc1.", "mlp.fc2.")


def infer_dit_config(state: dict[str, torch.Tensor], num_heads: int | None = None) -> DiTConfig:
    """A DiT checkpoint's architecture from its shapes; XL-width (1152) models have 16 heads."""
    proj = state["x_embedder.proj.weight"]  # (D, C, p, p)
    hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    out = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    if num_heads is None:
        if hidden % 72 and hidden % 64:
            raise WeightsError(
                f"cannot infer the head count of a width-{hidden} DiT (neither 72 nor 64 per head); pass --num-heads N "
                "to pixart convert or info, or num_heads= to infer_dit_config"
            )
        num_heads = hidden // 72 if hidden % 72 == 0 else hidden // 64
    if "pos_embed" not in state:  # the official DiT saves it; a bare state dict of ours does not
        raise WeightsError(
            "this DiT checkpoint holds no pos_embed, so its sample size is unknown (a guess would break the "
            "re-parameterisation); save it with its pos_embed, as the official DiT does, or as pixart's trainer "
            "does (.safetensors with the config in its metadata)"
        )
    input_size = math.isqrt(state["pos_embed"].shape[1]) * patch
    try:
        return DiTConfig(
            input_size=input_size,
            patch_size=patch,
            in_channels=in_channels,
            hidden_size=hidden,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
            learn_sigma=out == 2 * in_channels,
            num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1,
        )
    except ValueError as error:  # a --num-heads that does not divide the width: a traceback from info
        raise WeightsError(f"no DiT has these shapes with {num_heads} heads: {error}") from None


def pixart_config_for(dit: DiTConfig, **overrides: Any) -> PixArtConfig:
    """The PixArt that shares `dit`'s backbone (adaLN-single, no micro-conditions)."""
    # Values of several types, any of which `overrides` (PixArtConfig's field names) may replace.
    fields: dict[str, Any] = dict(
        input_size=dit.input_size,
        patch_size=dit.patch_size,
        in_channels=dit.in_channels,
        hidden_size=dit.hidden_size,
        depth=dit.depth,
        num_heads=dit.num_heads,
        mlp_ratio=dit.mlp_ratio,
        learn_sigma=dit.learn_sigma,
        interpolation_scale=1.0,
        micro_conditions=False,
    )
    fields.update(overrides)
    return PixArtConfig(**fields)


def _linear(x: torch.Tensor, state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.linear(x, state[prefix + "weight"].double(), state[prefix + "bias"].double())


def _timestep_embedding(state: dict[str, torch.Tensor], t: float) -> torch.Tensor:
    """DiT's (= PixArt's copied) t_embedder at a scalar t, in float64: (1, D)."""
    freq = timestep_sinusoid(torch.tensor([t]), 256).double()
    hidden = F.silu(_linear(freq, state, "t_embedder.mlp.0."))
    return _linear(hidden, state, "t_embedder.mlp.2.")


def check_dit_keys(dit_state: dict[str, torch.Tensor], pixart_config: PixArtConfig) -> None:
    """WeightsError unless `dit_state` holds exactly a DiT's keys: a shared weight it lacked kept PixArt's fresh
    init (and the conversion said it had worked); keys of another variant (q-norm, say) were dropped unsaid."""
    table = dit_state.get("y_embedder.embedding_table.weight")
    classes = table.shape[0] - 1 if table is not None and table.shape[0] > 1 else 1  # a missing table is named below
    with torch.device("meta"):  # the names alone: nothing is allocated
        dit = DiT(
            DiTConfig(
                **{
                    f.name: getattr(pixart_config, f.name)
                    for f in dataclasses.fields(DiTConfig)
                    if f.name != "num_classes"
                },
                num_classes=classes,
            )
        )
    check_key_sets(set(dit.state_dict()), set(dit_state), "the DiT checkpoint")


def reparameterize_dit(
    dit_state: dict[str, torch.Tensor],
    pixart_config: PixArtConfig,
    *,
    t: float = REPARAM_T,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A PixArt state dict (our keys) initialised from a DiT state dict by re-parameterisation.

    New micro-condition embedders (PixArtMS) start with a zero output layer, so that PixArt at t* still
    equals DiT's null class (at random they moved the output by 6e-2 on a tiny model)."""
    if pixart_config.adaln != "single":
        raise WeightsError(
            "a DiT is re-parameterised into adaLN-single tables, and this PixArt has adaln="
            f"{pixart_config.adaln!r}: set model.adaln=single (per_block trains from scratch)"
        )
    dit_state = {k: v for k, v in dit_state.items() if k != "pos_embed"}
    dit_depth = len({k.split(".")[1] for k in dit_state if k.startswith("blocks.")})
    if dit_depth != pixart_config.depth:
        raise WeightsError(
            f"the DiT has {dit_depth} blocks and this PixArt {pixart_config.depth}: set model.depth={dit_depth}"
        )
    check_dit_keys(dit_state, pixart_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pixart = PixArt(pixart_config)  # official init for everything not taken from DiT
    state = {k: v.clone() for k, v in pixart.state_dict().items()}

    for key, value in dit_state.items():
        shared = key.startswith(SHARED_PREFIXES) or (
            key.startswith("blocks.") and key.split(".", 2)[2].startswith(SHARED_BLOCK_PARTS)
        )
        if shared:
            if state[key].shape != value.shape:
                raise WeightsError(
                    f"the DiT's {key} {tuple(value.shape)} does not fit this PixArt's {tuple(state[key].shape)}: "
                    "its patch_size, in_channels, hidden_size, depth, mlp_ratio and learn_sigma must be the DiT's"
                )
            state[key] = value.to(state[key].dtype).clone()
    for name in ("csize_embedder", "ar_embedder"):
        if f"{name}.mlp.2.weight" in state:
            state[f"{name}.mlp.2.weight"].zero_()
            state[f"{name}.mlp.2.bias"].zero_()

    D = pixart_config.hidden_size
    temb = _timestep_embedding(dit_state, t)  # (1, D): identical in both models, t_embedder is shared
    null_class = dit_state["y_embedder.embedding_table.weight"].shape[0] - 1
    c_star = temb + dit_state["y_embedder.embedding_table.weight"][null_class].double()[None]  # DiT's c
    t0 = _linear(F.silu(temb), state, "t_block.1.")  # (1, 6D): PixArt's S_bar at t*
    for i in range(pixart_config.depth):
        target = _linear(F.silu(c_star), dit_state, f"blocks.{i}.adaLN_modulation.1.")  # (1, 6D)
        state[f"blocks.{i}.scale_shift_table"] = (target - t0).reshape(6, D).float()
    final_target = _linear(F.silu(c_star), dit_state, "final_layer.adaLN_modulation.1.")  # (1, 2D)
    state["final_layer.scale_shift_table"] = (final_target.reshape(2, D) - temb).float()
    return state


def dit_to_pixart(
    dit_state: dict[str, torch.Tensor],
    *,
    caption_channels: int = 4096,
    max_length: int = 120,
    num_heads: int | None = None,
    seed: int = 0,
    dit_config: DiTConfig | None = None,
    **config_overrides: Any,
) -> tuple[PixArtConfig, dict[str, torch.Tensor]]:
    """Re-parameterise a DiT into a PixArt (config, state dict); its architecture is read from the
    shapes unless `dit_config` gives it (`num_heads`, when given, overrides either)."""
    if dit_config is None:
        dit_config = infer_dit_config(dit_state, num_heads)
    elif num_heads is not None:
        dit_config = dataclasses.replace(dit_config, num_heads=num_heads)
    config = pixart_config_for(dit_config, caption_channels=caption_channels, max_length=max_length, **config_overrides)
    return config, reparameterize_dit(dit_state, config, seed=seed)


def dit_from_state(dit_state: dict[str, torch.Tensor], num_heads: int | None = None) -> DiT:
    """A DiT module holding `dit_state` (strict)."""
    dit = DiT(infer_dit_config(dit_state, num_heads))
    dit.load_state_dict({k: v for k, v in dit_state.items() if k != "pos_embed"}, strict=True)
    return dit

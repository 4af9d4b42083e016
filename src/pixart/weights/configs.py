"""The PixArtConfig that weights describe.

Read from an official checkpoint's shapes (stored configs are read where the file is: pixart.weights.io),
checked against a stored pos_embed, and translated to and from diffusers' config.json.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from pixart.model.pixart import PixArtConfig
from pixart.model.pos_embed import sincos_2d
from pixart.weights.errors import WeightsError


def config_hint(example: str) -> str:
    """How to say what a file's shapes do not: `example` is the JSON of the field in question."""
    return (
        "pass --config FILE to pixart convert or info (a JSON of the PixArtConfig fields the shapes do not say, "
        f"e.g. {example}), or config= to load_transformer"
    )


def infer_official_config(state: dict[str, torch.Tensor]) -> PixArtConfig:
    """An official checkpoint's architecture, read from its tensor shapes (spec section 8)."""
    return PixArtConfig(**official_fields(state))


def complete_config(
    fields: Mapping[str, Any], state: dict[str, torch.Tensor], stored: PixArtConfig | None, source: str
) -> PixArtConfig:
    """`fields` (--config's) over what a file says of the rest: the config it stores, else its shapes."""
    from pixart import config as config_io

    said = stored.to_dict() if stored is not None else official_fields(state, fields)
    try:
        return config_io.from_dict(PixArtConfig, {**said, **fields})  # each field's type checked
    except (ValueError, TypeError) as error:
        raise WeightsError(f"{source}: {error}") from None


def official_fields(state: dict[str, torch.Tensor], given: Mapping[str, Any] = MappingProxyType({})) -> dict[str, Any]:
    """PixArtConfig's fields read from an official state dict's shapes; where the shapes cannot say one
    (the head count of a width not 72 per head, the sample size without a pos_embed), `given` must."""
    proj = state["x_embedder.proj.weight"]  # (D, C_in, p, p)
    hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    out = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    fields: dict[str, Any] = {}
    pos_embed = state.get("pos_embed")  # (1, grid * grid, D) on a square grid
    grid = math.isqrt(pos_embed.shape[1]) if pos_embed is not None and pos_embed.ndim == 3 else 0
    if pos_embed is None:
        if "input_size" not in given:
            raise WeightsError(
                "the checkpoint has no pos_embed to read its training resolution from; pass --config FILE to pixart "
                'convert or info with its input_size (the latent side: {"input_size": 128} for 1024 px), or '
                "config= to load_transformer"
            )
        # the official convention, as diffusers derives it: 1 up to 512 px, 2 at 1024 (a wrong scale would
        # silently give the model another position embedding than it trained with)
        if isinstance(given["input_size"], int):  # else from_dict names the field's type in one line
            fields["interpolation_scale"] = float(max(given["input_size"] // 64, 1))
    elif (
        pos_embed.ndim != 3
        or pos_embed.shape[0] != 1
        or grid * grid != pos_embed.shape[1]
        or pos_embed.shape[2] != hidden
    ):
        if "input_size" not in given:
            raise WeightsError(
                f"the checkpoint's pos_embed {tuple(pos_embed.shape)} is not (1, grid * grid, {hidden}) on a square "
                "grid, so its training resolution cannot be read from it; " + config_hint('{"input_size": 64}')
            )
    else:
        fields["input_size"] = grid * patch
        if "interpolation_scale" not in given:
            fields["interpolation_scale"] = pos_embed_scale(pos_embed, hidden, grid)
    if hidden % 72 and "num_heads" not in given:
        raise WeightsError(
            f"cannot infer the head count of a width-{hidden} model (the official family uses 72 per head); "
            + config_hint('{"num_heads": 16}')
        )
    return {
        **fields,
        "patch_size": patch,
        "in_channels": in_channels,
        "hidden_size": hidden,
        "depth": depth,
        "num_heads": hidden // 72,
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        "learn_sigma": out == 2 * in_channels,
        "caption_channels": state["y_embedder.y_proj.fc1.weight"].shape[1],
        "max_length": state["y_embedder.y_embedding"].shape[0],
        "micro_conditions": "csize_embedder.mlp.0.weight" in state,
        "adaln": "per_block" if "blocks.0.adaLN_modulation.1.weight" in state else "single",
    }


SCALES = (1.0, 2.0, 0.5)  # interpolation scales (lewei_scale) in use: 1 up to 512 px, 2 at 1024


def pos_embed_scale(pos_embed: torch.Tensor, hidden: int, grid: int) -> float:
    """The interpolation scale a stored (1, grid*grid, D) pos_embed was built with."""
    for scale in SCALES:
        if torch.allclose(pos_embed.float()[0], sincos_2d(hidden, grid, grid, grid, scale).float(), atol=2e-3):
            return scale
    raise WeightsError(
        f"the checkpoint's pos_embed matches no interpolation scale in {SCALES}; "
        + config_hint('{"interpolation_scale": 2.0}')
    )


def check_pos_embed(state: dict[str, torch.Tensor], config: PixArtConfig, path: Path) -> None:
    """A stored pos_embed must be the one `config` computes: else the config describes another model."""
    if "pos_embed" not in state:
        return
    stored, expected = state["pos_embed"].float(), official_pos_embed(config)
    if stored.shape != expected.shape or not torch.allclose(stored, expected, atol=2e-3):
        raise WeightsError(
            f"{path}: the stored pos_embed {tuple(stored.shape)} is not the one the given config computes "
            f"{tuple(expected.shape)} (input_size {config.input_size}, interpolation_scale "
            f"{config.interpolation_scale}); fix the config's input_size or interpolation_scale"
        )


# config.json fields that change the maths and that PixArt (ours, official, the released configs) keeps at
# diffusers' defaults: a folder setting another would load without them and compute another model.
FIXED_DIFFUSERS_FIELDS = {
    "norm_eps": 1e-6,
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "upcast_attention": False,
    "norm_elementwise_affine": False,
    "num_embeds_ada_norm": 1000,
    "attention_type": "default",
}


def diffusers_config_to_ours(data: dict) -> PixArtConfig:
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object of diffusers config fields, got {type(data).__name__}")
    if data.get("norm_type", "ada_norm_single") != "ada_norm_single":
        raise WeightsError(f"diffusers transformer with norm_type {data['norm_type']!r} is not PixArt")
    for key, value in FIXED_DIFFUSERS_FIELDS.items():
        if data.get(key, value) not in (value, None):
            raise WeightsError(f"diffusers config has {key}={data[key]!r}; PixArt computes with {value!r} only")
    if data.get("caption_channels") is None:
        raise WeightsError("diffusers config has no caption_channels: not a PixArt text-to-image transformer")
    sample_size = data.get("sample_size", 128)
    micro = data.get("use_additional_conditions")
    scale = data.get("interpolation_scale")
    in_channels = data.get("in_channels", 4)
    # As diffusers' constructor: 8 when config.json leaves the key out, in_channels when it holds null.
    out_channels = data.get("out_channels", 8)
    out_channels = in_channels if out_channels is None else out_channels
    return PixArtConfig(
        input_size=sample_size,
        patch_size=data.get("patch_size", 2),
        in_channels=in_channels,
        hidden_size=data.get("num_attention_heads", 16) * data.get("attention_head_dim", 72),
        depth=data.get("num_layers", 28),
        num_heads=data.get("num_attention_heads", 16),
        learn_sigma=out_channels == 2 * in_channels,
        caption_channels=data["caption_channels"],
        # diffusers derives these from sample_size when unset; we make them explicit.
        interpolation_scale=float(scale if scale is not None else max(sample_size // 64, 1)),
        micro_conditions=bool(micro if micro is not None else sample_size == 128),
    )


def diffusers_config_from_ours(config: PixArtConfig) -> dict:
    if config.adaln != "single" or config.caption_norm or config.mlp_ratio != 4.0:
        raise WeightsError(
            "only adaLN-single models with mlp_ratio 4 and without caption_norm have a diffusers layout; "
            "save this model as pixart or official instead"
        )
    return {
        "_class_name": "PixArtTransformer2DModel",
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "attention_head_dim": config.hidden_size // config.num_heads,
        "attention_type": "default",
        "caption_channels": config.caption_channels,
        "cross_attention_dim": config.hidden_size,
        "dropout": 0.0,
        "in_channels": config.in_channels,
        "interpolation_scale": config.interpolation_scale,
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "norm_num_groups": 32,
        "norm_type": "ada_norm_single",
        "num_attention_heads": config.num_heads,
        "num_embeds_ada_norm": 1000,
        "num_layers": config.depth,
        "out_channels": config.out_channels,
        "patch_size": config.patch_size,
        "sample_size": config.input_size,
        "upcast_attention": False,
        "use_additional_conditions": config.micro_conditions,
    }


def official_pos_embed(config: PixArtConfig) -> torch.Tensor:
    """The (1, N0, D) pos_embed buffer official checkpoints carry for their square training grid."""
    grid = config.base_size
    return sincos_2d(config.hidden_size, grid, grid, grid, config.interpolation_scale).float()[None]

"""Building the model of a run and initialising it from a checkpoint, strictly.

Each stage names what it starts from (`init_from`) and the exact key prefixes allowed to be new
(`init_new_keys`); anything else missing, any unexpected key and any shape mismatch is an error.
A class-conditional DiT checkpoint given to a text-to-image run is re-parameterised (stage 1 -> 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from pixart.diffusion.objective import DiffusionConfig
from pixart.files import atomic_write
from pixart.model.dit import DiT, DiTConfig
from pixart.model.pixart import PixArt, PixArtConfig
from pixart.train.checkpoint import list_checkpoints
from pixart.train.config import TrainConfig
from pixart.weights import WeightsError, detect_format
from pixart.weights.dit_init import reparameterize_dit
from pixart.weights.formats import FINAL, FINAL_EMA
from pixart.weights.io import read_dit, read_state_and_stored, sampling_entry
from pixart.weights.pth import training_checkpoint_settings


def build_model(config: TrainConfig) -> PixArt | DiT:
    return DiT(config.dit) if config.stage == "class" else PixArt(config.model)


def resolve_init_path(init_from: str) -> Path:
    """A weights path, or a finished run folder: its final EMA weights, or its final raw weights where the EMA
    still holds most of the weights the run started from (stale_ema_share)."""
    path = Path(init_from)
    if path.is_dir():
        # A run extended past its end (--steps raised) keeps its old finals until it ends again: while it
        # is unfinished they are not the run's weights, and a next stage would start from them unawares.
        unfinished = unfinished_run_step(path)
        if unfinished is not None:
            done, goal = unfinished
            raise FileNotFoundError(
                f"init_from {init_from} is a run at step {done} of {goal}: finish it first (its final weights, "
                f"if any, are from an earlier end), or name a weights file in it"
            )
        if (why := stale_finals(path)) is not None:
            raise FileNotFoundError(f"init_from {init_from}: {why}")
        if (path / FINAL_EMA).is_file():
            stale = stale_ema_share(path)
            return path / FINAL if stale is not None and (path / FINAL).is_file() else path / FINAL_EMA
        if (path / "checkpoints").is_dir() or is_run_config(path / "config.json"):  # (diffusers' has no "stage")
            raise FileNotFoundError(f"init_from {init_from} is a run folder without {FINAL_EMA}: has it finished?")
    if not path.exists():
        raise FileNotFoundError(
            f"init_from {init_from} does not exist: train the previous stage first, or point "
            "init_from at its run folder or weights"
        )
    return path


def stale_ema_share(run: Path) -> float | None:
    """The share of its starting weights a finished run's EMA still holds, where that is most of them (a short
    run at the paper's decay 0.9999 that its finish note told to use final.safetensors); else None. A next
    stage started from that EMA would start, in effect, from where the run began."""
    from pixart import config as config_io
    from pixart.train.step import ema_start_share

    try:
        config = config_io.from_dict(TrainConfig, json.loads((run / "config.json").read_text()))
    except (OSError, ValueError):  # no config, or another version's: the EMA, as documented
        return None
    share = ema_start_share(config.optim, config.steps - skipped_steps(run, config.steps))
    return share if share > 0.5 else None


def skipped_steps(run: Path, steps: int) -> int:
    """The steps a finished run skipped (non-finite), which updated no EMA: its last metrics row's count, as
    its finish note counts them (0 where the log cannot say), so that both tell the same EMA apart."""
    from pixart.train.metrics import read_metrics

    try:
        rows = read_metrics(run / "metrics.jsonl")
    except (OSError, ValueError):
        return 0
    last = rows[-1] if rows else {}
    skipped = last.get("skipped_steps") if last.get("step") == steps else None
    return skipped if isinstance(skipped, int) and 0 <= skipped <= steps else 0


def is_run_config(path: Path) -> bool:
    """Whether `path` is a training run's config.json (a run stopped before its first checkpoint has one)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and "stage" in saved and "steps" in saved


def unfinished_run_step(run_dir: Path) -> tuple[int, int] | None:
    """(step reached, steps asked) of a run folder whose latest checkpoint is short of its config's steps."""
    saved = list_checkpoints(run_dir)
    try:
        goal = json.loads((run_dir / "config.json").read_text())["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if saved and isinstance(goal, int) and saved[-1][0] < goal:
        return saved[-1][0], goal
    return None


FINAL_STEP = "step"  # a run's final weights' metadata: the step they were written at


def stale_finals(run_dir: Path) -> str | None:
    """Why a run folder's final weights are not its last state, or None. A run extended past its end and
    killed after its last checkpoint but before its new finals (SIGKILL during a slow save) looked finished,
    and the earlier end's finals were taken for its own. Finals without a recorded step (older versions)
    are taken as current."""
    from pixart.weights.formats import safetensors_metadata

    saved = list_checkpoints(run_dir)
    if not saved or not (run_dir / FINAL_EMA).is_file():
        return None
    try:
        written = int(safetensors_metadata(run_dir / FINAL_EMA)[FINAL_STEP])
    except Exception:  # no step recorded, or a damaged file: whoever reads the weights names the damage
        return None
    if written >= saved[-1][0]:
        return None
    return (
        f"{run_dir}'s final weights are from step {written}, but it trained on to step {saved[-1][0]} and "
        "stopped before writing that step's: rerun its pixart train command to write them (it trains no further)"
    )


def initialize_from(model: PixArt | DiT, config: TrainConfig) -> str:
    """Load `config.init_from` into `model`; returns a one-line description."""
    path = resolve_init_path(config.init_from)
    stale = stale_ema_share(Path(config.init_from)) if path.name == FINAL and Path(config.init_from).is_dir() else None
    why = (
        f" (its {FINAL_EMA} still holds {stale:.0%} of the weights that run started from; name it to start from it)"
        if stale is not None
        else ""
    )
    fmt = detect_format(path)
    if isinstance(model, DiT):
        if fmt != "dit":
            raise WeightsError(f"stage 'class' trains a DiT; {path} holds {fmt} weights")
        dit_state, stored_dit = read_dit(path)
        _refuse_unseen_differences(model.config, stored_dit, path, "dit")
        _load_checked(model, {k: v for k, v in dit_state.items() if k != "pos_embed"}, (), str(path))
        return f"DiT weights from {path}{why}"
    if fmt == "dit":
        dit_state, stored_dit = read_dit(path)
        _refuse_unseen_differences(model.config, stored_dit, path, "model")
        state = reparameterize_dit(dit_state, model.config, seed=config.seed)
        _load_checked(model, state, (), str(path))
        return f"re-parameterised from the class-conditional DiT {path}{why} (adaLN-single tables matched at t=500)"
    # A stage at a higher resolution starts from a lower one's weights, whose stored pos_embed (dropped: it
    # is computed) is not this stage's grid: the shapes that matter are checked by _load_checked.
    _, state, fmt, stored = read_state_and_stored(path, config=model.config, check_grid=False)
    _refuse_unseen_differences(model.config, stored, path, "model")
    missing = _load_checked(model, state, config.init_new_keys, str(path))
    if missing:
        _quiet_new_embedders(model, missing)
    new = f"; new: {sorted({m.rsplit('.', 2)[0] for m in missing})}" if missing else ""
    # a trainer's step-N.pt is read as an official .pth is (its raw set), but it is not one
    what = "the training checkpoint's weights" if training_checkpoint_settings(path) is not None else f"{fmt} weights"
    return f"{what} from {path}{why}{new}"


UNSEEN_FIELDS = ("num_heads", "caption_norm")  # architecture that no tensor's shape shows


def _refuse_unseen_differences(
    ours: PixArtConfig | DiTConfig, stored: PixArtConfig | DiTConfig | None, path: Path, section: str
) -> None:
    """A head count (or caption_norm) other than the one init_from was trained with loads, shapes and all,
    into another model: refused, where the file records its config (official DiT and PixArt files do not)."""
    if stored is None:
        return
    differs = [
        name
        for name in UNSEEN_FIELDS
        if hasattr(ours, name) and hasattr(stored, name) and getattr(ours, name) != getattr(stored, name)
    ]
    if differs:
        theirs = ", ".join(f"{section}.{name}={getattr(stored, name)}" for name in differs)
        here = ", ".join(f"{getattr(ours, name)}" for name in differs)
        raise WeightsError(
            f"init_from {path} was trained with {theirs} (this stage's model has {here}), which its tensors' "
            f"shapes cannot show: set {theirs}"
        )


def _load_checked(model: nn.Module, state: dict[str, torch.Tensor], allowed_new: tuple[str, ...], what: str) -> list:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    not_allowed = [k for k in missing if not k.startswith(allowed_new)]
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if not_allowed or unexpected or mis_shaped:
        raise WeightsError(
            f"{what} does not fit this stage's model: missing {not_allowed[:8]} (allowed new: {list(allowed_new)}), "
            f"unexpected {unexpected[:8]}, mis-shaped {mis_shaped[:8]}"
        )
    model.load_state_dict(state, strict=False)
    return missing


def _quiet_new_embedders(model: PixArt, missing: list[str]) -> None:
    """New micro-condition embedders start with a zero output layer, so the model is unchanged at step 0
    (the official code starts them at random; this avoids a jolt when 1024-MS training starts from 512)."""
    for name in ("csize_embedder", "ar_embedder"):
        if any(k.startswith(name + ".") for k in missing):
            _, layer = getattr(model, name).mlp_linears()
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


def save_weights(
    model: PixArt | DiT,
    path: Path,
    state: dict[str, torch.Tensor] | None = None,
    diffusion: DiffusionConfig | None = None,
    step: int | None = None,
) -> Path:
    """Our safetensors layout (config in the metadata) for PixArt and for the stage-1 DiT. `diffusion`
    records how the weights sample (objective and flow shift), which bare weights otherwise cannot say;
    `step`, a run's final weights' step (stale_finals)."""
    import json

    state = {k: v.detach().float().contiguous().cpu() for k, v in (state or model.state_dict()).items()}
    kind = "dit" if isinstance(model, DiT) else "pixart"
    metadata = {"format": kind, "config": json.dumps(model.config.to_dict())}
    if diffusion is not None:
        metadata.update(sampling_entry(diffusion.objective, diffusion.flow_shift, diffusion.shift_base_tokens))
    if step is not None:
        metadata[FINAL_STEP] = str(step)
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    return path

"""The demo's plan: its stages' steps and data for a time budget, their configs, and the budget kept.

What `pixart demo` (pixart.demo) trains, decided before and between the stages: the full plan scales with
--minutes, a slower machine shortens stages 2 and 3 at stage 1's measured pace, and a rerun keeps what
its folders already trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pixart.data import synthetic
from pixart.diffusion.objective import DiffusionConfig
from pixart.files import read_json
from pixart.model.dit import DiTConfig
from pixart.model.pixart import PixArtConfig
from pixart.train.config import DataConfig, OptimConfig, TrainConfig
from pixart.weights.formats import FINAL_EMA

# Seconds per step of stages 2 and 3 relative to stage 1 (same backbone and batch; stage 3 has twice the
# tokens on its non-square canvases); they let the demo keep its time budget on a slower machine by
# shortening the later stages instead of overrunning. Measured 1.6 and 2.3 on the Xeon 2-core machine
# (2026-11-26), 1.07 and 1.43 on the AMD EPYC 2-core machine that runs CI now (2026-11-28: with 1.6 and 2.3 a
# first run shortened its stages to end at 452 s of 600); these keep about a sixth in hand there. On a Zen 4
# EPYC (2026-11-29, nothing else running) 1.82 and 2.51: the demo refits stage 3 at stage 2's own pace, so a
# first run there shortens stage 3 instead of overrunning (a later run, 364 s, needs neither).
STEP_COST = {"stage2": 1.25, "stage3": 1.7}
CAPTION_TOKENS = 48  # MiniLM tokens per caption: the longest two-object caption fits
FIXED_MINUTES = 4.0  # rendering, encoders and evaluation on the 2-core machine, cold cache; stages scale with the rest
# Of those, what is left once the codec and probe are in hand: rendering and encoding the data, then the
# evaluation (48 s on a Zen 4 2-core machine, twenty-second session: 41.6 s and 6.7 s), with some in hand.
DATA_AND_EVAL_MINUTES = 1.0
MIN_MINUTES = 5  # a budget below leaves the stages almost nothing
# The least of their steps left that a slow machine shortens stages 2 and 3 to: below, they learn nothing worth
# showing (a loaded machine cut both to 1 step, with warm-ups 50 times longer), so the demo runs over instead
MIN_SHARE = 0.25
# Its data is fixed (8,192 base images): past this a budget only repeats them (--minutes 1e6 planned 5e7
# stage-1 steps, two years). Longer runs are `pixart train`'s, on data of one's own.
MAX_MINUTES = 600


@dataclass(frozen=True)
class DemoPlan:
    """Steps and data per stage; `quick` shrinks everything to a smoke run of the same path."""

    stage1_steps: int = 300
    stage2_steps: int = 2200
    stage3_steps: int = 400
    base_images: int = 8192
    bucket_images: int = 1024  # per stage-3 bucket
    batch_size: int = 64
    eval_single: int = 128
    eval_pairs: int = 128
    codec_steps: int = 4000
    probe_steps: int = 600
    warmup_steps: int = 50  # stages 1 and 2; stage 3 fine-tunes from stage 2 after a shorter one
    stage3_warmup_steps: int = 10

    @classmethod
    def for_budget(cls, minutes: float, quick: bool, *, minutes_spent: float | None = None) -> DemoPlan:
        """The plan for a budget of `minutes`; with `minutes_spent` (the codec and probe loaded or trained),
        on what is left of it: from the cache they take seconds, not the cold cache's minutes, and a
        budget under 10 minutes planned for those (--minutes 5 used 112 s of its 300). At most the
        10-minute plan that way: the default demo's plan stays what it was."""
        if quick:
            return cls(
                stage1_steps=4,
                stage2_steps=8,
                stage3_steps=4,
                base_images=256,
                bucket_images=64,
                batch_size=16,
                eval_single=16,
                eval_pairs=16,
                codec_steps=60,
                probe_steps=40,
                warmup_steps=2,  # within each stage's few steps: the trainer warns of a warm-up the run never ends
                stage3_warmup_steps=2,
            )
        scale = max(0.2, (minutes - FIXED_MINUTES) / 6.0)
        if minutes_spent is not None:
            scale = max(scale, min(1.0, (minutes - minutes_spent - DATA_AND_EVAL_MINUTES) / 6.0))
        plan = cls()
        return dataclasses.replace(
            plan,
            stage1_steps=int(plan.stage1_steps * scale),
            stage2_steps=int(plan.stage2_steps * scale),
            stage3_steps=int(plan.stage3_steps * scale),
        )


def model_config(micro_conditions: bool) -> PixArtConfig:
    return PixArtConfig(
        input_size=3,
        patch_size=1,
        in_channels=16,
        hidden_size=144,
        depth=6,
        num_heads=4,
        caption_channels=384,
        max_length=CAPTION_TOKENS,
        caption_norm=True,
        learn_sigma=False,
        micro_conditions=micro_conditions,
    )


def stage_configs(plan: DemoPlan, data_base: Path, data_multi: Path, out: Path) -> dict[str, TrainConfig]:
    """The three stages, sharing one objective and optimiser; only what the stage is about changes."""
    diffusion = DiffusionConfig(objective="flow", high_noise_fraction=0.5)  # layout is decided at high noise
    optim = OptimConfig(
        lr=1e-3, auto_lr=False, warmup_steps=plan.warmup_steps, grad_clip=1.0, ema_decay=0.995, ema_warmup=True
    )
    data = DataConfig(root=str(data_base), batch_size=plan.batch_size, num_workers=0, caption_probs={"dense": 1.0})
    common = TrainConfig(diffusion=diffusion, optim=optim, data=data, previews=False, log_every=25)
    backbone = model_config(False)  # stage 1 is the same backbone with a label embedder and per-block adaLN
    shared = (
        "input_size",
        "patch_size",
        "in_channels",
        "hidden_size",
        "depth",
        "num_heads",
        "mlp_ratio",
        "learn_sigma",
    )
    dit = DiTConfig(**{name: getattr(backbone, name) for name in shared}, num_classes=synthetic.NUM_CLASSES)
    return {
        "stage1": dataclasses.replace(
            common,
            recipe="demo-stage1",
            stage="class",
            dit=dit,
            steps=plan.stage1_steps,
            checkpoint_every=max(1, plan.stage1_steps),
        ),
        "stage2": dataclasses.replace(
            common,
            recipe="demo-stage2",
            model=model_config(False),
            steps=plan.stage2_steps,
            checkpoint_every=max(1, plan.stage2_steps // 2),
            init_from=str(out / "stage1"),
        ),
        "stage3": dataclasses.replace(
            common,
            recipe="demo-stage3",
            model=model_config(True),
            data=dataclasses.replace(data, root=str(data_multi)),
            steps=plan.stage3_steps,
            checkpoint_every=max(1, plan.stage3_steps),
            init_from=str(out / "stage2"),
            init_new_keys=("csize_embedder.", "ar_embedder."),
            optim=dataclasses.replace(optim, lr=3e-4, warmup_steps=plan.stage3_warmup_steps),
        ),
    }


def keep_saved_progress(config: TrainConfig, run_dir: Path) -> TrainConfig:
    """A rerun's stage, as far as its folder has got: a finished stage keeps the steps it finished with (a
    new --minutes, or the first run's shortening, changes the plan, not what was trained, and a later stage
    starts from it); an unfinished one trains on to at least its saved step (training cannot be undone:
    a smaller --minutes was refused with advice about options the demo does not have)."""
    from pixart.train.checkpoint import list_checkpoints

    saved = list_checkpoints(run_dir)
    if not saved:
        return config
    step = saved[-1][0]
    steps = step if (run_dir / FINAL_EMA).is_file() else max(config.steps, step)
    # and the warm-up it started with, which a shortened stage caps (fit_to_budget): another is another run
    started = read_json(run_dir / "config.json") or {}
    warmup = (started.get("optim") or {}).get("warmup_steps") if isinstance(started.get("optim"), dict) else None
    optim = config.optim if not isinstance(warmup, int) else dataclasses.replace(config.optim, warmup_steps=warmup)
    return dataclasses.replace(config, steps=steps, optim=optim)


def seconds_to_train(stages: dict[str, TrainConfig], stage1_seconds_per_step: float, done: dict[str, int]) -> float:
    """What the steps stages 2 and 3 have left (`done`: those trained) take at stage 1's pace."""
    return sum(
        stage1_seconds_per_step * STEP_COST[name] * max(stages[name].steps - done.get(name, 0), 0) for name in STEP_COST
    )


def fit_to_budget(
    stages: dict[str, TrainConfig],
    seconds_left: float,
    stage1_seconds_per_step: float,
    done: dict[str, int] | None = None,
) -> tuple[dict[str, TrainConfig], float]:
    """Shorten stages 2 and 3 alike when, at stage 1's measured pace, the steps they have left (`done`: the
    steps a rerun finds trained) would overrun the time left; to MIN_SHARE of them at the least, which then
    overruns (the caller says so). A shortened stage's warm-up is at most a quarter of its steps.

    Returns the (possibly) shortened stages and the factor applied to the steps left (1.0 when they fit).
    """
    done = done or {}
    left = {name: max(stages[name].steps - done.get(name, 0), 0) for name in STEP_COST}
    projected = seconds_to_train(stages, stage1_seconds_per_step, done)
    factor = min(1.0, max(seconds_left, 0.0) / max(projected, 1e-9))
    if factor >= 1.0:
        return stages, 1.0
    factor = max(factor, MIN_SHARE)
    shortened = dict(stages)
    for name in STEP_COST:
        config = stages[name]
        steps = max(1, done.get(name, 0) + int(left[name] * factor))
        # a warm-up the stage never ends leaves its lr below full; one begun keeps its length (keep_saved_progress)
        warmup = config.optim.warmup_steps if done.get(name, 0) else min(config.optim.warmup_steps, max(1, steps // 4))
        shortened[name] = dataclasses.replace(
            config,
            steps=steps,
            checkpoint_every=max(1, min(config.checkpoint_every, steps)),
            optim=dataclasses.replace(config.optim, warmup_steps=warmup),
        )
    return shortened, factor

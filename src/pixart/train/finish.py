"""The end of a training run: its final weights, loss curve and last preview grid, and the summary it returns."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from pixart.files import remove_leftovers
from pixart.model.dit import DiT
from pixart.model.pixart import PixArt
from pixart.train.config import TrainConfig
from pixart.train.distributed import World, gather_full
from pixart.train.init import save_weights
from pixart.train.metrics import plot_loss, read_metrics
from pixart.train.previews import Previewer
from pixart.train.step import ema_start_share
from pixart.weights.formats import FINAL, FINAL_EMA


def finish_run(
    config: TrainConfig,
    run_dir: Path,
    world: World,
    inner: PixArt | DiT,
    ema: dict[str, torch.Tensor],
    previewer: Previewer | None,
    status: str,
    step: int,
    skipped: int,
    last_loss: float,
    started: float,
    resumed_at: int = 0,
) -> dict:
    """The run's summary; a finished run's final weights (raw and EMA), loss curve and last preview, written by
    the main rank (every rank gathers sharded weights)."""
    if math.isnan(last_loss):  # no step ran in this call (a finished run reopened): its last logged loss
        rows = read_metrics(Path(run_dir) / "metrics.jsonl")
        logged = [row["loss"] for row in rows if isinstance(row.get("loss"), int | float)]  # null: not finite
        last_loss = logged[-1] if logged else last_loss
    summary = {
        "status": status,
        "steps": step,
        "trained_steps": step - resumed_at,  # in this call: 0 for a finished run reopened
        "skipped_steps": skipped,
        "final_loss": last_loss,
        "wall_seconds": round(time.time() - started, 1),
        "run_dir": str(run_dir),
    }
    if status != "finished":
        summary["resume"] = "rerun the same command to continue from the last checkpoint"
        if world.is_main:
            print(f"[pixart train] interrupted at step {step}; checkpoint saved. {summary['resume']}.")
        return summary
    full = gather_full(inner.state_dict())
    with_ema = {**full, **gather_full(ema)}
    if world.is_main:
        remove_leftovers(run_dir, "final*.safetensors", holding_lock=True)  # of a run killed while writing them
        save_weights(inner, run_dir / FINAL, full, config.diffusion, step=step)
        save_weights(inner, run_dir / FINAL_EMA, with_ema, config.diffusion, step=step)  # last: stale_finals
        plot_loss({config.recipe: read_metrics(run_dir / "metrics.jsonl")}, run_dir / "loss.png")
        # the live tensors (a single process): nothing trains them any more
        preview = previewer.write_or_warn(with_ema, step) if previewer is not None else None
        if preview is not None:
            summary["preview"] = str(preview)
        summary.update(
            final=str(run_dir / FINAL), final_ema=str(run_dir / FINAL_EMA), loss_curve=str(run_dir / "loss.png")
        )
        print(
            # the time is this call's: after a resume, say how many of the steps it ran
            f"[pixart train] done: {step} steps{f' ({step - resumed_at} in this run)' if resumed_at else ''} in "
            f"{summary['wall_seconds']}s, final loss {last_loss:.4f}, "
            f"{skipped} skipped step(s); weights {run_dir / FINAL_EMA} (EMA) and {run_dir / FINAL}; "
            f"loss curve {run_dir / 'loss.png'}"
        )
        if (share := ema_start_share(config.optim, step - skipped)) > 0.5:  # the paper's 0.9999 on a short run
            print(
                f"[pixart train] note: {FINAL_EMA} still holds {share:.0%} of the weights this run started from "
                f"(EMA decay {config.optim.ema_decay} over {step - skipped} updates): use {FINAL} for what it "
                "learned, or train with --set optim.ema_warmup=true, whose EMA follows short runs"
            )
    return summary

"""The paper's three claims (and one of ours) at small scale, on the shapes world, measured by the probe.

Pairs, each differing in one factor only (same data, schedule, budget and evaluation):
1. init:     stage-2 text-to-image training from scratch vs from the stage-1 class-conditional DiT
             (re-parameterised): probe accuracy against steps, and the steps each needs to reach a threshold;
2. captions: short alt-text captions vs dense captions (both from stage 1): attributes and binding on
             two-object prompts;
3. adaln:    adaLN-single (PixArt) vs per-block adaLN-Zero (DiT-style): parameters and accuracy;
4. objective (beyond the paper): IDDPM (eps + learned variance) vs rectified flow.

    .venv/bin/python benchmarks/ablations.py                 # ~25 min on 2 CPU cores; writes docs/ablations.md
    .venv/bin/python benchmarks/ablations.py --quick         # the same path in a minute (a test runs it)

On GPUs the same script runs at larger budgets with --steps/--images/--seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from ablation_report import THRESHOLD, write_report

from pixart import demo
from pixart.data.shapes_features import build_shapes_features
from pixart.diffusion.objective import DiffusionConfig
from pixart.encoders.shapes_ae import load_or_train_shapes_codec
from pixart.encoders.text import MiniLMEncoder
from pixart.evaluate.probe_training import load_or_train_probe
from pixart.evaluate.suite import shapes_suite
from pixart.files import cache_dir
from pixart.generate import TextToImage
from pixart.model.pixart import PixArt
from pixart.train.checkpoint import list_checkpoints, load_checkpoint
from pixart.train.config import TrainConfig
from pixart.train.loop import train

ATTRIBUTES = ("color", "shape", "size", "position")
# variant -> (init from stage 1, caption field, adaln, objective)
VARIANTS = {
    "scratch": (False, "dense", "single", "flow"),
    "stage1-init": (True, "dense", "single", "flow"),
    "short-captions": (True, "alt", "single", "flow"),
    "per-block-adaln": (False, "dense", "per_block", "flow"),
    "iddpm": (False, "dense", "single", "iddpm"),
}
PAIRS = {
    "1. initialisation from stage 1": ("scratch", "stage1-init"),
    "2. dense vs short captions": ("short-captions", "stage1-init"),
    "3. adaLN-single vs per-block adaLN-Zero": ("per-block-adaln", "scratch"),
    "4. objective: IDDPM vs rectified flow": ("iddpm", "scratch"),
}


def variant_config(name: str, base: TrainConfig, stage1_dir: Path) -> TrainConfig:
    init, field, adaln, objective = VARIANTS[name]
    model = dataclasses.replace(base.model, adaln=adaln, learn_sigma=objective == "iddpm")
    diffusion = dataclasses.replace(base.diffusion, objective=objective)
    data = dataclasses.replace(base.data, caption_probs={field: 1.0})
    return dataclasses.replace(
        base,
        recipe=f"ablation-{name}",
        model=model,
        diffusion=diffusion,
        data=data,
        init_from=str(stage1_dir) if init else "",
    )


def evaluate_run(run_dir: Path, config: TrainConfig, codec, encoder, probe, prompts: int) -> list[dict]:
    """Probe scores of the EMA weights at every checkpoint of a run."""
    spec = demo.shapes_model_spec(config.diffusion.objective, {"1.0": list(demo.BASE)})
    curve = []
    for step, path in list_checkpoints(run_dir):
        state = load_checkpoint(path)
        model = PixArt(config.model)
        model.load_state_dict({**state["model"], **state["ema"]})
        pipe = TextToImage(model.eval(), encoder, codec, spec)
        scores = shapes_suite(pipe, probe, single=prompts, pairs=prompts)
        curve.append({"step": step, **{k: scores[k] for k in (*ATTRIBUTES, "binding", "relation")}})
    return curve


def training_seconds(run_dir: Path) -> float:
    """Training wall-clock of a run from its own metrics, so a rerun that resumes a finished run keeps it."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return round(float(json.loads(lines[-1])["time"]), 1) if lines else 0.0


def steps_to_threshold(curve: list[dict]) -> float | None:
    """First step where the mean attribute accuracy crosses THRESHOLD (linear between checkpoints)."""
    previous = (0, 0.0)
    for point in curve:
        value = float(np.mean([point[a] for a in ATTRIBUTES]))
        if value >= THRESHOLD:
            s0, v0 = previous
            return s0 + (point["step"] - s0) * (THRESHOLD - v0) / max(value - v0, 1e-9)
        previous = (point["step"], value)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget: checks the script end to end")
    parser.add_argument("--steps", type=int, default=1200, help="stage-2 steps per run")
    parser.add_argument("--stage1-steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--prompts", type=int, default=64, help="single and two-object prompts per evaluation")
    parser.add_argument("--out", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="where ablations.md and plots go")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.stage1_steps, args.images, args.prompts, args.seeds = 4, 2, 128, 8, "0"
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()
    cache = args.out / ".cache" if args.quick else cache_dir()
    codec = load_or_train_shapes_codec(cache=cache, progress=False, **({"steps": 60} if args.quick else {}))
    probe = load_or_train_probe(cache_dir=cache, progress=False, **({"steps": 40} if args.quick else {}))
    encoder = MiniLMEncoder(max_length=demo.CAPTION_TOKENS)
    data = args.out / "data"
    if not (data / "dataset.json").is_file():
        build_shapes_features(
            data, sizes=[demo.BASE], count=args.images, seed=1, encoder=encoder, codec=codec, progress=False
        )
    plan = dataclasses.replace(
        demo.DemoPlan(), stage1_steps=args.stage1_steps, stage2_steps=args.steps, batch_size=16 if args.quick else 64
    )
    stages = demo.stage_configs(plan, data, data, args.out)
    results: dict[str, dict] = {}
    stage1_seconds = 0.0
    for seed in seeds:
        stage1_dir = args.out / f"stage1-seed{seed}"
        train(dataclasses.replace(stages["stage1"], seed=seed), stage1_dir, progress=False)
        stage1_seconds += training_seconds(stage1_dir)
        base = dataclasses.replace(
            stages["stage2"],
            seed=seed,
            checkpoint_every=max(1, args.steps // (2 if args.quick else 4)),
            keep_checkpoints=100,
            diffusion=DiffusionConfig(objective="flow", high_noise_fraction=0.5),
        )
        for name in VARIANTS:
            config = variant_config(name, base, stage1_dir)
            run_dir = args.out / f"{name}-seed{seed}"
            train(config, run_dir, progress=False)  # a finished run is only reopened: it is re-evaluated
            seconds = training_seconds(run_dir)
            curve = evaluate_run(run_dir, config, codec, encoder, probe, args.prompts)
            params = sum(p.numel() for p in PixArt(config.model).parameters())
            results.setdefault(name, {"parameters": params, "runs": []})["runs"].append(
                {
                    "seed": seed,
                    "train_seconds": round(seconds, 1),
                    "curve": curve,
                    "steps_to_threshold": steps_to_threshold(curve),
                }
            )
            print(f"{name} seed {seed}: {curve[-1]} in {seconds:.0f}s", flush=True)
    variant_seconds = sum(r["train_seconds"] for v in results.values() for r in v["runs"])
    summary = {
        "results": results,
        "wall_seconds": round(time.time() - started),
        "training_seconds": round(stage1_seconds + variant_seconds),
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": demo.machine_info(),
    }
    write_report(summary, PAIRS, args.docs, quick=args.quick)
    print(f"ablations done in {summary['wall_seconds']}s; see {args.docs / 'ablations.md'}")


if __name__ == "__main__":
    main()

"""`pixart train` itself, end to end: samples/s and MFU of the real trainer on random features.

bench_gpu.py and profile_gpu.py time a bare step with an MSE loss. This runs pixart.train.loop.train, with
its data loader, IDDPM objective, non-finite guard, clipping and EMA, on a feature dataset of random
latents and caption features (random valid lengths) written to a temporary folder, and reads samples/s
and MFU from the run's metrics.jsonl. The first log window holds the compilation and is left out; the
table gives the median of the others.

    python benchmarks/bench_trainer.py --recipe stage3-aesthetic-512 --batch 16 --compile      # on a GPU
    python benchmarks/bench_trainer.py --recipe tiny --batch 8 --steps 12 --log-every 4        # CPU smoke run

With --profile, torch.profiler records a few steps after the first window and prints where a step's wall
time goes: the kernels by category, the GPU's idle remainder, the copies, and the host calls that took
longest (a wait for the device shows there as cudaStreamSynchronize, cudaMemcpyAsync or aten::item). On
an H100 the real trainer ran 10% below the bare step with the same extras (`profile_gpu.py`'s
`trainer-regional`), against 4% on an H200: this is the tool to find where.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from pixart import config as config_io
from pixart.data.buckets import bucket_key
from pixart.data.shards import FeatureSample, write_dataset_info, write_shard
from pixart.recipes import get_recipe
from pixart.train.config import TrainConfig
from pixart.train.loop import train
from pixart.train.metrics import read_metrics


def write_random_features(folder: Path, config: TrainConfig, samples: int, seed: int = 0) -> None:
    """`samples` random square samples shaped for config.model: latents (C, h, w), captions (L, C_text)."""
    model = config.model
    side, pixels = model.input_size, model.input_size * 8  # an SD-VAE-like codec: 8x downsampling
    key = bucket_key(pixels, pixels)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(samples):
        length = int(torch.randint(8, model.max_length + 1, (), generator=generator))
        rows.append(
            FeatureSample(
                mean=torch.randn(model.in_channels, side, side, generator=generator),
                std=0.1 * torch.rand(model.in_channels, side, side, generator=generator),
                text={"dense": torch.randn(length, model.caption_channels, generator=generator)},
                bucket=key,
                original_hw=(pixels, pixels),
                captions={"dense": f"random caption {i}"},
            )
        )
    write_shard(folder, 0, rows, ["dense"])
    codec = {"kind": "random", "latent_channels": model.in_channels, "downsample": 8, "scaling_factor": 0.18215}
    text = {"kind": "random", "width": model.caption_channels, "max_length": model.max_length}
    info = {"caption_fields": ["dense"], "resolution": pixels, "buckets": {key: [pixels, pixels]}}
    write_dataset_info(folder, {**info, "codec": codec, "text_encoder": text, "samples": samples})


@contextmanager
def profiled_steps(first: int, count: int):
    """torch.profiler over training steps first .. first + count - 1 (counted from 1; first >= 1), told
    apart by the loop's calls to compute_loss (one per step at grad_accum 1): the trainer is not changed."""
    from torch.profiler import ProfilerActivity, profile, schedule

    import pixart.train.loop as loop

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    original = loop.compute_loss
    # Profiler step k runs from the k-th call to the next: training step k (step 0 is the time before
    # the first). Steps before `first` - 1 wait, that one warms the profiler up.
    plan = schedule(wait=first - 1, warmup=1, active=count, repeat=1)
    with profile(activities=activities, schedule=plan) as prof:

        def counted(*args, **kwargs):
            prof.step()
            return original(*args, **kwargs)

        loop.compute_loss = counted
        try:
            yield prof
        finally:
            loop.compute_loss = original


def clean_windows(steps: int, log_every: int, first: int, count: int) -> list[int]:
    """The last steps of the log windows to time: all but the first (compilation) and, with `count` steps
    profiled from `first`, those holding the profiler's warm-up step (first - 1), a profiled step, or the step
    whose start stops the trace (first + count). Their figures were up to 3x low and went into the median."""
    ends = range(2 * log_every, steps + 1, log_every)
    if not count:
        return list(ends)
    return [end for end in ends if end < first - 1 or end - log_every + 1 > first + count]


def step_breakdown(prof) -> dict:
    """Per profiled step: wall time (the profiler's step spans), kernel time by category, the copies, and
    the host calls with the most self time.

    With CUDA traced, the profiler mirrors each user annotation (the `ProfilerStep#k` spans, compiled
    graphs' `## Call CompiledFxGraph ##`) on the GPU's timeline as an event of the CUDA type: those are
    spans, not kernels. Counted (as until the eighteenth session), they doubled the step count and filled
    "other" with whole steps: 120 ms of "other" and a negative idle time in an H200 profile.
    """
    sys.path.insert(0, str(Path(__file__).parent))
    from profile_gpu import category

    events = prof.events()
    spans = [e for e in events if e.name.startswith("ProfilerStep") and e.device_type.name == "CPU"]
    steps = max(len(spans), 1)
    wall_us = sum(e.cpu_time_total for e in spans) / steps
    kernels: dict[str, float] = defaultdict(float)
    host: dict[str, float] = defaultdict(float)
    for e in events:
        if e.device_type.name == "CUDA":
            if getattr(e, "is_user_annotation", False) or e.name.startswith("ProfilerStep"):
                continue
            name = "copies (memcpy, memset)" if e.name.startswith(("Memcpy", "Memset")) else category(e.name)
            kernels[name] += e.device_time_total / steps
        elif not e.name.startswith("ProfilerStep"):
            host[e.name] += e.self_cpu_time_total / steps
    device_us = sum(kernels.values())
    return {
        "steps_profiled": len(spans),
        "wall_ms_per_step": round(wall_us / 1e3, 2),
        "device_ms_per_step": {k: round(v / 1e3, 2) for k, v in sorted(kernels.items(), key=lambda i: -i[1])},
        "device_idle_ms_per_step": round((wall_us - device_us) / 1e3, 2) if device_us else None,
        "host_self_ms_per_step": {k[:80]: round(v / 1e3, 2) for k, v in sorted(host.items(), key=lambda i: -i[1])[:12]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="stage3-aesthetic-512", help="a training recipe (its model and optimizer)")
    parser.add_argument("--batch", type=int, default=16, help="data.batch_size")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-every", type=int, default=10, help="one throughput figure per this many steps")
    parser.add_argument("--samples", type=int, default=64, help="distinct random samples written (epochs repeat)")
    parser.add_argument("--compile", action="store_true", help="compile=true (each block compiled)")
    parser.add_argument("--checkpointing", action="store_true", help="keep the recipe's activation checkpointing")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="profile N steps after the first window (see above)"
    )
    args = parser.parse_args(argv)
    if args.steps < 2 * args.log_every:
        parser.error("--steps must be at least twice --log-every: the first window (compilation) is left out")
    first = args.log_every + 2  # the first profiled step: the second after the first window (compilation)
    if args.profile and not clean_windows(args.steps, args.log_every, first, args.profile):
        least = -(-(first + args.profile + args.log_every) // args.log_every) * args.log_every
        parser.error(
            f"--profile {args.profile} needs --steps of at least {least}: a window of --log-every steps after the "
            "profiled ones, whose figure the profiler does not slow"
        )

    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        data, run_dir = Path(tmp) / "data", Path(tmp) / "run"
        data.mkdir()
        overrides = [
            f"data.root={data}",
            "data.synthetic=''",
            f"data.batch_size={args.batch}",
            f"steps={args.steps}",
            f"log_every={args.log_every}",
            f"checkpoint_every={args.steps}",
            "keep_checkpoints=1",
            "previews=false",
            "init_from=''",
            f"compile={str(args.compile).lower()}",
            *([] if args.checkpointing else ["gradient_checkpointing=false"]),
            *args.set,
        ]
        config = config_io.apply_overrides(get_recipe(args.recipe), overrides)
        write_random_features(data, config, args.samples)
        started = time.time()
        # Profiled from the second step after the first window, which holds the compilation.
        with profiled_steps(first, args.profile) if args.profile else nullcontext() as prof:
            summary = train(config, run_dir, progress=False)
        rows = read_metrics(run_dir / "metrics.jsonl")
    # The first window holds the compilation and warm-up, never timed, and those the profiler slowed neither; a
    # run stopped early (timeout's SIGTERM makes the trainer checkpoint and stop) may have logged only those, or
    # none: no figure then.
    clean = set(clean_windows(args.steps, args.log_every, first, args.profile))
    timed = [row for row in rows if row["step"] in clean]
    result = {
        "recipe": args.recipe,
        "batch": args.batch,
        "compile": args.compile,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "samples_per_s": statistics.median(r["samples_per_s"] for r in timed) if timed else None,
        # each window's too: a recompilation or a new kernel plan shows as one slow window, not in the median
        "samples_per_s_windows": [round(r["samples_per_s"], 2) for r in timed],
        "mfu": statistics.median(r["mfu"] for r in timed) if timed and all("mfu" in r for r in timed) else None,
        "status": summary["status"],
        "windows_timed": len(timed),
        "final_loss": summary.get("final_loss"),
        "wall_s": time.time() - started,
    }
    # Said and saved before the profile is read (seconds of parsing a time cap could cut short)
    print(json.dumps(result))
    mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "-"
    print("| recipe | batch | compile | samples/s | MFU | windows timed | status |")
    print("|---|---|---|---|---|---|---|")
    speed = f"{result['samples_per_s']:.1f}" if result["samples_per_s"] is not None else "-"
    print(f"| {args.recipe} | {args.batch} | {args.compile} | {speed} | {mfu} | {len(timed)} | {summary['status']} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    if args.profile:
        result["profile"] = step_breakdown(prof)
        print(json.dumps({"profile": result["profile"]}))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

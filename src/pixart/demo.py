"""`pixart demo`: the whole PixArt-alpha story on the shapes world, on a laptop CPU, in minutes.

Stage 1 trains a class-conditional DiT (pixel dependency), which becomes a PixArt by the paper's
re-parameterisation; stage 2 aligns text and image on dense captions; stage 3 fine-tunes at larger,
non-square sizes with micro-conditions. The real code paths do the work (shapes-world feature shards,
MiniLM, the trainer, the sampler, the probe); this file runs the stages that demo_plan.py plans, and writes
the report.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pixart import config as config_io
from pixart.data import synthetic, synthetic_dataset
from pixart.demo_folder import (
    REPORT_FILES,
    DemoError,
    DemoInterrupted,
    add_call_seconds,
    check_not_moved,
    check_or_record_kind,
    standing_report,
)
from pixart.demo_plan import (
    CAPTION_TOKENS,
    FIXED_MINUTES,
    MAX_MINUTES,
    MIN_MINUTES,
    STEP_COST,
    DemoPlan,
    fit_to_budget,
    keep_saved_progress,
    seconds_to_train,
    stage_configs,
)
from pixart.diffusion.schedulers import default_sampler
from pixart.files import write_json
from pixart.model.pixart import count_parameters
from pixart.modelfolder import ModelSpec
from pixart.outputs import save_png
from pixart.train.config import TrainConfig
from pixart.weights.formats import FINAL_EMA

if TYPE_CHECKING:
    from pixart.encoders.shapes_ae import ShapesCodec
    from pixart.evaluate.probe import Probe

BASE = (36, 36)  # 3x3 cells of 12 px: one latent cell (token) per grid cell
BUCKETS = [(36, 36), (36, 72), (72, 36)]  # stage 3: larger, non-square canvases, same object scale
SAMPLE_PROMPTS = [
    "a large red circle in the centre, on a grey background",
    "a small blue square at the top left, on a white background",
    "a large yellow triangle at the bottom right, on a black background",
    "a large green diamond at the top, on a grey background",
    "a small purple cross on the left, on a white background",
    "a large orange square at the bottom, on a black background",
    "a large red triangle at the top left and a small blue circle at the bottom right, on a grey background",
    "a large green cross on the left and a large yellow square on the right, on a black background",
    "a small white diamond at the top and a large purple circle in the centre, on a grey background",
]
# Sampling the evaluation prompts, the probe and the report: 7.3 s at the full plan's 128 + 128 on the
# AMD 2-core machine, nothing else running (nineteenth session; a review measured 68 s beside a test suite)
EVAL_SECONDS = 15
WIDE_PROMPT = "a large blue circle on the left and a large red square on the right, on a white background"


def run_demo(out: str | Path, *, minutes: float = 10.0, quick: bool = False, progress: bool = True) -> dict:
    """Run every stage into `out` and return the report (also written as report.json / report.md)."""
    from pixart.demo_report import write_report_md

    if not quick and not (math.isfinite(minutes) and MIN_MINUTES <= minutes <= MAX_MINUTES):  # before anything
        raise DemoError(
            f"--minutes must be a finite number from {MIN_MINUTES} (about {FIXED_MINUTES:g} go to rendering, "
            f"encoders and evaluation) to {MAX_MINUTES} (its data is fixed: longer runs are pixart train's), "
            f"got {minutes}"
        )
    started = time.time()
    out = Path(out).resolve()  # the stages record paths in it: ./x and /abs/x must be one run on a rerun
    out.mkdir(parents=True, exist_ok=True)
    check_or_record_kind(out, quick)
    check_not_moved(out)
    try:
        report = run_stages(out, minutes, quick, progress, started)
    except BaseException:  # Ctrl-C, a stage stopped on a signal, a failure: its minutes count all the same
        add_call_seconds(out, time.time() - started)
        raise
    seconds = round(time.time() - started, 1)
    if not report.pop("standing", False):  # a call that trained nothing leaves the evaluating call's time
        report["wall_seconds"] = seconds
    report["total_seconds"], report["calls"] = add_call_seconds(out, seconds)
    report["kind"] = "quick" if quick else "full"
    write_json(out / "report.json", report)
    write_report_md(out, report)
    return report


def run_stages(out: Path, minutes: float, quick: bool, progress: bool, started: float) -> dict:
    """run_demo's work in `out`: codec, probe, data, the three stages, the model folder, the evaluation."""
    from pixart.data.shapes_features import build_shapes_features
    from pixart.encoders.shapes_ae import load_or_train_shapes_codec
    from pixart.encoders.text import MiniLMEncoder
    from pixart.evaluate.probe_training import load_or_train_probe
    from pixart.files import cache_dir
    from pixart.train.loop import train

    plan = DemoPlan.for_budget(minutes, quick)  # the codec's and probe's steps; the stages' are planned after them
    timings: dict[str, float] = {}

    def timed(name: str, start: float) -> None:
        timings[name] = round(time.time() - start, 1)
        say(f"{name}: {timings[name]:.0f}s")

    cache = out / ".cache" if quick else cache_dir()
    t = time.time()
    codec = load_or_train_shapes_codec(cache=cache, progress=progress, steps=plan.codec_steps)
    timed("codec (shapes autoencoder; trained on the first run, then cached)", t)
    t = time.time()
    probe = load_or_train_probe(cache_dir=cache, steps=plan.probe_steps, progress=progress)
    timed("probe (trained on the first run, then cached)", t)
    plan = DemoPlan.for_budget(minutes, quick, minutes_spent=(time.time() - started) / 60)  # on what is left

    t = time.time()
    encoder = MiniLMEncoder(max_length=CAPTION_TOKENS)
    data_base, data_multi = out / "data" / "base", out / "data" / "buckets"
    for folder, sizes, count, seed in (
        (data_base, [BASE], plan.base_images, 1),
        (data_multi, BUCKETS, plan.bucket_images, 2),
    ):
        if not (folder / "dataset.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            build_shapes_features(
                folder, sizes=sizes, count=count, seed=seed, encoder=encoder, codec=codec, progress=progress
            )
    timed("data (render, encode captions with MiniLM, encode images)", t)

    stages = stage_configs(plan, data_base, data_multi, out)
    summaries = {}
    for name in list(stages):
        config = stages[name] = keep_saved_progress(stages[name], out / name)  # the report tells what trained
        t = time.time()
        say(f"{name}: {describe(name)}")
        summaries[name] = train(config, out / name, progress=progress)
        if summaries[name]["status"] != "finished":  # Ctrl-C or SIGTERM: the stage saved a checkpoint
            raise DemoInterrupted(
                f"interrupted during {name}; rerun the same command to continue from there",
                summaries[name].get("signal", "SIGINT"),
            )
        timed(f"{name} ({config.steps} steps)", t)
        if name in ("stage1", "stage2") and not quick:  # the later stages refitted at the pace just measured
            seconds_left = minutes * 60 - (time.time() - started) - EVAL_SECONDS
            # from the steps the stage trained, in whichever call: a rerun that only reopened it took a
            # fraction of a second, which read as a machine 20 times faster than it is
            seconds_per_step = stage_seconds(out / name) / config.steps or (time.time() - t) / config.steps
            # in stage 1's seconds a step: after stage 2, its own pace (once 1.6 times stage 1's under load,
            # not the plan's 1.25: the run ended 5 s inside its 10 minutes on the evaluation's spare time)
            pace = seconds_per_step / STEP_COST.get(name, 1.0)
            done = {later: saved_step(out / later) for later in STEP_COST}
            # a later stage a call before finished keeps its steps (keep_saved_progress pins them below), so
            # has none left: counted at the plan's, they shortened the stage still to train for nothing
            pinned = {later: keep_saved_progress(stages[later], out / later) for later in STEP_COST}
            stages, factor = fit_to_budget({**stages, **pinned}, seconds_left, pace, done)
            if factor < 1.0:
                later = (
                    f"stages 2 and 3 shortened to {stages['stage2'].steps} and {stages['stage3'].steps} steps"
                    if name == "stage1"
                    else f"stage 3 shortened to {stages['stage3'].steps} steps"
                )
                goal = (
                    f"to finish within {minutes:g} minutes"
                    if seconds_to_train(stages, pace, done) <= seconds_left
                    else f"(a quarter of the steps left, the least that shows anything: past the {minutes:g} minutes)"
                )
                say(
                    f"this machine is slower than planned: {later} {goal}; a new --out with a larger --minutes "
                    "trains them in full (this folder keeps the steps its stages finish with)"
                )

    standing = standing_report(out, {"eval_single": plan.eval_single, "eval_pairs": plan.eval_pairs}, summaries)
    if standing is not None:
        say(f"nothing trained in this call: the evaluation in {out / 'report.json'} stands (delete it to redo it)")
        return {**standing, "standing": True}
    t = time.time()
    for name in REPORT_FILES:  # they stand for weights this call replaces: gone till rewritten
        (out / name).unlink(missing_ok=True)
    model_dir = write_model_folder(out, codec)
    report = evaluate_and_report(out, model_dir, probe, plan, stages, summaries, timings, started, progress)
    timed("evaluation and report", t)
    return report


def saved_step(run_dir: Path) -> int:
    """The step of a stage's latest checkpoint (0 before its first)."""
    from pixart.train.checkpoint import list_checkpoints

    saved = list_checkpoints(run_dir)
    return saved[-1][0] if saved else 0


def stage_seconds(run_dir: Path) -> float:
    """A stage's training time over all the calls that trained it (its last metrics row; 0 without one)."""
    from pixart.train.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    rows = read_metrics(path) if path.is_file() else []
    return float(rows[-1].get("time", 0.0)) if rows else 0.0


def cpu_name() -> str:
    """The processor's model name ("AMD EPYC 7B13"), where Linux says it; else what platform knows (on Linux
    platform.processor() is the architecture: the report read "x86_64")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What a reader needs to compare wall-clock figures: processor, threads, torch and Python versions."""
    return {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def describe(stage: str) -> str:
    return {
        "stage1": "class-conditional DiT on shape x colour labels (pixel-dependency pretraining)",
        "stage2": "re-parameterised into PixArt; text-image alignment on dense captions",
        "stage3": "36x36, 36x72 and 72x36 canvases with micro-conditions (size and aspect ratio)",
    }[stage]


def say(text: str) -> None:
    """A line of the demo's story (stages, a shortened plan): said with or without progress bars."""
    print(f"[pixart demo] {text}", flush=True)


def shapes_model_spec(objective: str, buckets: dict[str, list[int]], **fields: Any) -> ModelSpec:
    """How a shapes-world model runs: MiniLM captions, the shapes codec, 20 solver steps at guidance 3."""
    return ModelSpec(
        text_encoder="minilm",
        text_max_length=CAPTION_TOKENS,
        clean_captions=False,
        codec="shapes-ae",
        objective=objective,
        sampler=default_sampler(objective),
        steps=20,
        cfg_scale=3.0,
        buckets=buckets,
        **fields,
    )


def write_model_folder(out: Path, codec: ShapesCodec) -> Path:
    """out/model: the stage-3 EMA weights, the codec, and how to run them (generate and serve accept it)."""
    from pixart.data.buckets import bucket_table_of
    from pixart.modelfolder import save_model_folder
    from pixart.weights import load_transformer

    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    codec.save(model_dir / "codec.safetensors")
    transformer = load_transformer(out / "stage3" / FINAL_EMA)
    spec = shapes_model_spec(
        "flow",
        bucket_table_of(BUCKETS),
        codec_path="codec.safetensors",
        null_caption="learned",
        extra={"made_by": "pixart demo", "world": synthetic.WORLD_VERSION},
    )
    save_model_folder(model_dir, transformer, spec)
    return model_dir


def evaluate_and_report(
    out: Path,
    model_dir: Path,
    probe: Probe,
    plan: DemoPlan,
    stages: dict[str, TrainConfig],
    summaries: dict[str, dict],
    timings: dict[str, float],
    started: float,
    progress: bool,
) -> dict:
    from pixart.evaluate.probe_training import probe_accuracy
    from pixart.evaluate.suite import SHAPES_KEYS, shapes_suite
    from pixart.generate import TextToImage
    from pixart.generation_settings import Settings
    from pixart.grids import image_grid
    from pixart.train.metrics import plot_loss, read_metrics

    real = synthetic_dataset.make_dataset(512, 424_242, *BASE)  # a seed no training set uses
    probe_on_real = probe_accuracy(probe, real.images, real.scenes)
    pipe = TextToImage.from_path(model_dir)
    scores = shapes_suite(pipe, probe, single=plan.eval_single, pairs=plan.eval_pairs, progress=False)
    square = pipe.generate(SAMPLE_PROMPTS, seed=0, progress=False)
    wide = pipe.generate([WIDE_PROMPT], Settings(aspect="1:2"), seed=0, progress=False)
    grid = image_grid(
        [r.image for r in square + wide], columns=5, cell=144, labels=[*SAMPLE_PROMPTS, WIDE_PROMPT], label_lines=5
    )
    save_png(grid, out / "samples.png")
    plot_loss(
        {name: read_metrics(out / name / "metrics.jsonl") for name in stages},
        out / "loss.png",
        title="pixart demo: loss per stage",
    )
    return {
        "probe": {k: round(v, 4) for k, v in scores.items() if k in SHAPES_KEYS},
        "frechet": {
            "generated_vs_real": round(scores["frechet"], 2),
            "real_vs_real_baseline": round(scores["frechet_real_baseline"], 2),
        },
        "eval_images": scores["images"],
        "probe_on_real_images": {k: round(v, 4) for k, v in probe_on_real.items()},
        "stages": {
            name: {
                "steps": cfg.steps,
                "final_loss": summaries[name]["final_loss"],
                "seconds": round(stage_seconds(out / name), 1),  # every call's training, a rerun's too
                "what": describe(name),
            }
            for name, cfg in stages.items()
        },
        "timings": timings,
        "image_space": {"codec": "shapes-ae", "latent": "16 x (H/12) x (W/12)", "tokens_at_36px": 9},
        "model": {
            "parameters": count_parameters(pipe.transformer),
            "config": pipe.transformer.config.to_dict(),
        },
        "plan": dataclasses.asdict(plan),
        "configs": {name: config_io.to_dict(cfg) for name, cfg in stages.items()},
        "machine": machine_info(),
        "artefacts": {"samples": "samples.png", "loss": "loss.png", "model": "model/"},
    }

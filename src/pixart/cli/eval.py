"""`pixart eval --model DIR [--suite shapes|real]`: score a model, print a table, write the numbers as JSON.

- shapes: held-out shapes-world prompts, read back by the cached attribute probe (per-attribute accuracy on
  single-object prompts; on two-object prompts colour-shape binding, and relation: binding with each object
  in its prompted cell; a Frechet distance in probe features to real renders with its real-vs-real
  baseline); see pixart.evaluate.suite.
- real: FID against a folder of reference images and CLIP score, for a prompt file, with local networks
  (--inception, --clip); see pixart.evaluate.realdata. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pixart.generate imports torch: the CLI imports it only when a command runs
    from pixart.generate import TextToImage
    from pixart.generation_settings import Settings

SUITES = ("shapes", "real")
REAL_CROPS = ("centre", "center", "none")
SINGLE_ROWS = (("color", "colour"), ("shape", "shape"), ("size", "size"), ("position", "position"))
# Options that belong to one suite: given with the other, they would be silently ignored, so they are refused.
SUITE_OPTIONS = {
    "shapes": ("single", "pairs", "probe_cache", "probe_steps"),
    "real": ("prompts", "field", "real", "real_crop", "inception", "clip", "num"),
}


def register(parser: argparse.ArgumentParser) -> None:
    from pixart.cli.main import add_component_folders

    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        metavar="PATH",
        help="a pixart model folder, a diffusers pipeline, a finished pixart train run folder, or transformer "
        "weights (with --vae and --text-encoder)",
    )
    add_component_folders(parser)
    parser.add_argument(
        "--suite",
        default="shapes",
        metavar="NAME",
        help="shapes (default: prompt following, probe-scored) or real (FID, CLIP score)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the first image (0 or more); image k uses seed + k (the shapes suite's two-object images: "
        "seed + 100000 + k; it also draws that suite's prompts and its reference renders from this seed)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE.json",
        help="JSON file for the numbers (default runs/eval/<suite>.json); an existing file is replaced once the "
        "run has scored, and a note at the start says so",
    )
    parser.add_argument("--sampler", metavar="NAME", help="sampler (default: the model's)")
    parser.add_argument("--steps", type=int, metavar="N", help="sampling steps (default: the model's)")
    parser.add_argument("--cfg", type=float, metavar="SCALE", help="guidance scale, >= 0 (default: the model's)")
    parser.add_argument("--batch", type=int, default=16, metavar="N", help="images per forward batch (default 16)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    shapes = parser.add_argument_group("--suite shapes")
    shapes.add_argument("--single", type=int, metavar="N", help="single-object prompts (default 128)")
    shapes.add_argument("--pairs", type=int, metavar="N", help="two-object prompts (default 128)")
    shapes.add_argument(
        "--probe-cache",
        type=Path,
        metavar="DIR",
        help="where the probe is cached (default $PIXART_CACHE, else ~/.cache/pixart)",
    )
    shapes.add_argument("--probe-steps", type=int, metavar="N", help="training steps of the probe to use (default 600)")
    real = parser.add_argument_group("--suite real")
    real.add_argument(
        "--prompts", type=Path, metavar="FILE", help="text file (one prompt a line), or a JSONL or CSV manifest"
    )
    real.add_argument(
        "--field", metavar="NAME", help="manifest field holding the prompt (default: caption, prompt, text or alt)"
    )
    real.add_argument(
        "--real",
        type=Path,
        metavar="DIR",
        help="folder of reference images for FID (any sizes: see --real-crop)",
    )
    real.add_argument(
        "--real-crop",
        choices=REAL_CROPS,
        metavar="HOW",
        help="centre (default): cut each reference image to the generated images' aspect, centred, before "
        "Inception resizes it to 299x299, as COCO FID protocols crop; none: resize it whole (squashed)",
    )
    real.add_argument("--inception", type=Path, metavar="FILE", help="inception-2015-12-05.pt (TorchScript), for FID")
    real.add_argument("--clip", type=Path, metavar="DIR", help="transformers CLIP folder, for the CLIP score")
    real.add_argument("--num", type=int, metavar="N", help="use the first N prompts (default: all)")


MAX_EVAL_SEED = 2**62  # half torch's range: the suites offset their images' seeds (pairs by 100,000)


def check_options(args: argparse.Namespace) -> None:
    """Refuse an unknown suite, options of the other suite, non-positive counts, a seed out of range and an
    --out folder, before any loading (run() then applies generate's checks of guidance, sampler and steps)."""
    from pixart.cli.main import UserError

    if args.suite not in SUITES:
        raise UserError(f"unknown suite {args.suite!r}; choose one of: {', '.join(SUITES)}")
    for suite, names in SUITE_OPTIONS.items():
        given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None]
        if suite != args.suite and given:
            raise UserError(f"{', '.join(given)}: only for --suite {suite}, not {args.suite}")
    for name in ("single", "pairs", "num", "probe_steps"):  # --batch: check_request, in run()
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not 0 <= args.seed <= MAX_EVAL_SEED:  # torch's generators refuse it, once the model has loaded
        raise UserError(f"--seed must lie in 0..{MAX_EVAL_SEED}, got {args.seed}")
    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder: give the JSON file to write, e.g. {args.out / 'eval.json'}")


def results_path(args: argparse.Namespace) -> Path:
    return args.out or Path("runs/eval") / f"{args.suite}.json"


def prepare_outputs(args: argparse.Namespace) -> Path:
    """The results file, its folder created and written to once, and the probe's cache folder: a path that
    cannot be written is found now, not after the whole evaluation (each is written last)."""
    out = results_path(args)
    check_out_file(out)
    if args.suite == "shapes":
        check_cache_folder(args.probe_cache)
    if out.exists():  # said before the long part: Ctrl+C keeps them
        print(f"note: {out} holds earlier results; this run replaces them when it ends", file=sys.stderr)
    return out


def check_out_file(out: Path) -> None:
    """A regular file (or none yet) in a folder that takes files; an existing one must hold earlier results
    of `pixart eval`, which are what the run replaces."""
    from pixart.cli.main import UserError, check_writable_folder
    from pixart.files import read_json

    if out.exists() and not out.is_file():  # a device or a pipe: the results would replace it
        raise UserError(f"--out {out} is not a regular file: give the JSON file to write")
    if out.is_file() and "suite" not in (read_json(out) or {}):  # --out prompts.txt replaced the prompts
        raise UserError(f"--out {out} exists and is not a pixart eval result: choose another --out, or remove it")
    check_writable_folder(out.parent, "--out", out)


def check_cache_folder(cache: Path | None) -> None:
    """The probe's cache folder (a file there was found only once the probe had loaded or trained)."""
    from pixart.cli.main import make_out_folder
    from pixart.files import cache_dir

    if cache is None:
        make_out_folder(cache_dir(), "the probe cache ($PIXART_CACHE, else ~/.cache/pixart)")
    else:
        make_out_folder(cache, "--probe-cache")


def shapes_world_warning(model: Path, vae: Path | None = None, text_encoder: Path | None = None) -> str | None:
    """Why the shapes suite would say little about this model, or None for a model of the shapes world.

    The probe reads shapes-world renders only. A model folder records the codec and text encoder it runs
    with (a diffusers pipeline is always T5 and an SD VAE), and `pixart demo` also the world's version.
    Only a warning: the prompts are plain English, so scoring any model on them is not an error.
    """
    from pixart.data.synthetic import WORLD_VERSION
    from pixart.demo import shapes_model_spec
    from pixart.modelfolder import read_spec

    try:  # the spec generation runs with (bare weights: read off --vae and --text-encoder)
        spec = read_spec(model, vae=vae, text_encoder=text_encoder)[0]
    except (OSError, ValueError, TypeError):  # missing folders, an unreadable model.json: loading reports it
        return None
    shapes = shapes_model_spec("flow", {})
    world = spec.extra.get("world") if isinstance(spec.extra, dict) else None
    # a model known to be of the shapes world (a run on its data, on pixels say) needs no codec check
    if world is None and (spec.codec, spec.text_encoder) != (shapes.codec, shapes.text_encoder):
        return (
            f"warning: {model} runs with the {spec.codec} codec and the {spec.text_encoder} text encoder, not the "
            f"shapes world's ({shapes.codec}, {shapes.text_encoder}): the probe reads shapes-world renders only, "
            "so these scores say little about this model; --suite real scores any model"
        )
    if world is not None and world != WORLD_VERSION:  # the probe is trained on today's world
        return (
            f"warning: {model} was trained on the shapes world {world}, and the probe reads {WORLD_VERSION}: "
            "the scores also measure how the world changed; retrain the model to score it alone"
        )
    return None


def settings_record(pipe: TextToImage, settings: Settings) -> dict:
    """Sampler, steps, guidance and size the run will use (GenerationError now, not after the probe trains)."""
    sampler, steps = pipe.resolve_sampler(settings)
    cfg = pipe.spec.cfg_scale if settings.cfg_scale is None else settings.cfg_scale
    return {"sampler": sampler, "steps": steps, "cfg_scale": cfg, "size": list(pipe.resolve_size(settings)[2])}


def describe(record: dict) -> str:
    height, width = record["size"]
    return f"{record['sampler']} {record['steps']} steps, cfg {record['cfg_scale']}, {height}x{width}"


def print_rows(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(name) for name, _, _ in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>8}  {note}".rstrip())


def run_shapes(
    args: argparse.Namespace, load_pipe: Callable[[], TextToImage], settings: Settings, device: str
) -> tuple[dict, str]:
    from pixart.evaluate.probe import DEFAULT_STEPS, PROBE_SEED
    from pixart.evaluate.probe_training import load_or_train_probe
    from pixart.evaluate.suite import PAIR_SEED_OFFSET, SHAPES_KEYS, shapes_suite

    pipe = load_pipe()
    record = settings_record(pipe, settings)
    probe_steps = args.probe_steps or DEFAULT_STEPS
    probe = load_or_train_probe(
        args.probe_cache, seed=PROBE_SEED, steps=probe_steps, device=device, progress=not args.no_progress
    )
    scores = shapes_suite(
        pipe,
        probe,
        single=args.single or 128,
        pairs=args.pairs or 128,
        seed=args.seed,
        settings=settings,
        batch_size=args.batch,
        progress=not args.no_progress,
    )
    images = scores["images"]
    report = {
        "scores": {k: scores[k] for k in SHAPES_KEYS},
        "frechet": {
            "generated_vs_real": scores["frechet"],
            "real_vs_real_baseline": scores["frechet_real_baseline"],
            "features": f"shapes probe {probe.version}",
        },
        "images": images,
        # every score reads the images through this probe: one trained otherwise scores otherwise
        "probe": {"version": probe.version, "seed": PROBE_SEED, "training_steps": probe_steps},
        # the first seed of each image set: image k of a set was made with its seed + k
        "seeds": {"single": args.seed, "pairs": args.seed + PAIR_SEED_OFFSET},
        "settings": record,
    }
    print(f"shapes suite: {images['single']} single-object + {images['pairs']} two-object prompts, {describe(record)}")
    s = report["scores"]
    print_rows(
        [
            *[(f"{name} (single object)", f"{s[key]:.3f}", "") for key, name in SINGLE_ROWS],
            ("binding (two objects)", f"{s['binding']:.3f}", "both found with their colour and shape"),
            ("relation (two objects)", f"{s['relation']:.3f}", "binding, each in its prompted cell"),
            (
                "Frechet distance (probe)",
                f"{scores['frechet']:.2f}",
                f"real vs real: {scores['frechet_real_baseline']:.2f} (the floor: exact drawings score it at this N)",
            ),
        ]
    )
    summary = (
        f"colour {s['color']:.2f}, shape {s['shape']:.2f}, size {s['size']:.2f}, position {s['position']:.2f}, "
        f"binding {s['binding']:.2f}, relation {s['relation']:.2f}, Frechet {scores['frechet']:.2f} "
        f"(real vs real {scores['frechet_real_baseline']:.2f})"
    )
    return report, summary


def real_inputs(args: argparse.Namespace) -> tuple[list[str], list[Path] | None, dict[str, str]]:
    """Prompts, reference image paths (None without FID) and the metrics skipped with why: checked before loading."""
    from pixart.cli.main import UserError
    from pixart.evaluate.clipscore import CLIP_HINT
    from pixart.evaluate.inception import INCEPTION_HINT
    from pixart.evaluate.realdata import RealDataError, list_images, read_prompts

    missing = {}
    if args.inception is None:
        missing["fid"] = INCEPTION_HINT
    if args.clip is None:
        missing["clip_score"] = CLIP_HINT
    if len(missing) == 2:
        raise UserError(f"nothing to compute. {INCEPTION_HINT}. {CLIP_HINT}")
    if args.prompts is None:
        raise UserError("--suite real needs --prompts FILE (one prompt a line, or a JSONL or CSV manifest)")
    if args.inception is not None and args.real is None:
        raise UserError("FID needs --real DIR, a folder of reference images")
    if args.real is not None and args.inception is None:  # it would be ignored: FID is what reads it
        raise UserError("--real DIR is for FID, which also needs --inception FILE: give both, or neither")
    try:
        prompts = read_prompts(args.prompts, args.field)[: args.num]
        real_images = list_images(args.real) if args.inception is not None else None
    except RealDataError as error:
        raise UserError(str(error)) from error
    if real_images is not None and not real_images:
        raise UserError(f"--real {args.real} holds no images")
    if real_images is not None and len(prompts) < 2:  # found now, not after Inception read every reference image
        raise UserError(f"FID needs at least 2 generated images (one per prompt); the prompts give {len(prompts)}")
    return prompts, real_images, missing


def run_real(
    args: argparse.Namespace, load_pipe: Callable[[], TextToImage], settings: Settings, device: str
) -> tuple[dict, str]:
    from pixart.cli.main import UserError
    from pixart.evaluate.clipscore import ClipScorer
    from pixart.evaluate.inception import load_inception
    from pixart.evaluate.realdata import RealDataError, real_suite

    prompts, real_images, missing = real_inputs(args)
    detector = load_inception(args.inception, device) if args.inception is not None else None
    scorer = ClipScorer.load(args.clip, device) if args.clip is not None else None
    pipe = load_pipe()
    record = settings_record(pipe, settings)
    real_crop = "none" if args.real_crop == "none" else "centre"
    truncated = scorer.count_truncated(prompts) if scorer is not None else 0
    try:
        result = real_suite(
            pipe,
            prompts,
            real_images=real_images,
            detector=detector,
            scorer=scorer,
            settings=settings,
            seed=args.seed,
            batch_size=args.batch,
            device=device,
            progress=not args.no_progress,
            crop_real_to=tuple(record["size"]) if real_crop == "centre" and detector is not None else None,
        )
    except RealDataError as error:
        raise UserError(str(error)) from error
    images = result["images"]
    if detector is not None:
        images["real_crop"] = real_crop
    report = {
        "fid": result["fid"],
        "fid_warning": result.get("fid_warning"),
        "clip_score": result["clip_score"],
        "missing": missing,
        "images": images,
        # absolute, as serve records them: a report read elsewhere still says what was measured against
        "prompts": os.path.abspath(args.prompts),
        "field": args.field,
        "real": os.path.abspath(args.real) if args.real else None,  # what FID compares with
        "inception": os.path.abspath(args.inception) if args.inception else None,
        "clip": os.path.abspath(args.clip) if args.clip else None,
        # prompts longer than the CLIP text model reads: scored on their first tokens only
        "clip_truncated_prompts": truncated if scorer is not None else None,
        "settings": record,
    }
    print(f"real suite: {len(prompts)} prompts from {args.prompts}, {describe(record)}")
    rows = []
    if result["fid"] is None:
        rows.append(("FID", "-", f"skipped: {missing['fid']}"))
    else:
        note = f"{images['generated']} generated vs {images['real']} reference images ({args.inception.name})"
        rows.append(("FID", f"{result['fid']:.2f}", note))
    if result["clip_score"] is None:
        rows.append(("CLIP score", "-", f"skipped: {missing['clip_score']}"))
    else:
        note = f"{len(prompts)} image-prompt pairs ({args.clip.name})"
        rows.append(("CLIP score", f"{result['clip_score']:.2f}", note))
    print_rows(rows)
    if result.get("fid_warning"):
        print(f"warning: {result['fid_warning']}", file=sys.stderr)
    if truncated:
        limit = scorer.position_limit() if scorer is not None else 0
        print(
            f"warning: {truncated} of {len(prompts)} prompts are longer than the CLIP text model's {limit} tokens: "
            "the CLIP score reads only their beginning",
            file=sys.stderr,
        )
    if images.get("real_skipped"):
        print(f"  {len(images['real_skipped'])} unreadable reference image(s) left out (listed in the JSON)")
    fid = "FID skipped (no --inception)" if result["fid"] is None else f"FID {result['fid']:.2f}"
    score = result["clip_score"]
    clip = "CLIP score skipped (no --clip)" if score is None else f"CLIP score {score:.2f}"
    return report, f"{fid}, {clip}"


def run(args: argparse.Namespace) -> int:
    import torch

    from pixart.cli.main import UserError, check_device, removed_if_left_empty
    from pixart.files import write_json
    from pixart.generate import TextToImage
    from pixart.generation_settings import GenerationError, Settings, check_request
    from pixart.modelfolder import folder_kind

    started = time.time()
    check_options(args)
    check_device(args.device)
    settings = Settings(sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg)
    try:  # generate's own checks of guidance (nan or inf would score black images), sampler and steps
        check_request(settings, batch_size=args.batch)
    except GenerationError as error:
        raise UserError(str(error)) from None
    folder_kind(args.model)  # a missing model: FileNotFoundError with the download hint, before anything loads
    with removed_if_left_empty(results_path(args).parent):  # an evaluation that fails leaves no empty folder
        out = prepare_outputs(args)
        if args.suite == "shapes" and (warning := shapes_world_warning(args.model, args.vae, args.text_encoder)):
            print(warning, file=sys.stderr)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

        def load_pipe() -> TextToImage:  # called by the suite once its own inputs are checked: theirs come first
            return TextToImage.from_path(args.model, vae=args.vae, text_encoder=args.text_encoder, device=device)

        try:
            report, summary = (run_shapes if args.suite == "shapes" else run_real)(args, load_pipe, settings, device)
        except GenerationError as error:
            raise UserError(str(error)) from error
        wall = time.time() - started
        record = {"suite": args.suite, "model": os.path.abspath(args.model), "seed": args.seed, **report}
        record["wall_seconds"] = round(wall, 1)
        write_json(out, record)
    print(f"pixart eval: {args.suite} suite on {args.model} in {wall:.0f}s: {summary}. Wrote {out}")
    return 0

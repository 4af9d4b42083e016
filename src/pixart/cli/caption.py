"""`pixart caption INPUT --model DIR`: dense captions from a local LLaVA model, into a JSONL manifest.

`pixart caption --stats INPUT`: instead of captioning, print caption statistics of INPUT's fields
(e.g. `--fields alt,dense` of a manifest this command wrote) to compare their concept density.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pixart.data.caption import CaptionOptions
    from pixart.data.items import Inputs

DTYPES = ("bfloat16", "float16", "float32")
# Each mode's own flags: given to the other mode they would be ignored (--fields dense for --field dense)
CAPTIONING_FLAGS = (
    "model",
    "out",
    "field",
    "with_alt",
    "batch_size",
    "max_new_tokens",
    "temperature",
    "seed",
    "dtype",
    "device",
)
STATS_FLAGS = ("fields", "tokenizer", "max_length", "spacy_model")
DEFAULTS: dict[str, object] = {}  # what register gave each of them


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="image folder, .jsonl/.csv manifest, .tar or folder of .tar")
    caption = parser.add_argument_group("captioning")
    caption.add_argument("--model", type=Path, help="local LLaVA folder (LlavaForConditionalGeneration + processor)")
    caption.add_argument(
        "--out",
        type=Path,
        help="output JSONL manifest (default: FOLDER/FIELD.jsonl for a folder, e.g. dense.jsonl; beside any other "
        "INPUT, x.FIELD.jsonl)",
    )
    caption.add_argument(
        "--field", default="dense", help="the field the new captions go to (default: dense; not alt, path or image)"
    )
    caption.add_argument("--with-alt", action="store_true", help="quote each image's alt-text in the prompt")
    caption.add_argument("--batch-size", type=int, default=8, help="images per generate call (default: 8)")
    caption.add_argument("--max-new-tokens", type=int, default=300, help="caption length limit in tokens")
    caption.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; else sample")
    caption.add_argument("--seed", type=int, default=0, help="seed for sampling (with --temperature > 0)")
    caption.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    caption.add_argument("--dtype", choices=DTYPES, help="model dtype (default: float16 on GPU, else float32)")
    caption.add_argument("--no-progress", action="store_true", help="no progress bar")
    stats = parser.add_argument_group("statistics (--stats)")
    stats.add_argument("--stats", action="store_true", help="print caption statistics of INPUT instead of captioning")
    stats.add_argument("--fields", default="alt,dense", help="comma-separated fields to compare (default: alt,dense)")
    stats.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        metavar="DIR",
        help="also count tokens of this encoder folder (T5, MiniLM; 'minilm' for the bundled one); repeatable",
    )
    stats.add_argument(
        "--max-length",
        type=int,
        help="report captions longer than this (default: what prepare keeps for each encoder, T5 120, MiniLM 48)",
    )
    stats.add_argument("--spacy-model", default="en_core_web_sm", help="spaCy model for nouns, if installed")
    DEFAULTS.update({dest: parser.get_default(dest) for dest in CAPTIONING_FLAGS + STATS_FLAGS})


def refuse_the_other_modes_flags(args: argparse.Namespace) -> None:
    """One line for a flag the chosen mode would ignore, naming the likely meant one where there is one."""
    from pixart.cli.main import UserError

    foreign = CAPTIONING_FLAGS if args.stats else STATS_FLAGS
    given = [dest for dest in foreign if getattr(args, dest) != DEFAULTS.get(dest)]
    if not given:
        return
    flags = ", ".join("--" + dest.replace("_", "-") for dest in given)
    if args.stats:
        raise UserError(f"{flags}: for captioning, not for --stats (which reads the captions INPUT holds)")
    meant = " (did you mean --field, the one field the new captions go to?)" if "fields" in given else ""
    raise UserError(f"{flags}: for --stats, not for captioning{meant}")


def list_or_refuse(path: Path) -> Inputs:
    from pixart.cli.main import UserError
    from pixart.data.items import InputError
    from pixart.data.sources import list_inputs

    try:
        return list_inputs(path)
    except InputError as error:
        raise UserError(str(error)) from error


def tokenizer_labels(sources: list[str]) -> list[str]:
    """Column names for the --tokenizer folders: their names, with as many parent folders as tell them apart
    (pipelines' tokenizer folders are all called `tokenizer`: one column hid the other's numbers)."""
    from pixart.cli.main import UserError

    if len({Path(source).resolve() for source in sources}) < len(sources):
        raise UserError(f"--tokenizer: a folder is given twice ({' '.join(sources)})")
    paths = [Path(source).absolute() for source in sources]  # names as given: a link keeps its own

    def suffix(path: Path, depth: int) -> str:
        return "/".join(path.parts[-depth:])

    labels = []
    for path in paths:
        others = [other for other in paths if other != path]
        depth = 1
        while depth < len(path.parts) and any(suffix(other, depth) == suffix(path, depth) for other in others):
            depth += 1
        labels.append(suffix(path, depth))
    return labels


def run_stats(args: argparse.Namespace) -> int:
    from pixart.cli.main import UserError
    from pixart.data.caption_stats import collect, field_stats, format_table, load_spacy, load_tokenizer
    from pixart.data.prepare_options import PrepareError, check_fields_present

    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    if not fields:
        raise UserError(f"--fields {args.fields!r} names no field: pass caption fields, e.g. --fields alt,dense")
    from pixart.encoders.text import DEFAULT_MAX_LENGTH, caption_cleaner, minilm_folder, text_encoder_kind

    if args.max_length is not None and args.max_length < 1:
        raise UserError(f"--max-length must be at least 1, got {args.max_length}")
    tokenizers, limits, cleaners = {}, {}, {}
    for label, source in zip(tokenizer_labels(args.tokenizer), args.tokenizer, strict=True):  # before the listing
        try:
            tokenizers[label] = load_tokenizer(source)
        except (OSError, ValueError) as error:
            raise UserError(f"--tokenizer {source}: {' '.join(str(error).split())}") from error
        # what prepare keeps of each encoder's captions unless told otherwise
        folder = minilm_folder() if source == "minilm" else Path(source)
        kind = text_encoder_kind(folder)
        limits[label] = args.max_length or DEFAULT_MAX_LENGTH[kind]
        cleaners[label] = caption_cleaner(kind)  # counted as prepare's encoder sees them
    inputs = list_or_refuse(args.input)
    try:  # a misspelt field (`dens`) was a row of zeros, where prepare refuses it
        check_fields_present(inputs, fields)
    except PrepareError as error:
        raise UserError(str(error)) from None
    nlp, note = load_spacy(args.spacy_model)
    found = collect(inputs, fields)
    stats = [field_stats(name, *found[name], tokenizers, limits, nlp, cleaners) for name in fields]
    print(format_table(stats, limits, note))
    return 0


def caption_options(args: argparse.Namespace) -> CaptionOptions:
    """The captioning flags as CaptionOptions, checked before the inputs are listed or the model loads."""
    from pixart.cli.main import UserError, check_device
    from pixart.data.caption import CaptionError, CaptionOptions, check_model_folder

    if args.model is None:
        raise UserError("--model DIR is required to caption (or pass --stats for caption statistics)")
    if args.max_new_tokens < 1:  # transformers refuses it only after the model has loaded
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not math.isfinite(args.temperature) or args.temperature < 0:  # nan or -1 would quietly be greedy
        raise UserError(f"--temperature must be 0 (greedy) or a positive number, got {args.temperature}")
    if not 0 <= args.seed <= 2**63 - 1:  # torch.manual_seed's range: beyond it, a traceback once the inputs were listed
        raise UserError(f"--seed must lie in 0..{2**63 - 1}, got {args.seed}")
    if args.out is not None and args.out.suffix.lower() != ".jsonl":  # rows are JSON lines: resume reads them so
        raise UserError(f"--out {args.out}: the captions are written as a JSONL manifest; name it *.jsonl")
    try:
        options = CaptionOptions(
            field=args.field, with_alt=args.with_alt, batch_size=args.batch_size, progress=not args.no_progress
        )
    except CaptionError as error:
        raise UserError(str(error)) from error
    check_device(args.device)
    check_model_folder(args.model)
    return options


def prepare_fields(out: Path, field_name: str) -> str:
    """The --fields to suggest for prepare: alt too only if every row kept an original caption (else it skips)."""
    from pixart.data.items import DEFAULT_FIELD, has_text
    from pixart.data.manifests import manifest_rows

    rows = [row for _, row in manifest_rows(out) if isinstance(row, dict)]
    with_alt = bool(rows) and all(has_text(row.get(DEFAULT_FIELD)) for row in rows)
    return f"{DEFAULT_FIELD},{field_name}" if with_alt else field_name


def run(args: argparse.Namespace) -> int:
    from pixart.cli.main import UserError, check_writable_folder

    refuse_the_other_modes_flags(args)
    if args.stats:
        return run_stats(args)
    options = caption_options(args)
    from pixart.data.caption import default_output
    from pixart.files import held_while_writing

    out = Path(args.out or default_output(args.input, args.field))
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; the captions go to a .jsonl file: name one")
    check_writable_folder(out.parent, "--out", out)  # a file in the way, a read-only disk: before the model loads
    busy = f"--out {out} is being written by another pixart caption run: wait for it, or give another --out"
    # named from the file itself: a run given a link to it is refused too
    real = out.resolve()
    with held_while_writing(real.parent / f".{real.name}.lock", busy):  # both captioned every pending image
        return caption_into(args, out, options)


def caption_into(args: argparse.Namespace, out: Path, options: CaptionOptions) -> int:
    """The captioning run into `out`, which this process holds."""
    import torch

    from pixart.cli.main import UserError
    from pixart.data.caption import (
        CaptionError,
        LlavaCaptioner,
        caption_inputs,
        check_settings,
        pending,
        record_settings,
        resume_point,
    )
    from pixart.data.items import InputError, printable

    settings = {  # what decides the captions: a resumed run must write them as the rows before did
        "model": str(args.model.resolve()),
        "field": args.field,
        "with_alt": args.with_alt,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "seed": args.seed if args.temperature > 0 else None,
    }
    try:
        done = resume_point(out, args.field)  # rows of another field there: refused before the listing and the model
        if done:
            check_settings(out, settings)
    except (CaptionError, InputError) as error:
        raise UserError(str(error)) from error
    inputs = list_or_refuse(args.input)
    if not inputs.items:  # each one left out while listing (bad rows, duplicates, a damaged tar)
        first = inputs.problem_entries()[0]
        raise UserError(
            f"{args.input}: no input can be captioned ({len(inputs.problem_entries())} left out; the first, "
            f"{first['path']}: {first['reason']}, {first['message']})"
        )
    if not pending(inputs, out, done):  # a rerun of a finished run, say: no need to load a 7B model
        print(f"{out}: every one of the {len(inputs.items)} images is captioned already; the model was not loaded")
        print(f"next: pixart prepare {out} --fields {prepare_fields(out, args.field)} ...")
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("float32" if device == "cpu" else "float16"))
    torch.manual_seed(args.seed)
    loaded: list[LlavaCaptioner] = []

    class LoadedAtFirstImage:
        """Loaded for the first image that opens: a rerun whose pending images are all unreadable (skipped
        again) loaded a 7B model for nothing, on every rerun. Its settings are recorded once it has."""

        def load(self) -> None:  # caption_inputs calls it before each batch: a failure here stops the run
            if not loaded:
                loaded.append(
                    LlavaCaptioner(
                        args.model,
                        device=device,
                        dtype=dtype,
                        max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature,
                    )
                )
                record_settings(out, settings)

        def __call__(self, images: list, prompts: list[str]) -> list[str]:
            self.load()
            return loaded[0](images, prompts)

    captioner = LoadedAtFirstImage()

    existed = out.exists()
    try:
        result = caption_inputs(inputs, out, captioner, options, done)
    except BaseException:
        if not existed and out.is_file() and out.stat().st_size == 0:  # a model that failed to load: nothing kept
            out.unlink()
        raise
    # What listing left out (a damaged tar, duplicates, bad rows) is skipped too, and said so.
    skipped = inputs.problem_entries()
    skipped += result.skipped
    kept = f", {len(result.warnings)} without their old captions" if result.warnings else ""
    print(
        f"{out}: captioned {result.written} images now, {result.already_done} were done already, "
        f"{len(skipped)} skipped{kept}{'' if loaded else '; the model was not loaded'}"
    )
    for entry in skipped:
        print(f"  {printable(entry['path'])}: {entry['reason']} ({printable(entry['message'])})")
    if result.warnings:  # captioned from the pixels alone; --with-alt would skip them
        print("  captioned, but a caption file could not be read (its captions are not in the row):")
    for entry in result.warnings:
        print(f"    {printable(entry['path'])}: {entry['reason']} ({printable(entry['message'])})")
    if result.written == 0 and result.already_done == 0:  # an empty manifest, which prepare refuses next
        if not existed and out.is_file() and out.stat().st_size == 0:
            out.unlink()
        print(f"pixart caption: error: no image of {args.input} could be captioned (see above)", file=sys.stderr)
        return 1
    print(f"next: pixart prepare {out} --fields {prepare_fields(out, args.field)} ...")
    return 0

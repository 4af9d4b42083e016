"""`pixart caption INPUT --model DIR`: dense captions from a local LLaVA model, into a JSONL manifest.

`pixart caption --stats INPUT`: instead of captioning, print caption statistics of INPUT's fields
(e.g. `--fields alt,dense` of a manifest this command wrote) to compare their concept density.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DTYPES = ("bfloat16", "float16", "float32")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="image folder, .jsonl/.csv manifest, .tar or folder of .tar")
    caption = parser.add_argument_group("captioning")
    caption.add_argument("--model", type=Path, help="local LLaVA folder (LlavaForConditionalGeneration + processor)")
    caption.add_argument("--out", type=Path, help="output JSONL manifest (default: beside INPUT, e.g. x.dense.jsonl)")
    caption.add_argument("--field", default="dense", help="the field the new captions go to (default: dense)")
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
    stats.add_argument("--max-length", type=int, default=120, help="report captions longer than this (T5: 120)")
    stats.add_argument("--spacy-model", default="en_core_web_sm", help="spaCy model for nouns, if installed")


def run_stats(args: argparse.Namespace, inputs) -> int:
    from pixart.cli.main import UserError
    from pixart.data.caption_stats import collect, field_stats, format_table, load_spacy, load_tokenizer

    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    tokenizers = {}
    for source in args.tokenizer:
        try:
            tokenizers[Path(source).name] = load_tokenizer(source)
        except (OSError, ValueError) as error:
            raise UserError(f"no tokenizer in {source}: {error}") from error
    nlp, note = load_spacy(args.spacy_model)
    found = collect(inputs, fields)
    stats = [field_stats(name, *found[name], tokenizers, args.max_length, nlp) for name in fields]
    print(format_table(stats, args.max_length, note))
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    from pixart.cli.main import UserError
    from pixart.data.caption import CaptionOptions, LlavaCaptioner, caption_inputs, default_output
    from pixart.data.sources import InputError, list_inputs

    try:
        inputs = list_inputs(args.input)
    except InputError as error:
        raise UserError(str(error)) from error
    if args.stats:
        return run_stats(args, inputs)
    if args.model is None:
        raise UserError("--model DIR is required to caption (or pass --stats for caption statistics)")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.out is not None and args.out.suffix.lower() != ".jsonl":  # rows are JSON lines: resume reads them so
        raise UserError(f"--out {args.out}: the captions are written as a JSONL manifest; name it *.jsonl")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("float32" if device == "cpu" else "float16"))
    torch.manual_seed(args.seed)
    captioner = LlavaCaptioner(
        args.model, device=device, dtype=dtype, max_new_tokens=args.max_new_tokens, temperature=args.temperature
    )
    out = args.out or default_output(args.input, args.field)
    options = CaptionOptions(
        field=args.field, with_alt=args.with_alt, batch_size=args.batch_size, progress=not args.no_progress
    )
    result = caption_inputs(inputs, out, captioner, options)
    print(
        f"{out}: captioned {result.written} images now, {result.already_done} were done already, "
        f"{len(result.skipped)} skipped"
    )
    for skipped in result.skipped:
        print(f"  {skipped['path']}: {skipped['reason']} ({skipped['message']})")
    print(f"next: pixart prepare {out} --fields alt,{args.field} ...")
    return 0

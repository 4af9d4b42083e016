"""Re-captioning with a vision-language model (the paper's SAM-LLaVA captions), resumable.

A LLaVA-family model (transformers' LlavaForConditionalGeneration + AutoProcessor, from a local
folder) describes each image with the paper's prompt, or with the variant that passes the original
alt-text. The output is a JSONL manifest that `pixart prepare` reads: one row per image with the
input's fields (the original caption kept as `alt`), `path` relative to the manifest's folder, and the
new caption in `dense`. Rows are appended a batch at a time, so a rerun skips what is captioned already;
an output whose rows were written for another field is refused (the images would be listed twice).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from pixart.data.images import ImageSkipped, load_rgb
from pixart.data.items import ALIASES, DEFAULT_FIELD, UNEXPECTED, Blob, Inputs, Item, has_text, is_utf8
from pixart.data.manifests import IMAGE_COLUMNS, image_column, manifest_rows
from pixart.encoders.text import has_tokenizer
from pixart.files import read_json, write_json

PROMPT = "Describe this image and its style in a very detailed manner"
PROMPT_WITH_ALT = 'Given the caption of this image "{alt}", describe this image and its style in a very detailed manner'
# How LLaVA-1.5 was trained to see a turn, for processors saved without a chat template.
FALLBACK_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"

# (images, prompts) -> one caption per image; LlavaCaptioner is one, tests pass a plain function. One with a
# load() method has it called before each batch: what fails there stops the run, where what fails inside a
# call is taken for the images' fault (see caption_batch).
Captioner = Callable[[list[Image.Image], list[str]], list[str]]


class CaptionError(ValueError):
    """Settings that cannot work (a reserved field name) or an output that holds another field's rows."""


def check_field(name: str) -> None:
    """CaptionError unless `name` can hold new captions beside the columns every output row keeps."""
    if not name.strip():
        raise CaptionError("--field is empty: name the field the new captions go to, e.g. --field dense")
    if name != name.strip() or "," in name:
        raise CaptionError(f"--field {name!r}: no commas or surrounding spaces (pixart prepare --fields splits there)")
    if name in IMAGE_COLUMNS:  # the captions would overwrite every row's image path
        raise CaptionError(f"--field {name}: {name!r} is the image path column; name another field, e.g. --field dense")
    if name == DEFAULT_FIELD or name in ALIASES:  # the output keeps the original caption in `alt`
        raise CaptionError(
            f"--field {name}: {name!r} holds each image's original caption, which the output keeps; "
            "name the new captions another field, e.g. --field dense"
        )


def check_model_folder(folder: Path) -> None:
    """FileNotFoundError unless `folder` holds a saved LLaVA model and its processor (checked before listing,
    then loading: another model's folder failed in transformers with a traceback)."""
    expected = (
        "expected config.json, weights and processor files written by save_pretrained, e.g. a local copy of "
        "llava-hf/llava-1.5-7b-hf; point --model at it"
    )
    if not folder.exists():  # a typo in the path: said as that, not as a folder of another kind
        raise FileNotFoundError(f"--model {folder} does not exist ({expected})")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no LLaVA model in {folder} ({expected})")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (ValueError, OSError) as error:  # a copy cut short, or no JSON at all: a traceback before
        raise FileNotFoundError(
            f"no LLaVA model in {folder}: its config.json cannot be read ({error}) ({expected})"
        ) from None
    if not isinstance(config, dict):
        raise FileNotFoundError(f"no LLaVA model in {folder}: its config.json holds no JSON object ({expected})")
    if config.get("model_type") != "llava":
        what = config.get("model_type") or config.get("_class_name") or "no model_type"
        raise FileNotFoundError(f"no LLaVA model in {folder}: its config.json describes {what} ({expected})")
    processor = ("processor_config.json", "preprocessor_config.json")
    if not has_tokenizer(folder) or not any((folder / name).is_file() for name in processor):
        raise FileNotFoundError(f"no LLaVA processor (tokenizer and image processor files) in {folder} ({expected})")


def caption_prompt(alt: str | None = None) -> str:
    """The paper's prompt, or the variant quoting the original caption when one is given."""
    if alt is None:
        return PROMPT
    return PROMPT_WITH_ALT.format(alt=" ".join(alt.split()))  # one line, whatever the alt-text held


# Images failing one after another, with none captioned between: the model's or the machine's fault, not
# theirs, and the run stops with the error (else it would go through every input, skipping each). Fewer
# failures than this are skipped and counted, a run's last few images too.
FAILURE_STREAK = 8


def caption_batch(captioner: Captioner, ready: list[tuple]) -> tuple[list[tuple], list[str], list[tuple]]:
    """(rows captioned, their captions, (row, error) of the rows that failed) for `ready`'s (fields, location,
    image, prompt, name) rows. A batch that fails is captioned an image at a time, so that an image the model
    cannot take costs only itself (one odd image lost its batch, and stopped every rerun at the same place)."""
    try:
        batch_captions: list[str] | None = captioner([r[2] for r in ready], [r[3] for r in ready])
    except Exception:
        # retried below, out of this block: its traceback would hold the failed call's tensors (a batch
        # out of GPU memory) through every retry
        batch_captions = None
    if batch_captions is not None:
        return ready, batch_captions, []
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    kept, captions, failed = [], [], []
    for row in ready:
        try:
            captions += captioner([row[2]], [row[3]])
            kept.append(row)
        except Exception as error:
            failed.append((row, error))
    return kept, captions, failed


# Longer sides are shrunk to this before padding: the processor then shrinks every square to a few hundred
# pixels anyway, and a 1 x 60000 strip's own square took 10.8 GB.
MAX_SQUARE_SIDE = 4096


def pad_to_square(image: Image.Image, fill: tuple[int, ...], max_side: int = MAX_SQUARE_SIDE) -> Image.Image:
    """`image` centred on a square of colour `fill` as wide as its longer side (LLaVA's expand2square), that
    side first shrunk to `max_side` where it is longer."""
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))  # the aspect ratio kept, each side at least 1 pixel
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


class LlavaCaptioner:
    """A LLaVA model and its processor from a local folder, captioning batches of images."""

    def __init__(
        self,
        folder: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_new_tokens: int = 300,
        temperature: float = 0.0,
    ):
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        folder = Path(folder)
        check_model_folder(folder)
        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        self.processor.tokenizer.padding_side = "left"  # generation continues every row on the right
        self.model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype, local_files_only=True)
        # transformers wraps PreTrainedModel.to in functools.wraps, which mypy does not bind as a method
        # (typeshed#10653): it takes `device` for `self`.
        self.model = self.model.to(device).eval()  # type: ignore[arg-type]
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature

    def chat(self, prompt: str) -> str:
        """The prompt as one user turn holding the image, in the processor's chat template if it has one."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return FALLBACK_TEMPLATE.format(prompt=prompt)

    def model_inputs(self, images: list[Image.Image], prompts: list[str]) -> dict[str, torch.Tensor]:
        """The processor's tensors for a batch, each image padded to a square first as LLaVA (and the official
        captioning) does: the CLIP processor's resize and centre crop showed the model only the middle of
        a wide or tall image, which its dense caption then described as the whole."""
        fill = tuple(round(255 * c) for c in getattr(self.processor.image_processor, "image_mean", (0.5,) * 3))
        squares = [pad_to_square(image.convert("RGB"), fill) for image in images]
        texts = [self.chat(prompt) for prompt in prompts]
        inputs = self.processor(images=squares, text=texts, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        inputs = self.model_inputs(images, prompts)
        # Greedy by default (reproducible); a low temperature samples, seeded by the caller's torch seed.
        sampling = (
            {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        )
        output = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=self.processor.tokenizer.pad_token_id,
            **sampling,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]  # left padding: every prompt ends at the same column
        return [text.strip() for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]


@dataclass
class CaptionOptions:
    field: str = "dense"
    with_alt: bool = False
    batch_size: int = 8
    progress: bool = True
    stop_after: int | None = None  # caption at most this many batches, then return as if killed (tests)

    def __post_init__(self) -> None:
        check_field(self.field)
        if self.batch_size < 1:
            raise CaptionError(f"--batch-size must be at least 1, got {self.batch_size}")


EMPTY_CAPTION = "empty caption"  # the captioner returned nothing but whitespace for an image


@dataclass
class CaptionResult:
    written: int = 0
    already_done: int = 0
    skipped: list[dict] = field(default_factory=list)
    # Captioned, but a caption file of theirs could not be read: their rows lack what it held.
    warnings: list[dict] = field(default_factory=list)


def default_output(input_path: str | Path, field_name: str = "dense") -> Path:
    """Beside the input: `x.jsonl` / `x.csv` / `x.tar` -> `x.dense.jsonl`; a folder -> `folder/dense.jsonl`."""
    path = Path(input_path)
    if path.is_dir():
        return path / f"{field_name}.jsonl"
    return path.with_name(f"{path.stem}.{field_name}.jsonl")


def _repair_tail(out: Path) -> None:
    """Cut a half-written last line (a killed run), so appended rows start on a line of their own; a whole
    last row without its newline (a hand edit saved by an editor that leaves it off) is ended instead."""
    if not out.is_file() or out.stat().st_size == 0:
        return
    data = out.read_bytes()
    if data.endswith(b"\n"):
        return
    tail = data[data.rfind(b"\n") + 1 :]
    try:
        whole = isinstance(json.loads(tail), dict)
    except ValueError:  # cut mid-row (or mid-character)
        whole = False
    with open(out, "r+b") as f:
        if whole:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(len(data) - len(tail))


def captioned(out: Path, field_name: str) -> set[str]:
    """Image paths (as written, relative to the manifest's folder) that already have a `field_name` caption.

    CaptionError if `out` holds rows written for another field: they would stay beside the new rows, each
    image listed twice, and `pixart prepare` would skip the second listing of every image as a duplicate.
    A row was written for the field that comes last in it (see output_row); other columns are copied.
    """
    if not out.is_file():
        return set()
    done: set[str] = set()
    others: dict[str, int] = {}  # rows per field they were written for
    for _, row in manifest_rows(out):
        if not isinstance(row, dict) or image_column(row) is None:
            continue
        written_for = list(row)[-1]
        if written_for == field_name:
            done.add(image_key(out.parent, row[image_column(row)]))
        else:
            others[written_for] = others.get(written_for, 0) + 1
    if others:
        found = ", ".join(f"{count} for {name!r}" for name, count in others.items())
        if len(others) == 1 and _can_hold_captions(written_for := next(iter(others))):
            advice = f"caption {field_name!r} into another --out, or pass --field {written_for} to resume it"
        elif len(others) == 1:  # its rows end in a field no caption run writes: another tool's manifest
            advice = "it is not a pixart caption output: choose another --out"
        else:
            advice = f"caption {field_name!r} into another --out, or pass the --field they were written for"
        raise CaptionError(f"--out {out} holds rows written for another field than {field_name!r} ({found}); {advice}")
    return done


def _can_hold_captions(name: str) -> bool:
    try:
        check_field(name)
    except CaptionError:
        return False
    return True


def image_key(folder: Path, location: str) -> str:
    """The file a manifest row's image path names, whatever way it was spelled (relative to `folder`, the
    manifest's, or absolute; through symbolic links or not): a rerun that named the inputs another way
    captioned every image again."""
    joined = os.path.join(os.path.abspath(folder), location)
    try:
        return os.path.realpath(joined)
    except ValueError:  # a path holding a NUL, which no file has: its item is skipped when read
        return os.path.normpath(joined)


def row_location(blob: Blob, base: Path) -> str:
    """`blob`'s path as a manifest in `base` writes it: relative to the folder as given, links kept (resolved,
    the folder's path and the images' parted ways through a linked folder: ../../link/images/0.png), unless
    that names another file (`base` itself a link elsewhere: the kernel takes ../ from the link's target),
    then relative to both resolved."""
    plain = blob.location(base)
    target = os.path.abspath(blob.path) + (f"/{blob.member}" if blob.member else "")
    if image_key(base, plain) == image_key(base, target):
        return plain
    resolved = dataclasses.replace(blob, path=Path(os.path.realpath(blob.path)))
    return resolved.location(Path(os.path.realpath(base)))


def pending(inputs: Inputs, out: Path, done: set[str]) -> list[tuple[Item, str]]:
    """(item, its path as the new manifest writes it: row_location) of each input `done` (resume_point's)
    lacks, in order."""
    base = Path(os.path.abspath(out.parent))
    located = [(item, row_location(item.image, base)) for item in inputs.items]
    return [(item, location) for item, location in located if image_key(base, location) not in done]


SETTINGS_SUFFIX = ".settings.json"  # beside the output: what wrote its captions (dense.jsonl.settings.json)


def settings_file(out: Path) -> Path:
    return out.with_name(out.name + SETTINGS_SUFFIX)


def check_settings(out: Path, settings: dict) -> None:
    """A run resumed into `out` with other settings (model, prompt, generation) than its record says is
    CaptionError naming them: its rows would have mixed two models' or prompts' captions. Rows written
    before any record (another tool, an older version) are taken as they are."""
    path = settings_file(out)
    recorded = read_json(path)
    if recorded is None:
        return
    differ = {key: (recorded.get(key), value) for key, value in settings.items() if recorded.get(key) != value}
    if differ:
        listed = "; ".join(f"{key} {old!r} there, {new!r} now" for key, (old, new) in differ.items())
        raise CaptionError(
            f"--out {out} holds captions made with other settings ({listed}, as {path.name} beside it records): "
            "rerun with the same flags to finish it, or choose another --out"
        )


def record_settings(out: Path, settings: dict) -> None:
    """What writes the captions into `out`, beside it (checked by check_settings when a run resumes)."""
    write_json(settings_file(out), {"format": "pixart-captions", **settings})


def resume_point(out: Path, field_name: str) -> set[str]:
    """Where captioning into `out` resumes: its half-written last line cut, the images it has for the field.

    CaptionError as `captioned` says. The command line calls this before listing the inputs and loading
    the model, and hands the set to `caption_inputs`, so a long manifest is read once for both.
    """
    _repair_tail(out)
    return captioned(out, field_name)


def output_row(fields: dict, location: str, field_name: str, caption: str) -> dict:
    """The input's fields (original caption as `alt`), the image path for the new manifest, the caption."""
    row = {k: v for k, v in fields.items() if k not in IMAGE_COLUMNS and k != field_name}
    return {"path": location, **row, field_name: caption}


def old_fields(item: Item, with_alt: bool) -> tuple[dict, list[dict]]:
    """The item's caption fields to copy into its row, and a warning entry per caption file that cannot be read.

    With --with-alt the alt-text goes into the prompt, so an unreadable caption file skips the image
    (ImageSkipped). Without, the old captions are only copied along, and the image is captioned anyway:
    re-captioning is for exactly the images whose alt-text is bad."""
    fields, problems = item.readable_fields()
    if problems and with_alt:
        raise problems[0]
    return fields, [{"path": item.name, "reason": e.reason, "message": e.message} for e in problems]


def caption_inputs(
    inputs: Inputs,
    out: str | Path,
    captioner: Captioner,
    options: CaptionOptions,
    done: set[str] | None = None,
) -> CaptionResult:
    """Caption every input not yet in `out`, in input order, appending rows a batch at a time.

    `done` is `resume_point(out, options.field)` where the caller already has it."""
    from tqdm import tqdm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if done is None:
        done = resume_point(out, options.field)
    todo = pending(inputs, out, done)
    result = CaptionResult(already_done=len(inputs.items) - len(todo))
    batches = streak = 0  # streak: images failed in the captioner since the last one it captioned
    with open(out, "a", encoding="utf-8") as f, tqdm(total=len(todo), unit="img", disable=not options.progress) as bar:
        for start in range(0, len(todo), options.batch_size):
            if options.stop_after is not None and batches >= options.stop_after:
                break
            ready = []  # (fields, location, image, prompt, name)
            for item, location in todo[start : start + options.batch_size]:
                try:
                    fields, warnings = old_fields(item, options.with_alt)
                    alt = fields.get(DEFAULT_FIELD)
                    # An alt-text that is missing or not valid UTF-8 is no use to quote: the plain prompt then.
                    quote = options.with_alt and has_text(alt) and is_utf8(alt)
                    prompt = caption_prompt(alt if quote else None)
                    ready.append((fields, location, load_rgb(item.image.read(), name=item.name), prompt, item.name))
                    result.warnings += warnings  # an image skipped for its pixels is reported as skipped only
                except ImageSkipped as e:
                    result.skipped.append({"path": item.name, "reason": e.reason, "message": e.message})
                except Exception as e:  # as prepare: one odd input (a path holding a NUL) stopped every rerun
                    message = f"{type(e).__name__}: {e}"
                    result.skipped.append({"path": item.name, "reason": UNEXPECTED, "message": message})
            if ready:
                if (load := getattr(captioner, "load", None)) is not None:
                    load()  # a model that cannot load stops the run here: no image is to blame for it
                ready, captions, failed = caption_batch(captioner, ready)
                for row, error in failed:
                    message = f"{type(error).__name__}: {error}"
                    result.skipped.append({"path": row[4], "reason": UNEXPECTED, "message": message})
                streak = 0 if ready else streak + len(failed)
                if streak >= FAILURE_STREAK:
                    raise failed[-1][1]
                for (fields, location, _, _, name), caption in zip(ready, captions):
                    if not has_text(caption):  # written, it would count as done and never be asked for again
                        message = "the model wrote no text for it; a rerun asks again"
                        result.skipped.append({"path": name, "reason": EMPTY_CAPTION, "message": message})
                        continue
                    f.write(json.dumps(output_row(fields, location, options.field, caption)) + "\n")
                    result.written += 1
                f.flush()  # a batch is either all on disk or (after a kill) cut back to whole lines
            bar.update(min(options.batch_size, len(todo) - start))
            batches += 1
    return result

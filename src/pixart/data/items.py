"""What listing an input gives: `Item`s (an image `Blob` and its caption fields), the `Problem`s found
while listing, and the checks on caption text that every reader shares (see `pixart.data.sources`)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeGuard

from PIL import features

from pixart.data.images import UNREADABLE, ImageSkipped
from pixart.files import marked_encoding

DEFAULT_FIELD = "alt"
ALIASES = ("caption", "text")  # stand-ins for DEFAULT_FIELD in rows that lack it
# Files listed as images by their names (in folders and tars; manifest rows name theirs): what Pillow
# decodes here, .jfif among them, and .avif where this Pillow reads it (11.2 on): they were left out unsaid
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    | ({".avif"} if "avif" in features.get_supported_modules() else set())
)


# Reasons for skipping an input that are about its captions or its listing, not its pixels.
MISSING_CAPTION = "missing caption"
BAD_CAPTION = "caption not UTF-8"
BAD_SIDECAR = "unreadable caption file"
DUPLICATE = "duplicate"
BAD_ROW = "bad manifest row"
BAD_TAR = "damaged tar"  # a WebDataset shard cut short or broken: the members before the damage are kept
UNEXPECTED = "unexpected error"  # a failure no check foresaw: reported, so one odd file cannot stop a run
EXTRA_IMAGE = "another image of a sample"  # a WebDataset sample's mask or depth map (cat.seg.png beside cat.jpg)


class InputError(ValueError):
    """The input as a whole cannot be read (no such path, unknown kind, a manifest without a path column)."""


@dataclass(frozen=True)
class Blob:
    """Bytes in a file: the whole file, or the `size` bytes at `offset` of tar member `member`."""

    path: Path
    offset: int = 0
    size: int = -1
    member: str = ""
    missing: str = ""  # why there are no such bytes, found while listing (a tar member not in its tar)

    @property
    def name(self) -> str:
        return self.member or self.path.name

    def location(self, base: Path) -> str:
        """This blob's path relative to `base` (a manifest's folder), as resolve_image reads it back."""
        relative = Path(os.path.relpath(self.path, base)).as_posix()
        return f"{relative}/{self.member}" if self.member else relative

    def read(self) -> bytes:
        if self.missing:
            raise ImageSkipped(UNREADABLE, self.missing)
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                return f.read(self.size)
        except OSError as e:
            raise ImageSkipped(UNREADABLE, f"{self.name}: {e.strerror or e}") from e


@dataclass
class Item:
    """One input: its name, its image, and where its captions come from.

    `row` holds the fields known at listing time (a manifest row); `sidecars` are caption files read
    on demand, `.txt` (the default field) first, then `.json` (an object of fields), later ones winning.
    """

    name: str
    image: Blob
    row: dict = field(default_factory=dict)
    sidecars: tuple[Blob, ...] = ()

    def fields(self) -> dict:
        """All caption fields of this item (values as found: strings, or anything a row holds).

        ImageSkipped if a caption file cannot be read (not UTF-8, not a JSON object, unreadable)."""
        row, problems = self.readable_fields()
        if problems:
            raise problems[0]
        return row

    def readable_fields(self) -> tuple[dict, list[ImageSkipped]]:
        """The caption fields of the row and of every caption file that can be read, and why the others cannot.

        For a caller that can do without the old captions (re-captioning from the pixels alone)."""
        row = dict(self.row)
        problems = []
        for blob in self.sidecars:
            try:
                found = _read_sidecar(blob)
            except ImageSkipped as e:
                problems.append(e)
                continue
            # a JSON's {"alt": 5} (a number, a list) does not hide the .txt's caption beside it
            row.update(
                {key: value for key, value in found.items() if not (has_text(row.get(key)) and not has_text(value))}
            )
        if not has_text(row.get(DEFAULT_FIELD)):  # absent, or an empty CSV cell
            for alias in ALIASES:
                if has_text(row.get(alias)):
                    row[DEFAULT_FIELD] = row[alias]
                    break
        return row, problems

    def captions(self, fields: list[str], row: dict | None = None) -> dict[str, str]:
        """The named caption fields, stripped; ImageSkipped if one is missing, empty or not valid UTF-8.
        `row`: this item's fields() where the caller has read them already."""
        row = self.fields() if row is None else row
        captions = {}
        for name in fields:
            value = row.get(name)
            if value is not None and not isinstance(value, str):  # JSON's 5, [...] or {...}: said as such
                shown = json.dumps(value, ensure_ascii=False)
                shown = shown if len(shown) <= 40 else shown[:37] + "..."
                raise ImageSkipped(MISSING_CAPTION, f"the {name!r} caption is {type(value).__name__} {shown}, not text")
            if not has_text(value):
                raise ImageSkipped(MISSING_CAPTION, f"no {name!r} caption")
            if not is_utf8(value):
                raise ImageSkipped(BAD_CAPTION, f"the {name!r} caption is not valid UTF-8")
            captions[name] = value.strip()
        return captions


def class_label_of(row: dict) -> int | None:
    """A row's class label for stage 1 (its `label` field, a whole number >= 0 or such a string), else None:
    a label of another kind (a word, say) is a caption-like field of the user's, not a class."""
    value = row.get("label")
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:  # 3.0: pandas writes an int column so
        return int(value)
    if isinstance(value, str):
        text = value.strip().removesuffix(".0")  # "3.0" in a CSV pandas wrote
        return int(text) if text.isdecimal() else None
    return None


@dataclass
class Problem:
    """An input left out while listing: `path` names it (or a manifest line), `reason` says why."""

    path: str
    reason: str
    message: str = ""


@dataclass
class Inputs:
    """The sorted, de-duplicated items of an input, and what listing left out."""

    kind: str  # "folder", "manifest" or "webdataset"
    root: Path  # names are relative to this folder
    items: list[Item]
    problems: list[Problem]

    def problem_entries(self) -> list[dict[str, str]]:
        """What listing left out, as the skip entries reports list: {"path", "reason", "message"}."""
        return [asdict(problem) for problem in self.problems]


def has_text(value: object) -> TypeGuard[str]:
    """Whether `value` is a string with something besides whitespace (a caption that can be used)."""
    return isinstance(value, str) and bool(value.strip())


def printable(text: str) -> str:
    """`text` on one line for a report printed to people: a newline or other control character in a file
    name is shown escaped ("a\\nb.png"), as report.json stores it, instead of splitting the line. A byte that is
    not UTF-8 (a lone surrogate) is left for the output stream, which writes it back as the byte it was (C
    locale) or escapes it (UTF-8)."""
    return "".join(c if c.isprintable() or c == " " or "\ud800" <= c <= "\udfff" else repr(c)[1:-1] for c in text)


def is_utf8(text: str) -> bool:
    # Text decoded with surrogateescape (and JSON's \ud800 escapes) carries lone surrogates.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_sidecar(blob: Blob) -> dict:
    data = blob.read()
    try:  # UTF-16 (or 32) where its byte-order mark says so, as a manifest is read: it was skipped as "not UTF-8"
        text = data.decode(marked_encoding(data) or "utf-8-sig")
    except UnicodeDecodeError as e:
        raise ImageSkipped(BAD_CAPTION, f"{blob.name}: {e.reason} at byte {e.start}") from e
    if blob.name.lower().endswith(".txt"):
        return {DEFAULT_FIELD: text.strip()}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ImageSkipped(BAD_SIDECAR, f"{blob.name}: not JSON ({e.msg})") from e
    if not isinstance(value, dict):
        raise ImageSkipped(BAD_SIDECAR, f"{blob.name}: the JSON is not an object of caption fields")
    return value


def dedupe(named: list[tuple[str, Item]]) -> tuple[list[Item], list[Problem]]:
    """Sort by name (stable: the first of equal names, in input order, is kept); later ones are duplicates."""
    items, problems = [], []
    last = None
    for name, item in sorted(named, key=lambda pair: pair[0]):
        if name == last:
            problems.append(Problem(name, DUPLICATE, "listed more than once; the first is kept"))
            continue
        items.append(item)
        last = name
    return items, problems

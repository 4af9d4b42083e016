"""Input readers for data preparation and re-captioning: image folders, manifests, WebDataset tars.

Every input kind becomes the same thing: a sorted, de-duplicated list of `Item`s, each an image to
read and a row of caption fields, plus the problems found while listing (rows without a path,
duplicates). The conventions:

- a folder of images (searched recursively; .jpg .jpeg .png .webp .bmp .gif .tif .tiff, any case).
  Captions sit beside each image under the same name: `cat.txt` holds the default field `alt`, and
  `cat.json` holds an object of fields, e.g. {"alt": "...", "dense": "..."} (it wins over `cat.txt`);
- a manifest, `.jsonl` (one object per line) or `.csv` (with a header): an image column `path` (or
  `image`), relative to the manifest's folder or absolute, and one column per caption field. A path
  may also name a member of a tar, `shards/00000.tar/cat.jpg`, the way WebDataset items are named;
- WebDataset shards: one `.tar`, or a folder holding `*.tar` (and no images). Members are grouped by
  key (the name up to the first dot of its base name): `cat.jpg` with `cat.txt` and/or `cat.json`.
  A damaged shard (cut short, a broken header) keeps the members before the damage and is reported.

In rows, `caption` or `text` stand in for `alt` when there is no `alt` (img2dataset writes `caption`).
Items are named by their path relative to the input (`cat.jpg`, `00000.tar/cat.jpg`); these names are
what preparation sorts on, reports, and stores as each sample's source. Nothing is decoded here:
images and sidecar captions are read when an item is processed, so their problems are reported then.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import TypeGuard

from pixart.data.images import UNREADABLE, ImageSkipped

DEFAULT_FIELD = "alt"
ALIASES = ("caption", "text")  # stand-ins for DEFAULT_FIELD in rows that lack it
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
IMAGE_COLUMNS = ("path", "image", "file_name")  # file_name: Hugging Face imagefolder's metadata.jsonl
MANIFEST_SUFFIXES = frozenset({".jsonl", ".csv"})
TAR_SPLIT = re.compile(r"\.tar/", re.IGNORECASE | re.ASCII)  # where a manifest path enters a tar, any case

# Reasons for skipping an input that are about its captions or its listing, not its pixels.
MISSING_CAPTION = "missing caption"
BAD_CAPTION = "caption not UTF-8"
BAD_SIDECAR = "unreadable caption file"
DUPLICATE = "duplicate"
BAD_ROW = "bad manifest row"
BAD_TAR = "damaged tar"  # a WebDataset shard cut short or broken: the members before the damage are kept
INPUT_REASONS = (MISSING_CAPTION, BAD_CAPTION, BAD_SIDECAR, DUPLICATE, BAD_ROW, BAD_TAR)


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
                row.update(_read_sidecar(blob))
            except ImageSkipped as e:
                problems.append(e)
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


def is_utf8(text: str) -> bool:
    # Text decoded with surrogateescape (and JSON's \ud800 escapes) carries lone surrogates.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_sidecar(blob: Blob) -> dict:
    data = blob.read()
    try:
        text = data.decode("utf-8-sig")
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


def _dedupe(named: list[tuple[str, Item]]) -> tuple[list[Item], list[Problem]]:
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


# --- folders ---


def image_files(root: Path, broken_links: list[Path] | None = None) -> list[Path]:
    """Image files under `root` (recursively, through linked folders too; hidden ones left out), sorted;
    links named as images whose target is gone are added to `broken_links` where it is given.

    os.walk rather than Path.rglob, which on Python 3.11 and 3.12 does not enter a linked folder: its images
    were left out without a word. A folder reached twice (a link back up the tree) is read once.
    """
    found, visited = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        identity = (os.stat(folder).st_dev, os.stat(folder).st_ino)
        if identity in visited:
            subfolders.clear()
            continue
        visited.add(identity)
        # sorted: a folder reached twice is kept under the first name in sorted order, whatever the disk's
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))  # hidden: not entered
        for name in files:
            path = Path(folder) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                if path.is_file():
                    found.append(path)
                elif broken_links is not None and path.is_symlink() and not path.exists():
                    broken_links.append(path)
    if broken_links is not None:
        broken_links.sort()
    return sorted(found)


def _list_folder(root: Path) -> Inputs:
    named: list[tuple[str, Item]] = []
    broken: list[Path] = []
    for path in image_files(root, broken):
        name = path.relative_to(root).as_posix()
        sidecars = tuple(Blob(s) for s in (_sidecar(path, ".txt"), _sidecar(path, ".json")) if s is not None)
        named.append((name, Item(name, Blob(path), sidecars=sidecars)))
    items, problems = _dedupe(named)
    # left out while listing (not inputs), so a dataset prepared before they were reported keeps its digest
    gone = [
        Problem(link.relative_to(root).as_posix(), UNREADABLE, f"a link to {os.readlink(link)}, which does not exist")
        for link in broken
    ]
    return Inputs("folder", root, items, problems + gone)


def _sidecar(image: Path, suffix: str) -> Path | None:
    """The caption file beside `image` with `suffix`, lower or upper case (x.txt, x.TXT), if there is one."""
    for candidate in (image.with_suffix(suffix), image.with_suffix(suffix.upper())):
        if candidate.is_file():
            return candidate
    return None


# --- WebDataset tars ---


def _split_key(member: str) -> tuple[str, str]:
    """'dir/cat.seg.jpg' -> ('dir/cat', 'seg.jpg'): WebDataset's key ends at the first dot of the base name."""
    folder, _, base = member.rpartition("/")
    stem, dot, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (suffix.lower() if dot else "")


@cache
def _tar_index(path: Path, mtime_ns: int, size: int) -> tuple[dict[str, list[tarfile.TarInfo]], str]:
    """Member name -> its entries (a tar may hold a name twice), read once per tar and version (its time and
    size), and what is wrong with the tar ("" if nothing). A damaged tar keeps the members before the damage."""
    index: dict[str, list[tarfile.TarInfo]] = {}
    last = None
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if info.offset_data + info.size > size:  # its header is whole, its data is cut
                    return index, _damage(info.name, last)
                if info.isfile():
                    index.setdefault(info.name, []).append(info)
                elif info.islnk() and info.linkname in index:  # tar stores a file's second name as a link
                    target = index[info.linkname][-1]  # an earlier member: the link has no data of its own
                    index.setdefault(info.name, []).append(target.replace(name=info.name, deep=False))
                last = info.name
            # tarfile ends quietly at a cut or broken header after the first: a whole tar ends in a zero block.
            with open(path, "rb") as f:
                f.seek(tar.offset)
                if f.read(512) != bytes(512):
                    return index, _damage(None, last)
    except (tarfile.TarError, EOFError) as e:
        return index, _damage(None, last, e)
    return index, ""


def _damage(member: str | None, last: str | None, error: Exception | None = None) -> str:
    what = f"{member} is cut short" if member else (f"{error}" if error else "no end-of-archive block")
    return f"damaged after member {last} ({what}); the members up to it are kept" if last else f"unreadable ({what})"


def _members(path: Path) -> tuple[dict[str, list[tarfile.TarInfo]], str]:
    """The readable members of a tar and what is wrong with it ("" if nothing), never raising.

    OSError is not cached: a tar made readable again (permissions) is read again."""
    try:
        stat = path.stat()
        return _tar_index(path, stat.st_mtime_ns, stat.st_size)
    except OSError as e:
        return {}, f"unreadable ({e.strerror or e})"


def _member_blob(tar: Path, info: tarfile.TarInfo) -> Blob:
    return Blob(tar, info.offset_data, info.size, info.name)


def _list_tar(tar: Path, prefix: str) -> tuple[list[tuple[str, Item]], str]:
    members, damage = _members(tar)
    by_key: dict[str, dict[str, list[tarfile.TarInfo]]] = {}
    for member, infos in members.items():
        key, suffix = _split_key(member)
        by_key.setdefault(key, {}).setdefault(suffix, []).extend(infos)
    named: list[tuple[str, Item]] = []
    for parts in by_key.values():
        sidecars = tuple(_member_blob(tar, parts[s][0]) for s in ("txt", "json") if s in parts)
        for suffix, infos in parts.items():
            if f".{suffix.rpartition('.')[2]}" not in IMAGE_SUFFIXES:
                continue
            # Each under its member's own spelling (IMG_1.JPG, not IMG_1.jpg): a manifest row written from the
            # name (pixart caption) must find the member again, and cat.JPG and cat.jpg are two images. A name
            # stored twice in one tar: every copy is listed, so the later ones are reported as duplicates.
            named.extend(
                (f"{prefix}{info.name}", Item(f"{prefix}{info.name}", _member_blob(tar, info), sidecars=sidecars))
                for info in infos
            )
    return named, damage


def _list_webdataset(paths: list[Path], root: Path) -> Inputs:
    named, damaged = [], []
    for tar in paths:
        name = tar.relative_to(root).as_posix()
        listed, damage = _list_tar(tar, f"{name}/")
        named.extend(listed)
        if damage:  # one bad shard of many: its readable members go on, the damage is counted
            damaged.append(Problem(name, BAD_TAR, damage))
    if not named and len(damaged) == len(paths):
        raise InputError(f"cannot read the tar {paths[0]}: {damaged[0].message}")
    items, problems = _dedupe(named)
    return Inputs("webdataset", root, items, damaged + problems)


# --- manifests ---


def resolve_image(text: str, base: Path) -> Blob:
    """A manifest's image path -> a Blob: a file, or a member of a tar ('shards/0.tar/cat.jpg').

    A path that names nothing still gives a Blob, whose read reports it as unreadable: a file as the
    system names the problem, a member of a tar that exists as a tar member not found.
    """
    path = Path(text) if os.path.isabs(text) else base / text
    if path.exists():
        return Blob(path)
    split = _tar_split(text, base)
    if split is None:
        return Blob(path)
    tar, member = split
    members, damage = _members(tar)
    if member in members:
        return _member_blob(tar, members[member][0])
    lost = f"; the tar is {damage}" if damage else ""  # the member may have been lost to the damage
    return Blob(tar, member=member, missing=f"tar member {member} not found in {tar}{lost}")


def _tar_split(text: str, base: Path) -> tuple[Path, str] | None:
    """(tar file, member) where `text` names a member of a tar that exists, else None.

    The suffix matches in any case, as listing finds shards (00000.TAR too), and the path keeps its own
    spelling. Each '.tar/' is tried in turn: a folder may be named 'x.tar' too."""
    for match in TAR_SPLIT.finditer(text):
        head, member = text[: match.end() - 1], text[match.end() :]
        tar = Path(head) if os.path.isabs(head) else base / head
        if member and tar.is_file():
            return tar, member
    return None


def _rows_jsonl(path: Path) -> list[tuple[int, dict | Problem]]:
    rows: list[tuple[int, dict | Problem]] = []
    # surrogateescape: a line with invalid UTF-8 still parses, and the caption check names the problem.
    # utf-8-sig drops a byte-order mark; rows split on "\n" only, since JSON strings may hold U+2028 or U+0085
    # (str.splitlines would cut there) and json.loads takes a trailing "\r" as whitespace.
    lines = path.read_bytes().decode("utf-8-sig", errors="surrogateescape").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append((number, Problem(where, BAD_ROW, f"not JSON ({e.msg})")))
            continue
        if not isinstance(row, dict):
            rows.append((number, Problem(where, BAD_ROW, "not a JSON object")))
            continue
        rows.append((number, row))
    return rows


def _rows_csv(path: Path) -> list[tuple[int, dict | Problem]]:
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return [(reader.line_num, {k: v for k, v in row.items() if k is not None}) for row in reader]


def manifest_rows(path: Path) -> list[tuple[int, dict | Problem]]:
    """(line number, row or Problem) of a JSONL or CSV manifest, in file order."""
    try:
        return _rows_jsonl(path) if path.suffix.lower() == ".jsonl" else _rows_csv(path)
    except OSError as e:
        raise InputError(f"cannot read the manifest {path}: {e.strerror or e}") from e
    except csv.Error as e:
        raise InputError(f"{path} is not a readable CSV file: {e}") from e


def image_column(row: dict) -> str | None:
    return next((c for c in IMAGE_COLUMNS if isinstance(row.get(c), str) and row[c].strip()), None)


def _list_manifest(path: Path) -> Inputs:
    # Absolute: item names (and so the inputs' digest a resumed prepare checks) must not depend on the
    # directory the command runs in, nor on how the manifest's path was written.
    base = Path(os.path.abspath(path.parent))
    named, problems = [], []
    columns_seen: set[str] = set()  # of the rows that name no image
    for number, row in manifest_rows(path):
        if isinstance(row, Problem):
            problems.append(row)
            continue
        column = image_column(row)
        if column is None:
            if not any(name in row for name in IMAGE_COLUMNS):  # (one there but empty: a broken row)
                columns_seen.update(str(name) for name in row)
            columns = " or ".join(IMAGE_COLUMNS)
            problems.append(Problem(f"{path.name}:{number}", BAD_ROW, f"no image column ({columns})"))
            continue
        text = row[column].strip()
        name = _manifest_name(text, base)
        named.append((name, Item(name, resolve_image(text, base), row=row)))
    if not named and columns_seen:  # no row has an image column: another tool's columns, not broken rows
        found = sorted(columns_seen)
        raise InputError(
            f"{path}: no row has an image column ({', '.join(IMAGE_COLUMNS)}); its columns are "
            f"{', '.join(found)}: rename the one holding each image's path"
        )
    items, duplicates = _dedupe(named)
    return Inputs("manifest", base, items, problems + duplicates)


def _manifest_name(text: str, base: Path) -> str:
    """A manifest path made canonical, so 'a/../cat.jpg' and './cat.jpg' are seen as the same image."""
    path = Path(os.path.normpath(text if os.path.isabs(text) else base / text))
    try:
        return path.relative_to(Path(os.path.normpath(base))).as_posix()
    except ValueError:
        return path.as_posix()


# --- any input ---


def is_tar(path: Path) -> bool:
    """A WebDataset shard: a .tar file, whatever the case of its suffix (00000.TAR too)."""
    return path.suffix.lower() == ".tar" and path.is_file()


def input_kind(path: Path) -> str:
    """'manifest', 'webdataset' or 'folder', from what `path` is."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in MANIFEST_SUFFIXES:
            return "manifest"
        if suffix == ".tar":
            return "webdataset"
        raise InputError(f"{path}: a file input must be a .jsonl or .csv manifest or a .tar shard")
    if path.is_dir():
        has_tars = any(is_tar(p) for p in path.iterdir())
        if not has_tars:
            return "folder"
        if image_files(path):  # one stray image would otherwise turn the tars into a one-image folder
            raise InputError(
                f"{path} holds both WebDataset .tar shards and image files: keep them in separate folders, "
                "or pass a single .tar"
            )
        return "webdataset"
    raise InputError(f"{path} does not exist")


def list_inputs(path: str | os.PathLike[str]) -> Inputs:
    """The items of an image folder, a JSONL/CSV manifest, or WebDataset tars (one, or a folder of them)."""
    path = Path(path)
    kind = input_kind(path)
    if kind == "manifest":
        inputs = _list_manifest(path)
    elif kind == "webdataset":
        tars = [path] if path.is_file() else sorted(p for p in path.iterdir() if is_tar(p))
        inputs = _list_webdataset(tars, path.parent if path.is_file() else path)
    else:
        inputs = _list_folder(path)
    if not inputs.items and not inputs.problems:
        raise InputError(
            f"{path} holds no inputs: expected images ({', '.join(sorted(IMAGE_SUFFIXES))}) with caption "
            "sidecars, a .jsonl/.csv manifest, or WebDataset .tar shards"
        )
    return inputs

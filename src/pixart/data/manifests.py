"""Manifests: `.jsonl` (one object per line) or `.csv` (with a header), one row per image.

The image column is `path`, `image` or `file_name`, relative to the manifest's folder or absolute; a
path may name a member of a tar (`shards/00000.tar/cat.jpg`). The other columns are caption fields.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

from pixart.data.items import BAD_ROW, Blob, InputError, Inputs, Item, Problem, dedupe
from pixart.data.tars import latest, member_blob, readable_members
from pixart.files import marked_encoding

IMAGE_COLUMNS = ("path", "image", "file_name")  # file_name: Hugging Face imagefolder's metadata.jsonl
MANIFEST_SUFFIXES = frozenset({".jsonl", ".csv"})
TAR_SPLIT = re.compile(r"\.tar/", re.IGNORECASE | re.ASCII)  # where a manifest path enters a tar, any case


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
    members, damage = readable_members(tar)
    info = latest(members, member)
    if info is not None:
        return member_blob(tar, info)
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


def _manifest_text(path: Path) -> str:
    """A manifest's text: UTF-8 (a byte-order mark dropped; bytes that are not UTF-8 kept as surrogates, for
    the caption check to name), or UTF-16 where its byte-order mark says so (as Windows tools save
    "Unicode" text): read as UTF-8, every row was a bad one and a CSV's column names letters and NULs."""
    data = path.read_bytes()
    if encoding := marked_encoding(data):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as e:
            raise InputError(f"{path} starts as {encoding.upper()} but is not ({e.reason}); save it as UTF-8") from None
    return data.decode("utf-8-sig", errors="surrogateescape")


def _rows_jsonl(path: Path) -> list[tuple[int, dict | Problem]]:
    rows: list[tuple[int, dict | Problem]] = []
    # surrogateescape: a line with invalid UTF-8 still parses, and the caption check names the problem.
    # utf-8-sig drops a byte-order mark; rows split on "\n" only, since JSON strings may hold U+2028 or U+0085
    # (str.splitlines would cut there) and json.loads takes a trailing "\r" as whitespace.
    lines = _manifest_text(path).split("\n")
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
    text = _manifest_text(path)
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


def list_manifest(path: Path) -> Inputs:
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
        if any("\t" in column or ";" in column for column in found):  # one column, named "image\talt"
            raise InputError(
                f"{path}: its columns are separated by tabs or semicolons ({', '.join(map(repr, found))}); a CSV "
                "manifest's are commas: save it as comma-separated CSV"
            )
        raise InputError(
            f"{path}: no row has an image column ({', '.join(IMAGE_COLUMNS)}); its columns are "
            f"{', '.join(found)}: rename the one holding each image's path"
        )
    items, duplicates = dedupe(named)
    return Inputs("manifest", base, items, problems + duplicates)


def _manifest_name(text: str, base: Path) -> str:
    """A manifest path made canonical, so 'a/../cat.jpg' and './cat.jpg' are seen as the same image."""
    path = Path(os.path.normpath(text if os.path.isabs(text) else base / text))
    try:
        return path.relative_to(Path(os.path.normpath(base))).as_posix()
    except ValueError:
        return path.as_posix()

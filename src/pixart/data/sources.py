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

import os
from pathlib import Path

from pixart.data.images import UNREADABLE
from pixart.data.items import IMAGE_SUFFIXES, Blob, InputError, Inputs, Item, Problem, dedupe
from pixart.data.manifests import MANIFEST_SUFFIXES, list_manifest
from pixart.data.tars import list_webdataset


def image_files(root: Path, broken_links: list[Path] | None = None) -> list[Path]:
    """Image files under `root` (recursively, through linked folders too; hidden ones left out), sorted;
    links named as images whose target is gone are added to `broken_links` where it is given.

    os.walk rather than Path.rglob, which on Python 3.11 and 3.12 does not enter a linked folder: its images
    were left out without a word. A folder reached twice (a link back up the tree) is read once.
    """
    found, visited = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=_refuse_unlisted):
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


def _refuse_unlisted(error: OSError) -> None:
    """os.walk's onerror: a folder that cannot be listed (no permission, a network file system's hiccup) had
    its images left out without a word, and the data prepared short."""
    raise OSError(
        error.errno,
        f"{error.strerror} (a folder of the input cannot be listed, and its images would be left out: make it "
        "readable, or move it out of the input)",
        error.filename,
    )


def _list_folder(root: Path) -> Inputs:
    named: list[tuple[str, Item]] = []
    broken: list[Path] = []
    for path in image_files(root, broken):
        name = path.relative_to(root).as_posix()
        sidecars = tuple(Blob(s) for s in (_sidecar(path, ".txt"), _sidecar(path, ".json")) if s is not None)
        named.append((name, Item(name, Blob(path), sidecars=sidecars)))
    items, problems = dedupe(named)
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
        inputs = list_manifest(path)
    elif kind == "webdataset":
        tars = [path] if path.is_file() else sorted(p for p in path.iterdir() if is_tar(p))
        inputs = list_webdataset(tars, path.parent if path.is_file() else path)
    else:
        inputs = _list_folder(path)
    if not inputs.items and not inputs.problems:
        # shards are read from the folder given only (a folder of them is a dataset): ones further down are named
        deeper = sorted({p.parent for p in path.rglob("*") if is_tar(p)}) if path.is_dir() else []
        where = f" (the .tar shards in {deeper[0]} are read when that folder is given: pass it)" if deeper else ""
        raise InputError(
            f"{path} holds no inputs: expected images ({', '.join(sorted(IMAGE_SUFFIXES))}) with caption "
            f"sidecars, a .jsonl/.csv manifest, or WebDataset .tar shards{where}"
        )
    return inputs

"""WebDataset shards: members grouped by key (`cat.jpg` with `cat.txt` and/or `cat.json`), read in place.

A damaged shard (cut short, a broken header) keeps the members before the damage, and says so.
"""

from __future__ import annotations

import tarfile
from functools import cache
from pathlib import Path

from pixart.data.items import BAD_TAR, EXTRA_IMAGE, IMAGE_SUFFIXES, Blob, InputError, Inputs, Item, Problem, dedupe


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


def readable_members(path: Path) -> tuple[dict[str, list[tarfile.TarInfo]], str]:
    """The readable members of a tar and what is wrong with it ("" if nothing), never raising.

    OSError is not cached: a tar made readable again (permissions) is read again."""
    try:
        stat = path.stat()
        return _tar_index(path, stat.st_mtime_ns, stat.st_size)
    except OSError as e:
        return {}, f"unreadable ({e.strerror or e})"


def member_blob(tar: Path, info: tarfile.TarInfo) -> Blob:
    return Blob(tar, info.offset_data, info.size, info.name)


def _list_tar(tar: Path, prefix: str) -> tuple[list[tuple[str, Item]], list[Problem], str]:
    """(name, item) of each image, the images left out, and what is wrong with the tar ("" if nothing).

    A sample's image is its member with a plain image suffix (cat.jpg); other images under its key (cat.seg.png,
    cat.depth.png: masks and maps) are left out and counted. A key with only dotted ones (photo.v2.jpg, a name
    with a dot in it) lists each, with photo.v2.txt as its caption where there is one, as a folder would."""
    members, damage = readable_members(tar)
    by_key: dict[str, dict[str, list[tarfile.TarInfo]]] = {}
    for member, infos in members.items():
        key, suffix = _split_key(member)
        by_key.setdefault(key, {}).setdefault(suffix, []).extend(infos)
    named: list[tuple[str, Item]] = []
    extra: list[Problem] = []
    for key, parts in by_key.items():
        images = [suffix for suffix in parts if f".{suffix.rpartition('.')[2]}" in IMAGE_SUFFIXES]
        plain = [suffix for suffix in images if "." not in suffix]
        for suffix in images:
            infos = parts[suffix]
            if plain and suffix not in plain:
                sample = ", ".join(f"{prefix}{key}.{image}" for image in plain)
                extra.extend(
                    Problem(f"{prefix}{info.name}", EXTRA_IMAGE, f"the sample's image is {sample}") for info in infos
                )
                continue
            inner = suffix.rpartition(".")[0]  # "v2" of photo.v2.jpg: its captions are photo.v2.txt/.json
            sides = [f"{inner}.{side}" for side in ("txt", "json")] if inner else []
            sides = [side for side in sides if side in parts] or [side for side in ("txt", "json") if side in parts]
            sidecars = tuple(member_blob(tar, parts[side][0]) for side in sides)
            # Each under its member's own spelling (IMG_1.JPG, not IMG_1.jpg): a manifest row written from the
            # name (pixart caption) must find the member again, and cat.JPG and cat.jpg are two images. A name
            # stored twice in one tar: every copy is listed, so the later ones are reported as duplicates.
            named.extend(
                (f"{prefix}{info.name}", Item(f"{prefix}{info.name}", member_blob(tar, info), sidecars=sidecars))
                for info in infos
            )
    return named, extra, damage


def list_webdataset(paths: list[Path], root: Path) -> Inputs:
    named, damaged = [], []
    for tar in paths:
        name = tar.relative_to(root).as_posix()
        listed, extra, damage = _list_tar(tar, f"{name}/")
        named.extend(listed)
        damaged.extend(extra)
        if damage:  # one bad shard of many: its readable members go on, the damage is counted
            damaged.append(Problem(name, BAD_TAR, damage))
    if not named and all(problem.reason == BAD_TAR for problem in damaged) and len(damaged) == len(paths):
        raise InputError(f"cannot read the tar {paths[0]}: {damaged[0].message}")
    items, problems = dedupe(named)
    return Inputs("webdataset", root, items, damaged + problems)

"""WebDataset shards: members grouped by key (`cat.jpg` with `cat.txt` and/or `cat.json`), read in place.

A damaged shard (cut short, a broken header) keeps the members before the damage, and says so.
"""

from __future__ import annotations

import posixpath
import tarfile
from functools import cache
from pathlib import Path

from pixart.data.images import UNREADABLE
from pixart.data.items import (
    BAD_TAR,
    DUPLICATE,
    EXTRA_IMAGE,
    IMAGE_SUFFIXES,
    Blob,
    InputError,
    Inputs,
    Item,
    Problem,
    dedupe,
)

NOT_THROUGH_FOLDERS = " (a link to a folder is not followed)"
MAX_LINK_HOPS = 40  # links to links: followed this far (Linux's limit), as a cycle must end somewhere


def _split_key(member: str) -> tuple[str, str]:
    """'dir/cat.seg.jpg' -> ('dir/cat', 'seg.jpg'): WebDataset's key ends at the first dot of the base name."""
    folder, _, base = member.rpartition("/")
    stem, dot, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (suffix.lower() if dot else "")


class TarMembers(dict[str, list[tarfile.TarInfo]]):
    """Member name (normalised: `./cat.png` and `cat.png` are one member, as `tar -x` writes one file) -> its
    entries in the tar's order, each with its own spelling (a tar updated with `tar -rf` holds a name
    twice: the last is the one `tar -x` gives), with `lost_links`: the members `tar -x` would not write (links
    that lead to no file in the tar, names with '..'), each with why."""

    def __init__(self) -> None:
        super().__init__()
        self.lost_links: dict[str, str] = {}


def member_key(name: str) -> str:
    """The member a tar name (or a manifest's path into a tar) means, as `tar -x` writes it: `./a//b.png` and
    `/a/b.png` are `a/b.png`."""
    return posixpath.normpath(name).lstrip("/")


# the first bytes of a compressed file, and the tool that undoes it: shards are read as plain tars (a member is
# found by its offset, which a compressed stream does not give)
COMPRESSIONS = {
    "gzip": (b"\x1f\x8b", "gzip -dc"),
    "bzip2": (b"BZh", "bzip2 -dc"),
    "xz": (b"\xfd7zXZ\x00", "xz -dc"),
    "zstd": (b"\x28\xb5\x2f\xfd", "zstd -dc"),
}


def compression_of(path: Path) -> str:
    """What compressed the file, with the command that undoes it, from its first bytes; "" if nothing did."""
    with open(path, "rb") as f:
        start = f.read(6)
    for compression, (mark, tool) in COMPRESSIONS.items():
        if start.startswith(mark):
            return f"{compression}-compressed: shards are plain tars; {tool} {path.name} > plain.tar"
    return ""


@cache
def _tar_index(path: Path, mtime_ns: int, size: int) -> tuple[TarMembers, str]:
    """The tar's members (TarMembers), read once per tar and version (its time and size), and what is wrong
    with the tar ("" if nothing). A damaged tar keeps the members before the damage."""
    index = TarMembers()
    lost: dict[str, str] = {}
    last = None
    damage = ""
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if info.offset_data + info.size > size:  # its header is whole, its data is cut
                    damage = _damage(info.name, last)
                    break
                key = member_key(info.name)
                if ".." in info.name.split("/") and (info.isfile() or info.issym() or info.islnk()):
                    lost[info.name] = "a member name with '..', which tar -x refuses to write"
                elif info.isfile() or info.issym():  # a symbolic link is followed once the whole tar is read
                    index.setdefault(key, []).append(info)
                elif info.islnk():  # tar stores a file's second name as a link to an earlier member
                    target = index.get(member_key(info.linkname))
                    if target:  # no data of its own: the target's entry as it is now (a symbolic link is
                        # followed later, from this name's folder), under its own name
                        index.setdefault(key, []).append(target[-1].replace(name=info.name, deep=False))
                    else:  # tar -x fails too: it links to what it has extracted so far
                        lost[key] = f"a hard link to {info.linkname}, which is no earlier member (tar -x fails on it)"
                last = info.name
            else:
                # tarfile ends quietly at a cut or broken header after the first: a whole tar ends in a zero block.
                with open(path, "rb") as f:
                    f.seek(tar.offset)
                    if f.read(512) != bytes(512):
                        damage = _damage(None, last)
    except (tarfile.TarError, EOFError) as e:
        # read as "bad checksum" at its first header: a compressed tar, named (not a plain tar's first member
        # named "BZh..."), with the way out
        damage = _damage(None, last, e) if last or not (packed := compression_of(path)) else f"unreadable ({packed})"
    lost.update(_follow_links(index))
    index.lost_links = {key: why for key, why in lost.items() if key not in index}  # else an earlier copy stands
    return index, damage


def _follow_links(index: TarMembers) -> dict[str, str]:
    """Give each member whose last entry is a link the data of the file it leads to in the tar, as the system
    reads a folder `tar -x` wrote. A member whose link leads nowhere there (an absolute path, one out of the
    tar, a cycle, a path through a link to a folder: not followed) is removed, earlier copies and all, as
    `tar -x` leaves a dangling link in their place. Returns those (name -> what the link names)."""
    newest = {key: entries[-1] for key, entries in index.items()}  # each followed on this: order does not matter
    found: dict[str, tarfile.TarInfo] = {}
    lost: dict[str, str] = {}
    for key, link in newest.items():
        if link.isfile():
            continue
        path, hops = key, 0
        entry: tarfile.TarInfo | None = link
        while entry is not None and not entry.isfile() and hops < MAX_LINK_HOPS:
            if entry.linkname.startswith("/"):  # the system's file, not the tar's
                entry = None
                break
            path = member_key(posixpath.join(posixpath.dirname(path), entry.linkname))
            entry = newest.get(path)
            hops += 1
        if entry is not None and entry.isfile():
            found[key] = entry.replace(name=link.name, deep=False)
        else:
            lost[key] = f"a link to {link.linkname}, which leads to no file member of this tar{NOT_THROUGH_FOLDERS}"
    for key, entry in found.items():
        index[key][-1] = entry
    for key in lost:
        del index[key]
    return lost


def _damage(member: str | None, last: str | None, error: Exception | None = None) -> str:
    what = f"{member} is cut short" if member else (f"{error}" if error else "no end-of-archive block")
    return f"damaged after member {last} ({what}); the members up to it are kept" if last else f"unreadable ({what})"


def readable_members(path: Path) -> tuple[TarMembers, str]:
    """The readable members of a tar and what is wrong with it ("" if nothing), never raising.

    OSError is not cached: a tar made readable again (permissions) is read again."""
    try:
        stat = path.stat()
        return _tar_index(path, stat.st_mtime_ns, stat.st_size)
    except OSError as e:
        return TarMembers(), f"unreadable ({e.strerror or e})"


def latest(members: TarMembers, name: str) -> tarfile.TarInfo | None:
    """The entry `tar -x` gives for member `name` (its last copy, however the tar spells it: `tar -cf x.tar
    -C dir .` stores ./name, while a manifest row written by hand says x.tar/name); None if there is none."""
    entries = members.get(member_key(name))
    return entries[-1] if entries else None


def member_blob(tar: Path, info: tarfile.TarInfo) -> Blob:
    return Blob(tar, info.offset_data, info.size, info.name)


def _list_tar(tar: Path, prefix: str) -> tuple[list[tuple[str, Item]], list[Problem], str]:
    """(name, item) of each image, the images left out, and what is wrong with the tar ("" if nothing).

    A sample's image is its member with a plain image suffix (cat.jpg); other images under its key (cat.seg.png,
    cat.depth.png: masks and maps) are left out and counted. A key with only dotted ones (photo.v2.jpg, a name
    with a dot in it) lists each, with photo.v2.txt as its caption where there is one, as a folder would."""
    members, damage = readable_members(tar)
    by_key: dict[str, dict[str, list[Blob]]] = {}
    for member, infos in members.items():
        key, suffix = _split_key(member)
        by_key.setdefault(key, {}).setdefault(suffix, []).extend(member_blob(tar, info) for info in infos)
    unwritten = " (or one lost to the tar's damage)" if damage else ""
    extra: list[Problem] = []
    for member, why in members.lost_links.items():  # what tar -x would not write: counted, or a caption unread
        key, suffix = _split_key(member)
        if f".{suffix.rpartition('.')[2]}" in IMAGE_SUFFIXES:
            extra.append(Problem(f"{prefix}{member}", UNREADABLE, f"{why}{unwritten}"))
        elif suffix.rpartition(".")[2] in ("txt", "json"):  # the sample is skipped for its unreadable caption
            blob = Blob(tar, member=member, missing=f"{prefix}{member}: {why}{unwritten}")
            by_key.setdefault(key, {}).setdefault(suffix, []).append(blob)
    named: list[tuple[str, Item]] = []
    for key, parts in by_key.items():
        images = [suffix for suffix in parts if f".{suffix.rpartition('.')[2]}" in IMAGE_SUFFIXES]
        plain = [suffix for suffix in images if "." not in suffix]
        for suffix in images:
            blobs = parts[suffix]
            if plain and suffix not in plain:
                sample = ", ".join(f"{prefix}{key}.{image}" for image in plain)
                extra.extend(
                    Problem(f"{prefix}{blob.name}", EXTRA_IMAGE, f"the sample's image is {sample}") for blob in blobs
                )
                continue
            inner = suffix.rpartition(".")[0]  # "v2" of photo.v2.jpg: its captions are photo.v2.txt/.json
            sides = [f"{inner}.{side}" for side in ("txt", "json")] if inner else []
            sides = [side for side in sides if side in parts] or [side for side in ("txt", "json") if side in parts]
            # A name stored twice (a tar updated with `tar -rf` or `-uf` appends the new copy): the last
            # copy, as `tar -x` gives it, for the image and its captions alike; the earlier are counted.
            sidecars = tuple(parts[side][-1] for side in sides)
            newest = {member_key(blob.name): blob for blob in blobs}  # ./cat.png and cat.png: one member
            extra.extend(
                Problem(f"{prefix}{blob.name}", DUPLICATE, "an earlier copy of a member stored again later in the tar")
                for blob in blobs
                if newest[member_key(blob.name)] is not blob
            )
            # Each under its newest entry's own spelling (IMG_1.JPG, not IMG_1.jpg): a manifest row written from
            # the name (pixart caption) must find the member again, and cat.JPG and cat.jpg are two images.
            named.extend(
                (f"{prefix}{blob.name}", Item(f"{prefix}{blob.name}", blob, sidecars=sidecars))
                for blob in newest.values()
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

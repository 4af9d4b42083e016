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

MAX_LINK_HOPS = 8  # a symbolic link to a link: followed this far, as a cycle must end somewhere


def _split_key(member: str) -> tuple[str, str]:
    """'dir/cat.seg.jpg' -> ('dir/cat', 'seg.jpg'): WebDataset's key ends at the first dot of the base name."""
    folder, _, base = member.rpartition("/")
    stem, dot, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (suffix.lower() if dot else "")


class TarMembers(dict[str, list[tarfile.TarInfo]]):
    """Member name -> its entries, in the tar's order (a tar updated with `tar -rf` holds a name twice: the
    last is the one `tar -x` gives), with `lost_links`: links that name no file in the tar (an absolute
    path, a path out of it, a cycle, a file lost to damage), each with what it names."""

    lost_links: dict[str, str]


@cache
def _tar_index(path: Path, mtime_ns: int, size: int) -> tuple[TarMembers, str]:
    """The tar's members (TarMembers), read once per tar and version (its time and size), and what is wrong
    with the tar ("" if nothing). A damaged tar keeps the members before the damage."""
    index = TarMembers()
    last = None
    damage = ""
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if info.offset_data + info.size > size:  # its header is whole, its data is cut
                    damage = _damage(info.name, last)
                    break
                if info.isfile() or info.issym():  # a symbolic link is followed once the whole tar is read
                    index.setdefault(info.name, []).append(info)
                elif info.islnk():  # tar stores a file's second name as a link to an earlier member
                    target = _entries(index, info.linkname)
                    if target and target[-1].isfile():  # no data of its own: the target's entry, renamed
                        info = target[-1].replace(name=info.name, deep=False)
                    index.setdefault(info.name, []).append(info)  # else followed with the symbolic links
                last = info.name
            else:
                # tarfile ends quietly at a cut or broken header after the first: a whole tar ends in a zero block.
                with open(path, "rb") as f:
                    f.seek(tar.offset)
                    if f.read(512) != bytes(512):
                        damage = _damage(None, last)
    except (tarfile.TarError, EOFError) as e:
        damage = _damage(None, last, e)
    index.lost_links = _follow_links(index)
    return index, damage


def _entries(index: dict[str, list[tarfile.TarInfo]], name: str) -> list[tarfile.TarInfo]:
    """The entries of member `name`, whether the tar spells it `name` or `./name` (tar -C dir .)."""
    return index.get(name) or index.get(f"./{name}") or index.get(name.removeprefix("./")) or []


def _follow_links(index: TarMembers) -> dict[str, str]:
    """Give each name whose last entry is a symbolic link the data of the file it names in the tar (as a
    folder of links reads; a later regular entry of the name is what tar -x gives, so it wins), in place;
    return the links that name no file (name -> target), dropped, to be counted rather than vanish."""
    lost = {}
    for name, entries in index.items():
        if entries[-1].isfile():
            continue
        first = link = entries[-1]
        hops = 0
        while (link.issym() or link.islnk()) and hops <= MAX_LINK_HOPS:
            # relative to the link's folder, as the system reads it; a hard link names its target from the root
            target = link.linkname if link.islnk() else posixpath.join(posixpath.dirname(link.name), link.linkname)
            found = _entries(index, posixpath.normpath(target))
            if not found:
                break
            link, hops = found[-1], hops + 1
        if link.isfile():
            entries[-1] = link.replace(name=name, deep=False)
        else:  # an absolute target, one out of the tar (../x), a cycle, or one lost to the damage
            entries.pop()
            lost[name] = first.linkname
    for name in [name for name, entries in index.items() if not entries]:
        del index[name]
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
        members = TarMembers()
        members.lost_links = {}
        return members, f"unreadable ({e.strerror or e})"


def latest(members: dict[str, list[tarfile.TarInfo]], name: str) -> tarfile.TarInfo | None:
    """The entry `tar -x` gives for `name` (its last copy), also as `./name` (`tar -cf x.tar -C dir .`
    stores every member so, while a manifest row written by hand says `x.tar/name`); None if neither."""
    entries = members.get(name) or members.get(f"./{name}")
    return entries[-1] if entries else None


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
    lost_to = " (or one lost to the tar's damage)" if damage else ""
    extra: list[Problem] = [
        Problem(f"{prefix}{name}", UNREADABLE, f"a link to {target}, which is no file in this tar{lost_to}")
        for name, target in members.lost_links.items()
        if posixpath.splitext(name)[1].lower() in IMAGE_SUFFIXES
    ]
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
            # A name stored twice (a tar updated with `tar -rf` or `-uf` appends the new copy): the last
            # copy, as `tar -x` gives it, for the image and its captions alike; the earlier are counted.
            sidecars = tuple(member_blob(tar, parts[side][-1]) for side in sides)
            newest = {info.name: info for info in infos}
            extra.extend(
                Problem(f"{prefix}{info.name}", DUPLICATE, "an earlier copy of a member stored again later in the tar")
                for info in infos
                if newest[info.name] is not info
            )
            # Each under its member's own spelling (IMG_1.JPG, not IMG_1.jpg): a manifest row written from the
            # name (pixart caption) must find the member again, and cat.JPG and cat.jpg are two images.
            named.extend(
                (f"{prefix}{name}", Item(f"{prefix}{name}", member_blob(tar, info), sidecars=sidecars))
                for name, info in newest.items()
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

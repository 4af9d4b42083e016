"""Where pixart keeps files of its own: the cache folder, and writes that are never seen half-done."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """$PIXART_CACHE, else ~/.cache/pixart: trained-once helpers (the shapes codec, the probe) live here."""
    return Path(os.environ.get("PIXART_CACHE", "~/.cache/pixart")).expanduser()


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """`write(tmp)` to a sibling temporary file, then rename it over `path`: a crash or a concurrent reader
    never sees a half-written file (the pid keeps two writers of the same file apart)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a write that failed (disk full, a bad value) leaves nothing behind
        raise


def remove_leftovers(folder: Path, pattern: str) -> list[Path]:
    """Delete the temporaries `atomic_write` left for files named like `pattern` (a glob) in `folder`.

    A writer killed mid-write (SIGKILL, preemption, power loss) cannot clean up after itself, and its
    temporary carries its pid, so no later write of the same file replaces it: for a checkpoint that is
    gigabytes. Call this only where this process alone writes such files, or it takes another writer's
    temporary from under it.
    """
    leftovers = sorted(Path(folder).glob(f".{pattern}.*.tmp"))
    for tmp in leftovers:
        tmp.unlink(missing_ok=True)
    return leftovers

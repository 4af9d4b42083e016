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
    write(str(tmp))
    os.replace(tmp, path)

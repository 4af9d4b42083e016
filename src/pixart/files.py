"""Where pixart keeps files of its own: the cache folder, and writes that are never seen half-done."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """$PIXART_CACHE, else ~/.cache/pixart: trained-once helpers (the shapes codec, the probe) live here."""
    return Path(os.environ.get("PIXART_CACHE", "~/.cache/pixart")).expanduser()


def temporary_path(path: Path, pid: int | None = None) -> Path:
    """Where `atomic_write` writes `path` first: a hidden sibling named after the writer's pid."""
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.tmp")


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """`write(tmp)` to a sibling temporary file, then rename it over `path`: a crash or a concurrent reader
    never sees a half-written file (the pid keeps two writers of the same file apart)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a write that failed (disk full, a bad value) leaves nothing behind
        raise


def write_json(path: Path, value, indent: int | None = 2) -> None:
    """`value` as JSON text in `path`, through atomic_write: no reader ever sees half of it. ASCII escapes
    (json's default): names of files that are not valid UTF-8 hold lone surrogates, which UTF-8 cannot write."""
    text = json.dumps(value, indent=indent) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def text_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """The lines of a text file, ended by "\n" or "\r\n" only (str.splitlines would also cut a line at
    U+2028, U+0085 or a form feed); the file's final newline ends the last line, it starts no empty one."""
    lines = [line.removesuffix("\r") for line in Path(path).read_text(encoding=encoding).split("\n")]
    return lines[:-1] if lines[-1] == "" else lines


def remove_leftovers(folder: Path, pattern: str) -> list[Path]:
    """Delete the temporaries killed writers left for files named like `pattern` (a glob) in `folder`.

    A writer killed mid-write (SIGKILL, preemption, power loss) cannot clean up after itself, and its
    temporary carries its pid, so no later write of the same file replaces it: for a checkpoint that is
    gigabytes. A temporary whose writer is still running on this machine (this process included) is
    left alone, so call this only where no other machine writes such files. Unnamed temporaries
    (`.name.tmp`, from versions before the pid was added) go too.
    """
    folder = Path(folder)
    candidates = [*folder.glob(f".{pattern}.*.tmp"), *folder.glob(f".{pattern}.tmp")]
    leftovers = sorted(tmp for tmp in set(candidates) if not _writer_alive(tmp))
    for tmp in leftovers:
        tmp.unlink(missing_ok=True)
    return leftovers


def _writer_alive(tmp: Path) -> bool:
    """Whether the pid in a `.name.<pid>.tmp` temporary is a running process (no pid: not alive)."""
    pid = tmp.name.rsplit(".", 2)[-2]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True

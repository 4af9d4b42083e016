"""Where pixart keeps files of its own: the cache folder, and writes that are never seen half-done."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def cache_dir() -> Path:
    """$PIXART_CACHE, else ~/.cache/pixart: trained-once helpers (the shapes codec, the probe) live here."""
    return Path(os.environ.get("PIXART_CACHE", "~/.cache/pixart")).expanduser()


OTHER_MACHINE_GRACE_S = 600  # another machine's temporary younger than this may still be being written


def host_tag() -> str:
    """This machine's name as it goes into a temporary's name (no dots or dashes, which delimit the name)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def temporary_path(path: Path, pid: int | None = None, host: str | None = None) -> Path:
    """Where `atomic_write` writes `path` first: a hidden sibling named after the writer's machine and pid.

    The machine too: processes on two machines sharing a disk (prepare's parts, say, each writing
    dataset.json) often have the same pid in containers, and one would rename the other's temporary.
    """
    return path.with_name(f".{path.name}.{host or host_tag()}-{os.getpid() if pid is None else pid}.tmp")


def ordinary_mode(folder: Path) -> int:
    """The permission bits open() gives a new file in `folder` (the umask, or the folder's default ACL),
    read off a probe file made and removed at once."""
    probe = folder / f".mode-probe.{host_tag()}-{os.getpid()}.tmp"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        probe.unlink()


def atomic_write(path: Path, write: Callable[[str], object], *, replace: bool = True) -> None:
    """`write(tmp)` to a sibling temporary file, then rename it over `path`: a crash or a concurrent reader
    never sees a half-written file (the pid keeps two writers of the same file apart). What `write` returns
    (a count of bytes, say) is ignored. With replace=False the file must be new: a `path` there by then (a
    second job writing the same output) is FileExistsError and left as it was, and the temporaries killed
    writers of `path` left behind go first (this call is the file's one writer).

    The bytes reach the disk before the rename, and the rename before this returns (fsync of the file,
    then of its folder): else after a power loss the new name could hold a zero-length file while a caller,
    trusting it, has already deleted the older copies (the trainer prunes old checkpoints after a save).
    """
    path = Path(path)
    if not replace and os.path.lexists(path):  # said now, not after the writing (gigabytes, for a model)
        raise FileExistsError(f"{path} already exists; it was kept and nothing was written")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not replace:
        remove_leftovers(path.parent, glob.escape(path.name))
    tmp = temporary_path(path)
    try:
        write(str(tmp))
        set_ordinary_mode(tmp)  # safetensors makes its files 0600: unreadable to the rest of a team
        fsync_path(tmp)
        if replace:
            os.replace(tmp, path)
        else:
            _rename_if_new(tmp, path)
    except BaseException as error:
        full = out_of_space(error, path.parent)  # asked while the temporary still fills the disk
        tmp.unlink(missing_ok=True)  # a write that failed (disk full, a bad value) leaves nothing behind
        if full:
            raise no_space_left(path) from error
        raise
    fsync_path(path.parent)


FULL_BELOW_BYTES = 1 << 20  # a write that failed with this little room left ran out of it


def out_of_space(error: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of disk space. Libraries say so in words of their own: safetensors "I/O
    error: No space left on device (os error 28)", DCP a CheckpointException holding that, and torch.save only
    "enforce fail ... unexpected pos" (a RuntimeError), so that one counts when the file system holding `folder`
    is full."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC and not error.filename  # a bare write()'s, which names no file
    if os.strerror(errno.ENOSPC) in str(error):
        return True
    if type(error) is not RuntimeError:  # torch's own; a ValueError of the writer's, a cancellation, are not
        return False
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW_BYTES
    except OSError:
        return False


def no_space_left(path: Path) -> OSError:
    """The error the CLI shows as one line ("No space left on device: PATH"), for a write that filled the disk."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _rename_if_new(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path` unless `path` exists, atomically where the file system links files (a link
    fails on an existing name, where rename would replace it), else checked just before."""
    taken = f"{path} appeared while this was written (another process writing it?): it was kept, this not saved"
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(taken) from None
    except OSError:  # no hard links here (some network and FAT file systems): a narrow window remains
        if os.path.lexists(path):
            raise FileExistsError(taken) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def atomic_folder(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` fills a sibling temporary folder, renamed onto `path` (absent, or an empty folder) once
    every file in it is on the disk: a killed writer leaves `path` as it was, never a folder of some of
    the files that a rerun would refuse as taken. The temporaries dead writers left beside it go first.

    An empty folder that cannot be renamed over (a mount point, a volume; the working directory, whose
    shell would be left in the replaced one) is written in place instead, in the order `write` writes
    (so it should write its marker file last), and emptied again if the writing fails."""
    path = Path(os.path.realpath(path))  # "." and a link to a folder: the folder they name
    if not _empty_or_absent(path):  # said now, not once every file is written (rename refuses it then)
        raise FileExistsError(_taken_folder(path))
    if path.is_dir() and path == Path(os.getcwd()).resolve():
        _write_in_place(path, write)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, glob.escape(path.name))
    tmp = temporary_path(path)
    try:
        tmp.mkdir()
        write(tmp)
        _sync_files(tmp)
        try:
            os.replace(tmp, path)  # rename(2) replaces an empty folder, and refuses one with files in it
        except OSError:
            if not _empty_or_absent(path):  # filled meanwhile, by another writer
                raise FileExistsError(_taken_folder(path)) from None
            if not path.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            _write_in_place(path, write)
            return
    except BaseException as error:
        full = out_of_space(error, path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise no_space_left(path) from error
        raise
    fsync_path(path.parent)


def _empty_or_absent(path: Path) -> bool:
    return not os.path.lexists(path) or (path.is_dir() and not any(path.iterdir()))


def _taken_folder(path: Path) -> str:
    what = "a folder holding files" if path.is_dir() else "a file"
    return f"{path} is {what}; a folder is written only where there is none, or an empty one: choose another name"


def _write_in_place(folder: Path, write: Callable[[Path], object]) -> None:
    """`write(folder)` into an empty folder, whose entries go again if it fails."""
    try:
        write(folder)
        _sync_files(folder)
    except BaseException as error:
        full = out_of_space(error, folder)
        for entry in folder.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        if full:
            raise no_space_left(folder) from error
        raise


def _sync_files(folder: Path) -> None:
    for item in folder.rglob("*"):
        if item.is_file():
            set_ordinary_mode(item)
            fsync_path(item)
    fsync_path(folder)


def set_ordinary_mode(path: Path) -> None:
    """Give `path` the permissions open() would have given it, where its writer chose others."""
    wanted = ordinary_mode(path.parent)
    if path.stat().st_mode & 0o777 != wanted:
        # a file system without permission bits refuses: the file stays as its writer made it
        with contextlib.suppress(OSError):
            os.chmod(path, wanted)


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str, *, replace: bool = True) -> None:
    """`text` in `path` through atomic_write (and its `replace`): no reader ever sees half of it."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text), replace=replace)


def write_json(path: Path, value: object, indent: int | None = 2, *, replace: bool = True) -> None:
    """`value` as JSON text in `path` (write_text). ASCII escapes (json's default): names of files that are
    not valid UTF-8 hold lone surrogates, which UTF-8 cannot write."""
    write_text(path, json.dumps(value, indent=indent) + "\n", replace=replace)


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None where there is none: no such file, unreadable, or not JSON."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # ValueError: JSONDecodeError, and bytes that are not UTF-8
        return None
    return value if isinstance(value, dict) else None


def marked_encoding(data: bytes) -> str | None:
    """The encoding a byte-order mark at the start of `data` names, UTF-32 or UTF-16 (Windows tools save
    "Unicode" text as UTF-16), else None. UTF-32 first: its little-endian mark begins with UTF-16's."""
    if data[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        return "utf-32"
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    return None


def text_lines(path: Path, encoding: str | None = "utf-8") -> list[str]:
    """The lines of a text file, ended by "\n" or "\r\n" only (str.splitlines would also cut a line at
    U+2028, U+0085 or a form feed); the file's final newline ends the last line, it starts no empty one.
    `encoding` None: UTF-16 or UTF-32 where a byte-order mark says so, else UTF-8 (a mark dropped)."""
    if encoding is None:
        data = Path(path).read_bytes()
        text = data.decode(marked_encoding(data) or "utf-8-sig")
    else:
        text = Path(path).read_text(encoding=encoding)
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if lines[-1] == "" else lines


def remove_leftovers(folder: Path, pattern: str, *, holding_lock: bool = False) -> list[Path]:
    """Delete the temporaries killed writers left for files named like `pattern` (a glob) in `folder`.

    A writer killed mid-write (SIGKILL, preemption, power loss) cannot clean up after itself, and its
    temporary carries its machine and pid, so no later write of the same file replaces it: for a
    checkpoint that is gigabytes. Call this only as those files' one writer (a run's main rank for its
    checkpoints, a shard's part for the shard): then another machine's temporary is a dead writer's (a
    run preempted and resumed on another node) once it is 10 minutes old, and of this machine's only those
    of running processes (this one included) are left alone. Unnamed temporaries (`.name.tmp`, from
    versions before the pid was added) go too.

    `holding_lock`: the caller holds a lock that no other writer of these files can hold at the same time (a
    training run's folder): every temporary of this machine is then a dead writer's, whatever its pid. A
    container restarted under the same host name runs its trainer under the same pid (1, say), whose killed
    save's gigabytes were otherwise kept as a live writer's, one more at every kill.
    """
    folder = Path(folder)
    # ".{pattern}.*.tmp" alone would take another file's too: the temporaries of "model.safetensors" for
    # those of "model". The part before the writer's tag (which holds no dot) must match `pattern`.
    tagged = [tmp for tmp in folder.glob(f".{pattern}.*.tmp") if fnmatch.fnmatchcase(_tagged_name(tmp), pattern)]
    candidates = [*tagged, *folder.glob(f".{pattern}.tmp")]
    leftovers = sorted(tmp for tmp in set(candidates) if not _writer_alive(tmp, holding_lock))
    for tmp in leftovers:
        if tmp.is_dir():  # an atomic_folder's
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return leftovers


def _tagged_name(tmp: Path) -> str:
    """The file a `.name.<tag>.tmp` temporary stands for: `name`."""
    return tmp.name[1:].rsplit(".", 2)[0]


def _writer_alive(tmp: Path, holding_lock: bool = False) -> bool:
    """Whether the writer of a `.name.<host>-<pid>.tmp` temporary may still run: on this machine, whether
    its pid runs (never, where the caller holds the files' lock); on another, whether it was written in the
    last OTHER_MACHINE_GRACE_S (see remove_leftovers). Older names carry a pid only (`.name.<pid>.tmp`,
    judged here) or nothing (`.name.tmp`, not alive)."""
    tag = tmp.name.rsplit(".", 2)[-2]
    host, _, pid = tag.rpartition("-")
    if host and host != host_tag():
        # Spared while recent: a run requeued on another node may overlap the old one's last save.
        return time.time() - tmp.stat().st_mtime < OTHER_MACHINE_GRACE_S
    if not pid.isdigit() or holding_lock:
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


class Busy(Exception):
    """Another process holds what this one would write (held_while_writing); its message says what to do."""


@contextlib.contextmanager
def held_while_writing(lock: Path, busy: str) -> Iterator[None]:
    """Hold `lock` (the kernel's flock, let go if the process dies) while the block writes what it guards;
    Busy(busy) if another process holds it: two runs into one output both passed their checks and wrote
    side by side. The lock file is removed at the end, before letting go (a run that waited then finds the
    output finished). On a file system without flock the block runs unguarded, as before."""
    import fcntl

    while True:
        handle = open(lock, "a")  # noqa: SIM115 (held open while the block runs)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise Busy(busy) from None
        except OSError:  # a file system without flock
            break
        # opened just before a finishing run removed the file: locked, it guards nothing (a run starting now
        # makes and locks a new one), so take the file that is there now
        if _same_file(handle, lock):
            break
        handle.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)

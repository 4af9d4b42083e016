"""One job at a time in a run folder, and one run folder for every process of a job.

Two jobs in one folder both resumed, both saved checkpoints and both appended to metrics.jsonl (a rerun
started while a killed torchrun's orphaned workers trained on). So the main rank holds an advisory lock,
the kernel's flock on `RUN_DIR/.lock`, while it trains: it goes with the process that holds it, a SIGKILL
included (the data loader's forked workers let go of their inherited copy as they start). Over NFS, flock
is the server's lock only where the mount lets it be (not with `local_lock=flock` or `all`).

The main rank also writes a random number into the lock file, and every other rank reads it back: nodes
that each had a run folder of their own (not shared) trained on, and only a resume found them apart.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch

from pixart.train.distributed import World, all_reduce_max
from pixart.train.errors import TrainingError

LOCK_FILE = ".lock"
SEEN_WAIT_SECONDS = 10.0  # a node's file-system cache may lag the main rank's write this long
_held: IO[str] | None = None  # this process's lock file, for forked data workers to close


@contextmanager
def exclusive_run(run_dir: Path, world: World) -> Iterator[None]:
    """Hold the run folder's lock while the block runs; TrainingError on every rank if another job holds it
    or if the ranks do not share the folder."""
    global _held
    handle, problem, token = None, "", 0
    if world.is_main:
        token = random.SystemRandom().getrandbits(52)  # exact in the float64 that carries it to the other ranks
        handle, problem = _lock(run_dir, token)
    # Every rank learns the main rank's answer: refused on one rank alone, the others would wait in a collective
    answer = torch.tensor([float(bool(problem)), float(token)], dtype=torch.float64, device=world.device)
    refused, token = (int(value) for value in all_reduce_max(answer, world).tolist())
    if refused:
        raise TrainingError(problem or f"the main process refused {run_dir} (its message says why)")
    _held = handle
    try:
        unseen = 0.0 if world.is_main else float(not _sees(run_dir, token))
        if all_reduce_max(torch.tensor([unseen], dtype=torch.float64, device=world.device), world).item():
            raise TrainingError(
                f"the processes do not share {run_dir}: some cannot read what the main process wrote there (a "
                "folder on each node's own disk?); under torchrun the run folder must be one folder that every "
                "node sees (a network file system): give such a --run-dir"
            )
        yield
    finally:
        _held = None
        if handle is not None:
            # Refused before it wrote anything: the folder is left empty, for the command to remove. (A job that
            # opened the file just now would lock the unlinked one: two starting at once, in a folder never used.)
            if [entry.name for entry in run_dir.iterdir()] == [LOCK_FILE]:
                (run_dir / LOCK_FILE).unlink()
            handle.close()  # releases the lock


def _lock(run_dir: Path, token: int) -> tuple[IO[str] | None, str]:
    """(the locked file, "") or (None, why not)."""
    try:
        handle = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held open while the run trains)
    except OSError as error:
        return None, f"cannot write in {run_dir} ({error.strerror}): give a --run-dir you can write in"
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().split("\n")[0].strip()
        handle.close()
        return None, (
            f"{run_dir} is being trained by another job{f' ({holder})' if holder else ''}: wait for it to finish or "
            "stop it, then rerun this command (it resumes from the last checkpoint); or use another --run-dir"
        )
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
            handle.close()
            return None, f"cannot lock {run_dir / LOCK_FILE} ({error.strerror}): give another --run-dir"
        # a file system without flock (NFS without its lock service, Lustre mounted noflock): train unguarded
        print(f"[pixart train] warning: {run_dir} cannot be locked ({error.strerror}); run one job in it at a time")
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n{token}\n")  # who trains here; the token
        handle.flush()
        os.fsync(handle.fileno())  # on a network file system, read by the other nodes next
    except OSError as error:  # a full disk: one line on every rank (the others had gloo's traceback), no .lock left
        handle.close()
        with contextlib.suppress(OSError):
            (run_dir / LOCK_FILE).unlink()
        return None, f"cannot write in {run_dir} ({error.strerror}): free some space, or give another --run-dir"
    return handle, ""


def _sees(run_dir: Path, token: int) -> bool:
    """Whether this process reads the main rank's token in the folder it was given (waiting out a lagging cache)."""
    deadline = time.monotonic() + SEEN_WAIT_SECONDS
    while True:
        try:
            if str(token) in (run_dir / LOCK_FILE).read_text().split("\n")[1:]:
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def forget_run_lock() -> None:
    """In a forked data worker: close the inherited lock file, which kept the lock after the main process died."""
    if _held is not None:
        _held.close()

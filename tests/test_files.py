"""Writes that are never seen half-done, and the cleanup of what a killed writer left."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pixart.files import (
    OTHER_MACHINE_GRACE_S,
    atomic_folder,
    atomic_write,
    ordinary_mode,
    remove_leftovers,
    temporary_path,
)
from pixart.train.checkpoint import list_checkpoints, save_checkpoint
from pixart.train.distributed import World


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "weights.bin"
    atomic_write(path, lambda tmp: Path(tmp).write_text("old"))

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]


def dead_pid() -> int:
    """The pid of a process that has exited (and been waited for)."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def test_remove_leftovers_takes_killed_writers_temporaries_only(tmp_path):
    dead = dead_pid()
    killed = [temporary_path(tmp_path / "step-0000002.pt", dead), temporary_path(tmp_path / "step-0000004.pt", dead)]
    older_version = tmp_path / ".step-0000006.pt.tmp"  # before temporaries carried the pid
    running = temporary_path(tmp_path / "step-0000008.pt")  # this process is still writing it
    other_file = temporary_path(tmp_path / "other.pt", dead)
    finished = tmp_path / "step-0000002.pt"
    for path in [*killed, older_version, running, other_file, finished]:
        path.write_text("x")
    removed = remove_leftovers(tmp_path, "step-*.pt")
    assert removed == sorted([*killed, older_version])
    assert sorted(tmp_path.iterdir()) == sorted([running, other_file, finished])


@pytest.mark.parametrize("links", [True, False])
def test_a_write_that_must_be_new_keeps_a_file_written_meanwhile_and_clears_killed_writers(
    tmp_path, monkeypatch, links
):
    """Two `pixart convert` to one --out both passed the "already exists" check and the slower silently
    replaced the other's file; a killed conversion's temporary (a checkpoint's size) stayed for good."""
    path = tmp_path / "out.safetensors"
    killed = temporary_path(path, dead_pid())
    killed.write_text("half")
    if not links:  # a file system without hard links: checked just before the rename
        monkeypatch.setattr(os, "link", lambda *_: (_ for _ in ()).throw(PermissionError("no links here")))

    def another_job_finishes_first(tmp: str) -> None:
        Path(tmp).write_text("ours")
        path.write_text("theirs")

    with pytest.raises(FileExistsError, match="appeared while this was written"):
        atomic_write(path, another_job_finishes_first, replace=False)
    assert path.read_text() == "theirs" and sorted(tmp_path.iterdir()) == [path]  # the killed writer's went too
    path.unlink()
    atomic_write(path, lambda tmp: Path(tmp).write_text("ours"), replace=False)
    assert path.read_text() == "ours" and sorted(tmp_path.iterdir()) == [path]


def test_temporaries_of_two_machines_differ_and_a_sole_writer_removes_another_machines(tmp_path):
    """Containers on two machines sharing a disk often run writers with the same pid: their temporaries
    must not collide. A run resumed on another node, the files' only writer, removes what it left."""
    dead = dead_pid()
    here, there = temporary_path(tmp_path / "step-2.pt", dead), temporary_path(tmp_path / "step-2.pt", dead, "n2")
    assert here != there
    running_elsewhere = temporary_path(tmp_path / "step-4.pt", os.getpid(), "n2")  # a live pid, but not ours
    running_here = temporary_path(tmp_path / "step-6.pt")
    recent_elsewhere = temporary_path(tmp_path / "step-8.pt", dead, "n3")  # maybe a requeued run's last save
    for path in (here, there, running_elsewhere, running_here, recent_elsewhere):
        path.write_text("x")
    old = time.time() - OTHER_MACHINE_GRACE_S - 60
    for path in (here, there, running_elsewhere):
        os.utime(path, (old, old))
    assert remove_leftovers(tmp_path, "step-*.pt") == sorted([here, there, running_elsewhere])
    assert sorted(tmp_path.iterdir()) == sorted([running_here, recent_elsewhere])


def test_a_checkpoint_save_deletes_what_a_killed_save_left(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "step-0000004.dcp.tmp").mkdir(parents=True)  # FSDP ranks killed mid-save
    (folder / "step-0000004.dcp.tmp" / "__0_0.distcp").write_bytes(b"half")
    temporary_path(folder / "step-0000004.pt", dead_pid()).write_bytes(b"half")  # one process killed mid-save
    save_checkpoint(tmp_path, 6, {"model": {"w": torch.ones(2)}, "step": 6}, World(), sharded=False, keep=2)
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000006.pt"]
    assert [step for step, _ in list_checkpoints(tmp_path)] == [6]
    assert torch.load(folder / "step-0000006.pt", weights_only=True)["step"] == 6


def test_checkpoints_past_step_ten_million_are_found_and_pruned(tmp_path):
    """Names are zero-padded to 7 digits; step 10,000,000 has 8, and the 7-digit pattern never resumed
    from it nor pruned it."""
    for step in (9_999_999, 10_000_000, 10_000_001):
        save_checkpoint(tmp_path, step, {"step": step}, World(), sharded=False, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [10_000_000, 10_000_001]


def record_syncs(monkeypatch) -> list[tuple[str, str]]:
    """("fsync", path) and ("replace", destination) in the order they happen, the calls still made."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd)
    )
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    return events


def test_atomic_write_syncs_the_file_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    """Else a power loss could leave the new name holding an empty file while a caller, trusting it, has
    already deleted the older copies (the trainer prunes old checkpoints after each save)."""
    events = record_syncs(monkeypatch)
    target = tmp_path / "state.json"
    atomic_write(target, lambda tmp: Path(tmp).write_text("{}"))
    tmp = str(temporary_path(target))
    assert events == [("fsync", tmp), ("replace", str(target)), ("fsync", str(tmp_path))]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # dcp in one process, as it says
def test_a_sharded_checkpoint_reaches_the_disk_before_older_ones_are_pruned(tmp_path, monkeypatch):
    """What the docstring of pixart.train.checkpoint promises for the FSDP layout too: its extra.pt (the RNG
    states) is synced inside the folder, and the folder's new name before the oldest checkpoint goes."""
    import shutil

    from pixart.train import checkpoint

    events = []
    real_fsync, real_rmtree = os.fsync, shutil.rmtree
    monkeypatch.setattr(
        os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd)
    )
    monkeypatch.setattr(shutil, "rmtree", lambda path, **kw: events.append(("prune", str(path))) or real_rmtree(path))
    for step in (2, 4):
        save_checkpoint(tmp_path, step, {"model": {"w": torch.ones(2) * step}}, World(), sharded=True, keep=1)
    folder = checkpoint.checkpoint_dir(tmp_path)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4]
    synced = [path for kind, path in events if kind == "fsync"]
    assert any("step-0000004.dcp.tmp/.extra.pt." in path for path in synced)  # atomic_write's temporary
    prune = next(i for i, (kind, _) in enumerate(events) if kind == "prune")
    written = max(i for i, (_, path) in enumerate(events) if "0000004.dcp.tmp" in path)
    assert ("fsync", str(folder)) in events[written:prune]  # after step 4's rename, before step 2's deletion


def test_a_checkpoint_folder_killed_while_being_pruned_no_longer_counts(tmp_path, monkeypatch):
    """A sharded checkpoint leaves the checkpoint names before it is deleted: a kill halfway through the
    deletion leaves a folder no resume picks, which the next save removes."""
    import shutil

    from pixart.train import checkpoint

    folder = tmp_path / "checkpoints"
    for step in (2, 4):
        (folder / f"step-{step:07d}.dcp").mkdir(parents=True)
        (folder / f"step-{step:07d}.dcp" / "__0_0.distcp").write_bytes(b"shard")

    class Killed(BaseException):
        pass

    def killed(path, *args, **kwargs):
        raise Killed  # the process dies before the folder is gone

    real_rmtree = shutil.rmtree
    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed)
    with pytest.raises(Killed):
        save_checkpoint(tmp_path, 6, {"step": 6}, World(), sharded=False, keep=1)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4, 6]  # step 2 is out of the names already
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)
    save_checkpoint(tmp_path, 8, {"step": 8}, World(), sharded=False, keep=1)
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000008.pt"]


def test_a_sharded_checkpoint_from_before_newer_state_entries_still_loads(tmp_path):
    """DCP refuses a template key the checkpoint lacks: the entries added since (non-finite steps in a row,
    the log window, the training time) take their defaults; a missing entry that matters is still an error."""
    import torch.distributed.checkpoint as dcp

    from pixart.train.checkpoint import load_checkpoint, rng_state

    path = tmp_path / "step-0000004.dcp"
    dcp.save({"model": {"w": torch.ones(2)}, "step": 4}, checkpoint_id=str(path))
    torch.save({"rng": rng_state()}, path / "extra.pt")
    template = {"model": {"w": torch.zeros(2)}, "step": 0, "log_window": [0.0, 0.0], "nonfinite_in_a_row": 0}
    state = load_checkpoint(path, template)
    assert state["step"] == 4 and torch.equal(state["model"]["w"], torch.ones(2)) and "log_window" not in state
    with pytest.raises(BaseException, match="Missing key in checkpoint state_dict: ema"):  # DCP wraps it
        load_checkpoint(path, {**template, "ema": {"w": torch.zeros(2)}})
    with pytest.raises(ValueError, match="is sharded: it loads into the live state dicts"):
        load_checkpoint(path)


def test_atomic_writes_get_the_permissions_of_ordinary_files(tmp_path):
    """safetensors creates its files 0600: features and weights written for a team were unreadable to it."""
    from safetensors.torch import save_file

    atomic_write(tmp_path / "w.safetensors", lambda tmp: save_file({"x": torch.zeros(2)}, tmp))
    (tmp_path / "plain.txt").write_text("x")
    mask = os.umask(0o022)
    os.umask(mask)
    mode = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert mode == 0o666 & ~mask
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "w.safetensors"]  # no probe left


def test_atomic_folder_appears_whole_or_not_at_all_and_clears_dead_writers_folders(tmp_path):
    out = tmp_path / "model"
    dead_writers = temporary_path(out, dead_pid())
    dead_writers.mkdir()
    (dead_writers / "weights.bin").write_text("half")
    running = temporary_path(tmp_path / "other")  # another folder's temporary, of a live writer
    running.mkdir()

    def two_files_then_fail(folder: Path) -> None:
        (folder / "a.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_folder(out, two_files_then_fail)
    assert sorted(tmp_path.iterdir()) == [running]  # the dead writer's temporary went, and this one's
    out.mkdir()  # an empty folder (made by a check of --out) is replaced
    atomic_folder(out, lambda folder: (folder / "a.json").write_text("{}"))
    assert sorted(p.name for p in out.iterdir()) == ["a.json"]
    assert oct((out / "a.json").stat().st_mode & 0o777) == oct(ordinary_mode(tmp_path))
    with pytest.raises(OSError):  # a folder with files in it is never replaced
        atomic_folder(out, lambda folder: (folder / "b.json").write_text("{}"))
    assert sorted(p.name for p in out.iterdir()) == ["a.json"]
    assert sorted(tmp_path.iterdir()) == sorted([out, running])


def test_atomic_folder_writes_through_a_link_into_the_working_folder_and_onto_a_mount_point(tmp_path, monkeypatch):
    """Renaming onto --out failed where writing into it had worked: a link to an empty folder ("Not a
    directory"), "." ("has an empty name") and a mount point ("Device or resource busy")."""
    import errno

    def two_files(folder: Path) -> None:
        (folder / "weights.bin").write_text("w")
        (folder / "config.json").write_text("{}")  # the marker, last

    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    atomic_folder(tmp_path / "link", two_files)
    assert (tmp_path / "link").is_symlink() and sorted(p.name for p in target.iterdir()) == [
        "config.json",
        "weights.bin",
    ]

    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    inode = os.stat(".").st_ino
    atomic_folder(Path("."), two_files)
    assert os.stat(".").st_ino == inode == here.stat().st_ino  # the shell's folder, not a replaced one
    assert sorted(p.name for p in here.iterdir()) == ["config.json", "weights.bin"]

    mount = tmp_path / "mount"
    mount.mkdir()
    real_replace = os.replace

    def busy(src, dst):
        if Path(dst) == mount:
            raise OSError(errno.EBUSY, "Device or resource busy", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", busy)

    calls = []

    def fails_after_one_file(folder: Path) -> None:  # in the temporary, then in place: there it fails
        calls.append(folder)
        (folder / "weights.bin").write_text("w")
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_folder(mount, fails_after_one_file)
    assert calls[1] == mount and list(mount.iterdir()) == []  # emptied again, and no temporary beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "link", "mount", "target"]
    atomic_folder(mount, two_files)
    assert sorted(p.name for p in mount.iterdir()) == ["config.json", "weights.bin"]


def test_under_a_lock_every_temporary_of_this_machine_is_a_dead_writers(tmp_path):
    """A container restarted under the same host name runs its trainer as the same pid (1): the temporary of
    its killed save looked like a live writer's and stayed, gigabytes more at every kill. A run folder's lock
    holder knows no other writer runs; another machine's recent temporary is still spared."""
    here = temporary_path(tmp_path / "step-8.pt")  # this very process's pid
    elsewhere = temporary_path(tmp_path / "step-8.pt", dead_pid(), "n2")  # another machine's, just written
    for tmp in (here, elsewhere):
        tmp.write_bytes(b"partial")
    assert remove_leftovers(tmp_path, "step-*.pt") == []  # no lock: this pid runs, so its writer may
    assert remove_leftovers(tmp_path, "step-*.pt", holding_lock=True) == [here]
    assert elsewhere.exists()


def test_remove_leftovers_of_one_name_leaves_another_files_temporaries(tmp_path):
    """ ".model.*.tmp" also matched ".model.safetensors.<host>-<pid>.tmp": the cleanup before a "model"
    folder's conversion deleted the temporary of a file written beside it."""
    dead = dead_pid()
    mine = temporary_path(tmp_path / "model", dead)
    other = temporary_path(tmp_path / "model.safetensors", dead)
    for path in (mine, other):
        path.write_text("x")
    assert remove_leftovers(tmp_path, "model") == [mine]
    assert list(tmp_path.iterdir()) == [other]


def test_a_lock_file_removed_between_open_and_lock_is_not_taken_for_the_lock(tmp_path, monkeypatch):
    """A run that opened the lock file just before the finishing run removed it locked the removed file, and
    a run starting then made and locked a new one: both wrote. It takes the file that is there now."""
    import fcntl

    from pixart.files import Busy, held_while_writing

    lock = tmp_path / ".out.lock"
    real_flock = fcntl.flock
    removed = []

    def finishing_run_removes_it_first(handle, operation):
        if not removed:  # the other run ends between this run's open and its lock
            lock.unlink()
            removed.append(True)
        return real_flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", finishing_run_removes_it_first)
    with held_while_writing(lock, "busy"):
        monkeypatch.setattr(fcntl, "flock", real_flock)
        assert removed and lock.exists()
        with pytest.raises(Busy, match="busy"), held_while_writing(lock, "busy"):  # a run starting now
            pass
    assert not lock.exists()


def test_a_write_that_fills_the_disk_is_an_oserror_naming_the_file_whatever_the_library_said(tmp_path, monkeypatch):
    """torch.save says a full disk in its own words ("enforce fail ... unexpected pos"), safetensors in others:
    both reached users as tracebacks. With the disk full they are ENOSPC naming the file, which the CLI prints
    in one line; with room left, a library's error is something else and stands."""
    import errno
    import shutil

    import pixart.files

    def torch_on_a_full_disk(tmp: str) -> None:
        Path(tmp).write_bytes(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    def into_folder(folder: Path) -> None:
        torch_on_a_full_disk(str(folder / "weights.bin"))

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(pixart.files.shutil, "disk_usage", lambda folder: usage._replace(free=4096))
    for write, path in [(atomic_write, tmp_path / "w.pt"), (atomic_folder, tmp_path / "model")]:
        with pytest.raises(OSError) as raised:
            write(path, into_folder if write is atomic_folder else torch_on_a_full_disk)
        assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(path))
        assert isinstance(raised.value.__cause__, RuntimeError)  # the library's words kept for a traceback's reader
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="non contiguous"):  # the writer's own error is not the disk's
        atomic_write(tmp_path / "w.pt", lambda tmp: (_ for _ in ()).throw(ValueError("non contiguous tensor")))
    monkeypatch.setattr(pixart.files.shutil, "disk_usage", lambda folder: usage._replace(free=10**10))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        atomic_write(tmp_path / "w.pt", torch_on_a_full_disk)


def test_real_writes_onto_a_full_disk_name_the_file_and_leave_nothing(tmp_path):
    """On a small tmpfs (root only, else skipped): safetensors, torch.save and a sharded (DCP) checkpoint."""
    import errno

    from helpers import small_disk
    from safetensors.torch import save_file

    disk = tmp_path / "disk"
    big = {"w": torch.zeros(512 * 1024)}  # 2 MiB, on a 1 MiB disk
    with small_disk(disk, kilobytes=1024):
        for name, write in [("a.safetensors", save_file), ("a.pt", torch.save)]:
            with pytest.raises(OSError) as raised:
                atomic_write(disk / name, lambda tmp, write=write: write(big, tmp))
            assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(disk / name))
            assert list(disk.iterdir()) == []
        with pytest.raises(OSError) as raised:
            save_checkpoint(disk / "run", 1, {"model": big}, World(), sharded=True, keep=1)
        assert raised.value.errno == errno.ENOSPC and raised.value.filename.endswith("step-0000001.dcp")
        assert list((disk / "run" / "checkpoints").iterdir()) == []  # its partial folder gone: the room is needed

"""The run folder's lock and the check that every process shares the folder (pixart.train.exclusive)."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import time

import pytest

from pixart.train import exclusive
from pixart.train.distributed import World
from pixart.train.errors import TrainingError


def test_a_forked_data_worker_lets_go_of_the_run_lock(tmp_path):
    """DataLoader workers are forked with the lock file open: after the trainer's SIGKILL they kept the lock,
    and a requeued job was refused until they noticed."""
    with exclusive.exclusive_run(tmp_path, World()):
        (tmp_path / "metrics.jsonl").write_text("")  # the folder is in use: its lock file stays
        ready, tell = os.pipe()
        child = os.fork()
        if child == 0:  # a worker: it starts, then outlives its trainer for a while
            exclusive.forget_run_lock()
            os.write(tell, b"1")
            time.sleep(30)
            os._exit(0)
        os.read(ready, 1)
    try:
        with open(tmp_path / exclusive.LOCK_FILE) as lock:  # the trainer is gone, its worker is not
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_file_system_without_locks_trains_with_a_warning(tmp_path, monkeypatch, capsys):
    """NFS without its lock service says ENOLCK: that was refused as "cannot write in" the folder."""

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(exclusive.fcntl, "flock", no_locks)
    with exclusive.exclusive_run(tmp_path, World()):
        (tmp_path / "metrics.jsonl").write_text("")
    assert f"warning: {tmp_path} cannot be locked (No locks available); run one job in it at a time" in (
        capsys.readouterr().out
    )


def test_the_main_rank_leaves_a_token_the_others_read_back(tmp_path, monkeypatch):
    """Nodes with a run folder each trained on; only a resume found them apart. Another rank reads the token
    the main rank wrote in the folder it was given; one that reads another (its own folder's) does not pass."""
    monkeypatch.setattr(exclusive, "SEEN_WAIT_SECONDS", 0.2)
    with exclusive.exclusive_run(tmp_path, World()):
        token = int((tmp_path / exclusive.LOCK_FILE).read_text().split("\n")[1])
        (tmp_path / "metrics.jsonl").write_text("")
        assert exclusive._sees(tmp_path, token) and not exclusive._sees(tmp_path, token + 1)
        assert not exclusive._sees(tmp_path / "elsewhere", token)


def test_a_rank_that_does_not_share_the_folder_stops_every_rank(tmp_path, monkeypatch):
    monkeypatch.setattr(exclusive, "_sees", lambda run_dir, token: False)
    refused = pytest.raises(TrainingError, match="the processes do not share .*: some cannot read what the main")
    with refused, exclusive.exclusive_run(tmp_path, World(rank=1, world_size=1)):
        pass


def test_a_full_disk_at_the_lock_is_one_refusal_that_leaves_no_lock_file(tmp_path, monkeypatch):
    """The lock's write failing (a full disk) escaped as an OSError before the ranks shared the main rank's
    answer: rank 1 printed gloo's "Connection closed by peer" traceback, and a new folder kept its .lock, so the
    command could not remove it (review)."""

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(exclusive.os, "fsync", disk_full)
    refused = pytest.raises(TrainingError, match=r"cannot write in .* \(No space left on device\): free some space")
    with refused, exclusive.exclusive_run(tmp_path, World()):
        pass
    assert list(tmp_path.iterdir()) == []

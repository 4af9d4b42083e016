"""Writes that are never seen half-done, and the cleanup of what a killed writer left."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixart.files import atomic_write, remove_leftovers
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


def test_remove_leftovers_takes_only_the_temporaries_of_matching_names(tmp_path):
    names = [".step-0000002.pt.4242.tmp", ".step-0000004.pt.17.tmp", ".other.pt.4242.tmp", "step-0000002.pt"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_leftovers(tmp_path, "step-*.pt")
    assert [p.name for p in removed] == names[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_a_checkpoint_save_deletes_what_a_killed_save_left(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "step-0000004.dcp.tmp").mkdir(parents=True)  # FSDP ranks killed mid-save
    (folder / "step-0000004.dcp.tmp" / "__0_0.distcp").write_bytes(b"half")
    (folder / ".step-0000004.pt.999999.tmp").write_bytes(b"half")  # one process killed mid-save
    save_checkpoint(tmp_path, 6, {"model": {"w": torch.ones(2)}, "step": 6}, World(), sharded=False, keep=2)
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000006.pt"]
    assert [step for step, _ in list_checkpoints(tmp_path)] == [6]
    assert torch.load(folder / "step-0000006.pt", weights_only=True)["step"] == 6

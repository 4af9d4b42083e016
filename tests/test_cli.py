"""The `pixart` entry point itself: device checks and the errors every subcommand shares."""

from __future__ import annotations

import pytest
import torch

from pixart.cli.main import UserError, check_device, main


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("bogus", "is not a device: use cpu, cuda or cuda:N"),
        ("mps", "pixart runs on cpu or cuda"),
        ("cuda:99", "CUDA device"),  # no CUDA at all, or not 100 of them
    ],
)
def test_a_device_this_machine_cannot_run_on_is_refused(device, message):
    with pytest.raises(UserError, match=message):
        check_device(device)
    check_device("cpu")
    check_device(None)  # the default: cuda when available


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused():
    with pytest.raises(UserError, match="sees no CUDA device; use cpu"):
        check_device("cuda")


def test_a_path_the_system_refuses_is_one_line_not_a_traceback(tmp_path, capsys):
    """An OSError of a user's path (here a file where the run folder goes) is the user's to fix."""
    (tmp_path / "file").write_text("not a folder")
    assert main(["train", "--recipe", "tiny", "--run-dir", str(tmp_path / "file" / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pixart train: error: ") and "Traceback" not in err and str(tmp_path / "file") in err

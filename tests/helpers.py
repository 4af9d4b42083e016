"""Helpers for tests (importable as `helpers`; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def thread_names() -> list[str]:
    """The names of this process's threads (gloo's are gloo_tcp_loop and pt_gloo_runloop), from /proc."""
    return [Path(f"/proc/self/task/{task}/comm").read_text().strip() for task in sorted(os.listdir("/proc/self/task"))]


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Give every parameter and floating buffer random values.

    The official init zeroes the output layer and cross-attention, which would make an equality test
    against another implementation pass trivially.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)
    return module


def varied_mask(batch: int, length: int, lengths: list[int]) -> torch.Tensor:
    """(B, L) float mask with the given numbers of valid leading tokens."""
    mask = torch.zeros(batch, length)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return mask


def run_quick_demo(out: Path) -> subprocess.CompletedProcess:
    """`pixart demo --quick --out OUT --no-progress` in a fresh process; its duration is not asserted (a test
    timed on a shared machine fails by chance)."""
    command = [sys.executable, "-m", "pixart", "demo", "--quick", "--out", str(out), "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@contextlib.contextmanager
def small_disk(folder: Path, kilobytes: int):
    """A file system of `kilobytes` mounted on `folder` (a tmpfs: needs root, else the test is skipped)."""
    folder.mkdir()
    try:
        made = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(folder)], capture_output=True, text=True
        )
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if made.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.strip()})")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)

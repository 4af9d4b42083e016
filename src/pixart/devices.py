"""Which devices pixart runs on, checked before anything loads."""

from __future__ import annotations

import torch


def device_problem(device: str | torch.device | None) -> str | None:
    """What is wrong with `device` on this machine (None: nothing, or no device named: the default).
    pixart runs on cpu and cuda[:N]; "gpu" or "mps" fell back to the CPU without a word, and "cuda" on a
    machine without CUDA failed deep inside torch ("no attribute '_cuda_setDevice'")."""
    if device is None:
        return None
    try:
        named = torch.device(device)
    except (RuntimeError, TypeError):
        return f"{device!r} is not a device: use cpu, cuda or cuda:N"
    if named.type not in ("cpu", "cuda"):
        return f"{device!r}: pixart runs on cpu or cuda"
    if named.type == "cuda":
        if not torch.cuda.is_available():
            return f"{device}: this machine's torch sees no CUDA device; use cpu"
        if named.index is not None and named.index >= torch.cuda.device_count():
            return f"{device}: there are {torch.cuda.device_count()} CUDA device(s)"
    return None

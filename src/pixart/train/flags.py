"""A step's non-finite and stop flags, acted on by the device at once and read by the host one step late.

Reading a flag back as soon as the step is queued (`.tolist()`) makes the host wait for the GPU to
finish the step, so the GPU idles while the host launches the next one: on an H100 that read cost 1.3%
of a 512 px step (BENCHMARKS.md). Instead the device skips a bad step by itself (fused AdamW takes a
`found_inf` flag, the EMA's weight is multiplied by its complement) and the host copies the flags
without waiting, reading step n's while the GPU runs step n+1. The bookkeeping that needs the flags
(the skipped-step count, the error after too many bad steps in a row, a stop asked for by a signal)
happens one step late; `settle` reads everything outstanding before a log row or a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepRecord:
    """What the host learns about step `step` (counted from 1) once its flags arrive."""

    step: int
    nonfinite_loss: bool
    nonfinite_grad: bool
    stop_requested: bool

    @property
    def skipped(self) -> bool:
        return self.nonfinite_loss or self.nonfinite_grad


def step_flags(loss: torch.Tensor, grad_norm: torch.Tensor, stop_requested: bool) -> torch.Tensor:
    """(3,) float flags on the loss's device: non-finite loss, non-finite gradient norm, stop asked for.

    `torch.full` fills on the device; `torch.tensor(value, device=cuda)` would copy from pageable host
    memory and wait for the stream.
    """
    stop = torch.full((), float(stop_requested), device=loss.device)
    return torch.stack([(~torch.isfinite(loss)).float(), (~torch.isfinite(grad_norm)).float(), stop])  # (3,)


def skip_flag(flags: torch.Tensor) -> torch.Tensor:
    """() 1.0 where the step must leave the weights alone, 0.0 where it may update them."""
    return flags[:2].amax()


def optimizer_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """Step a fused optimizer that itself leaves parameters, moments and step counts alone when `skip` is 1.

    `found_inf` is the attribute GradScaler hands fused Adam(W) for the same purpose.
    """
    optimizer.found_inf = skip
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


class DeferredFlags:
    """Hands each step's flags to the host one step later, without making the host wait for the device."""

    def __init__(self) -> None:
        self._pending: list[tuple[int, torch.Tensor, torch.cuda.Event | None]] = []

    def push(self, step: int, flags: torch.Tensor) -> list[StepRecord]:
        """Start copying step `step`'s flags to the host; returns the records of the steps before it."""
        if flags.device.type == "cuda":
            host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
            host.copy_(flags, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            self._pending.append((step, host, copied))
        else:  # a CPU tensor is already the host's
            self._pending.append((step, flags, None))
        return self._read(keep=1)

    def settle(self) -> list[StepRecord]:
        """The records of every step pushed and not yet read (waits for the device)."""
        return self._read(keep=0)

    def _read(self, keep: int) -> list[StepRecord]:
        records = []
        while len(self._pending) > keep:
            step, host, copied = self._pending.pop(0)
            if copied is not None:
                copied.synchronize()  # step n-1's copy: done long ago when the device runs behind
            loss, grad, stop = (bool(v) for v in host.tolist())
            records.append(StepRecord(step, loss, grad, stop))
        return records

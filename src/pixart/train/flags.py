"""A step's non-finite and stop flags, acted on by the device at once and read by the host one step late.

Reading a flag back as soon as the step is queued (`.tolist()`) makes the host wait for the GPU to
finish the step, so the GPU idles while the host launches the next one: on an H100 that read cost 1.3%
of a 512 px step (BENCHMARKS.md). Instead the device skips a bad step's optimizer update by itself
(fused AdamW takes a `found_inf` flag) and the host copies the flags without waiting. It reads step n's
once step n+1's forward and backward are queued, so the device has work while the host waits; the rest
of step n happens then, before step n+1's update changes the weights: its EMA update (skipped with the
step), the skipped-step count, the error after too many bad steps in a row, a stop asked for by a
signal. The trainer settles everything outstanding before a log row, a preview or a checkpoint.
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
    optimizer.found_inf = skip  # type: ignore[attr-defined]  # read by name, not declared by Optimizer
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]


class DeferredFlags:
    """Step flags copied to the host without waiting, and read when the host asks (see the module doc)."""

    def __init__(self) -> None:
        self._pending: list[tuple[int, torch.Tensor, torch.cuda.Event | None]] = []

    def push(self, step: int, flags: torch.Tensor) -> None:
        """Start copying step `step`'s flags to the host."""
        if flags.device.type == "cuda":
            host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
            host.copy_(flags, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            self._pending.append((step, host, copied))
        else:  # a CPU tensor is already the host's
            self._pending.append((step, flags, None))

    def settle(self) -> list[StepRecord]:
        """The records of every step pushed and not yet read, oldest first (waits for their copies)."""
        records = []
        for step, host, copied in self._pending:
            if copied is not None:
                copied.synchronize()
            loss, grad, stop = (bool(v) for v in host.tolist())
            records.append(StepRecord(step, loss, grad, stop))
        self._pending.clear()
        return records

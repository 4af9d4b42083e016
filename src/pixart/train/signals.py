"""Stopping a run cleanly: SIGTERM and SIGINT become a request the loop reads at a step's end (it then
checkpoints and exits), and the data loader's workers leave those signals to it."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class StopFlag:
    """SIGTERM / SIGINT ask the loop to checkpoint and exit at the end of the current step."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the first signal that asked
        self.previous: dict[int, Any] = {}  # signal -> the handler it had

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is not threading.main_thread():
            # Python lets the main thread alone set handlers ("signal only works in main thread"): a run
            # trained from another thread (a notebook's background job, a web app) keeps the process's own
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signum = self.signum or signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """A DataLoader worker ignores SIGTERM and SIGINT: the main process checkpoints, then ends its workers.
    torchrun, SLURM's scancel and systemd signal the whole process group, and a worker's default SIGTERM
    action killed it first: the loader's error then ended the run without its checkpoint."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

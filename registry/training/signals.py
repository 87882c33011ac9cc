"""Scheduler pre-emption: SIGTERM or SIGUSR1 asks the trainer to checkpoint and exit.

The handler only sets a flag; the loop checks it between steps, writes a checkpoint and exits with
`EXIT_PREEMPTED`, so a scheduler (or the sbatch script) can requeue the job and
`--resume latest` continues at the same step.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry" — requeue the job.
EXIT_PREEMPTED = 75
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Set by a pre-emption signal; read by the training loop between steps."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal_name = signal.Signals(signum).name


@contextmanager
def stop_on_preemption() -> Iterator[StopRequest]:
    """Catch SIGTERM/SIGUSR1 for the duration of the block (main thread only); restores the old handlers."""
    request = StopRequest()
    previous = {}
    try:
        for signum in PREEMPTION_SIGNALS:
            previous[signum] = signal.signal(signum, request._handle)
    except ValueError:  # not the main thread: leave signals to whoever owns them
        pass
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

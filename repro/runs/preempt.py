"""Preemption: stop at the next step boundary on a launcher's signal, so nothing since the last
checkpoint is lost.

SLURM sends SIGTERM on preemption and, with `--signal`, a USR signal before the time limit (submitit:
USR2, 120 s ahead); torchrun's agent forwards SIGTERM to its workers and kills them 30 s later. While a
run trains, each of `train.preempt_signals` only records that it came; the loop checks at every step
boundary (every rank agrees, repro.runs.dist.any_rank), rank 0 checkpoints, the summary says
`preempted at step s`, and the process exits with EXIT_PREEMPTED after handing the signal to the
launcher's own handler (submitit's requeues the job), so the next start continues with resume=auto.
"""

from __future__ import annotations

import signal
import sys

import torch

from repro.runs import dist

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: a temporary failure, to be retried


def signal_number(name: str) -> signal.Signals:
    """`SIGTERM` / `TERM` / `USR1` as a signal; ValueError for a name this platform lacks."""
    name = name.upper()
    return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]


class Preemption:
    """Within `with Preemption(names) as p:` the signals only set `p.signum`; on leaving, the previous
    handlers come back."""

    def __init__(self, names: list[str]):
        self.signals = [signal_number(n) for n in names]
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self.flag = None  # a tensor on the device, for the ranks' agreement

    def _handle(self, signum: int, frame) -> None:
        self.signum = self.signum or signum

    def __enter__(self) -> Preemption:
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum else None

    def requested(self, device) -> bool:
        """Whether to stop at this step boundary: a signal came to this process or, under torchrun or SLURM,
        to any rank (one tiny all-reduce a step while distributed, so every rank stops at the same step)."""
        if not dist.is_distributed():
            return self.signum is not None
        if self.flag is None:
            self.flag = torch.zeros(2, device=device)
        self.flag[0], self.flag[1] = float(self.signum is not None), float(self.signum or 0)
        dist.all_reduce_max(self.flag)
        if self.flag[0] and self.signum is None:
            self.signum = int(self.flag[1])
        return bool(self.flag[0])


def hand_over(name: str) -> None:
    """After a preempted run has saved itself: give the signal to the handler the launcher installed
    (submitit's checkpoints its job and requeues it, then exits), else exit with EXIT_PREEMPTED."""
    signum = signal_number(name)
    handler = signal.getsignal(signum)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signum, None)
    sys.exit(EXIT_PREEMPTED)

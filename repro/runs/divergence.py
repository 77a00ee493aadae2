"""When a run counts as diverged: a stated rule, the same for repro.train and repro.stacked.

The paper's "machine infinity" (§4.2.2): a training loss that is NaN or inf. Beyond it (issue 19), a loss
that explodes without overflowing: the mean training loss of a log window above `factor` x the loss of the
first step (the initial network on its first batch) for `logs` consecutive logged windows. Defaults
(train.diverge_factor=10, train.diverge_logs=3) are our choice; factor 0 keeps only NaN/inf.
"""

from __future__ import annotations

import torch


class DivergenceRule:
    """Watches each logged loss window of one network; `check` says at which step it diverged, if it did."""

    def __init__(self, factor: float, logs: int):
        self.factor, self.logs = factor, logs
        self.initial: float | None = None  # the first step's loss
        self.above = 0  # consecutive windows above factor x initial
        self.why = ""

    def check(self, window: torch.Tensor, done: int) -> int | None:
        """`window`: the per-step losses since the last log, ending at step `done` (a CPU tensor)."""
        bad = ~torch.isfinite(window)
        if bad.any():
            self.why = "the loss became NaN/inf"
            return done - len(window) + int(bad.nonzero()[0]) + 1
        if self.initial is None:
            self.initial = float(window[0])
        mean = float(window.mean())
        self.above = self.above + 1 if self.factor and mean > self.factor * self.initial else 0
        if self.logs and self.above >= self.logs:
            self.why = (f"the loss stayed above {self.factor:g} x its first-step value {self.initial:.4g} for "
                        f"{self.logs} consecutive logs (last {mean:.4g})")
            return done
        return None

    def state_dict(self) -> dict:
        return {"initial": self.initial, "above": self.above}

    def load_state_dict(self, s: dict) -> None:
        self.initial, self.above = s["initial"], s["above"]

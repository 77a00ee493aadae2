"""What a person follows while a run trains: a progress line at a steady cadence, or a tqdm bar, and
the run's own `train.log`.

- Without a terminal (a file, nohup, SLURM, CI) and in a parallel sweep, where bars of several workers
  would overwrite each other: one line per `logger.progress_every_s` seconds (and the first and last
  step), each naming its run: step, steps/s, ETA, the last loss and the last test accuracy.
- A single run on a terminal: a tqdm bar (`logger.progress=on` forces it, `off` silences the console).
- `train.log` in the run directory gets every `repro.*` log line of the run (data source, resume,
  progress lines, the result), also those logged before the directory existed.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger("repro.progress")

# ----------------------------------------------------------------------------------------------
# train.log


class RunLog(logging.Handler):
    """Holds the `repro` loggers' records until the run directory is known, then appends them and every
    later one to its train.log; `close` detaches it."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        self.held: list[logging.LogRecord] = []
        self.file = None
        self.logger = logging.getLogger("repro")
        self.level_before = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:  # unconfigured logging (tests, scripts): INFO still reaches the file
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)

    def open(self, run_dir: Path) -> None:
        self.file = open(Path(run_dir) / "train.log", "a")  # noqa: SIM115 - held for the run's lifetime
        for record in self.held:
            self.emit(record)
        self.held = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is None:
            self.held.append(record)
            return
        self.file.write(self.format(record) + "\n")
        self.file.flush()

    def write(self, message: str, level: int = logging.INFO) -> None:
        """A line for train.log only (what the console shows as a bar, or an error printed elsewhere)."""
        self.handle(logging.LogRecord("repro", level, __file__, 0, message, None, None))

    def close(self) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)
        if self.file is not None:
            self.file.close()
        super().close()


# ----------------------------------------------------------------------------------------------
# Progress


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def console_mode(setting: str) -> str:
    """bar | lines | off for `logger.progress` (auto: a bar only for a single run on a terminal)."""
    if setting == "auto":
        return "bar" if sys.stderr.isatty() and not _in_sweep() else "lines"
    return "bar" if setting == "on" else "off"


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Reports a run's logged steps on the console (bar or lines) and always in train.log."""

    def __init__(self, name: str, total: int, start: int, setting: str, every_s: float, run_log: RunLog | None):
        self.name, self.total, self.start, self.every_s, self.run_log = name, total, start, every_s, run_log
        self.mode = console_mode(setting) if run_log is not None else "off"  # only rank 0 reports
        self.t0 = self.t_line = time.perf_counter()
        self.step_line = start
        self.loss = self.acc = self.acc_step = None
        self.bar = (tqdm(total=total, initial=start, desc=name, unit="step", dynamic_ncols=True)
                    if self.mode == "bar" else None)

    def update(self, rec: dict) -> None:
        """One logged record of the run (step, loss, maybe test_acc)."""
        if self.run_log is None:
            return
        step = rec["step"]
        self.loss = rec.get("loss", self.loss)
        if "test_acc" in rec:  # between evaluations the last one stands, with its step
            self.acc, self.acc_step = rec["test_acc"], step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(self._numbers(), refresh=False)
        now = time.perf_counter()
        if step in (self.start, self.total) or now - self.t_line >= self.every_s:
            self._line(step, now)

    def _numbers(self) -> str:
        parts = [] if self.loss is None else [f"loss {self.loss:.4f}"]
        if self.acc is not None:
            parts.append(f"test acc {self.acc:.4f} (step {self.acc_step})")
        return ", ".join(parts)

    def _line(self, step: int, now: float) -> None:
        rate = (step - self.step_line) / (now - self.t_line) if step > self.step_line else None
        overall = (step - self.start) / (now - self.t0) if step > self.start else None
        eta = f"ETA {_duration((self.total - step) / overall)}" if overall else "ETA ?"
        speed = f"{rate:.2f} steps/s" if rate is not None else "- steps/s"
        numbers = self._numbers()
        line = f"{self.name}: step {step}/{self.total} ({100 * step / self.total:.0f}%), {speed}, {eta}" + \
            (f", {numbers}" if numbers else "")
        self.t_line, self.step_line = now, step
        if self.mode == "lines":
            log.info(line)  # the console and train.log
        else:
            self.run_log.write(line)  # the bar (or silence) on the console; the line in train.log

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

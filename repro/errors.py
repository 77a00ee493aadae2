"""User-facing errors: the CLI prints the one-line message and exits 2 instead of a traceback; a `-m`
sweep records a failed job's message, runs the other jobs and lists the failures at the end."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig


class ReproError(Exception):
    """A user-facing error: one line naming the problem and the fix. The CLI prints it and exits 2."""

    def __str__(self) -> str:
        # A DataLoader worker's error comes back with the worker's traceback as its message: keep its last line.
        msg = super().__str__()
        if "Original Traceback" in msg:
            msg = msg.strip().splitlines()[-1].split(": ", 1)[-1]
        return msg


class DataError(ReproError):
    """A dataset is missing, unreachable or corrupt."""


_NOISE = ("object_type=", "reference_type=", "Set the environment variable HYDRA_FULL_ERROR",
          "To append to your config use")  # Hydra's detail lines; its `+key` hint leads in a circle here


def one_line(e: BaseException) -> str:
    """Hydra's or OmegaConf's several-line message (and its cause's) as one line: what was wrong and the
    options where Hydra lists them."""
    parts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = ", ".join(line.strip() for line in str(e).split("Config search path")[0].splitlines()
                         if line.strip() and not line.strip().startswith(_NOISE) and "$VALUE" not in line)
        if text and text not in parts:
            parts.append(text.replace(":,", ":").rstrip(",").replace(".;", ";"))
        e = e.__cause__ or e.__context__
    return "; ".join(parts)


class SweepFailures(Callback):
    """A `-m` sweep goes on past a job that fails (main records the error in that job's directory);
    at the end it lists the failures and exits 1 (registered as hydra.callbacks in conf/config.yaml)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        jobs = sorted(Path(config.hydra.sweep.dir).glob("*/error.txt"), key=lambda p: p.parent.name)
        if jobs:
            lines = "\n".join(f"  job {p.parent.name}: {p.read_text().strip()}" for p in jobs)
            print(f"error: {len(jobs)} job(s) of this sweep failed:\n{lines}", file=sys.stderr)
            sys.exit(1)


def failed(message: str, code: int) -> None:
    """One line on stderr; a sweep job records it in its own Hydra directory and the sweep goes on."""
    print(f"error: {message}", file=sys.stderr)
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        sys.exit(code)
    out = Path(hc.runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "error.txt").write_text(f"{' '.join(hc.overrides.task)}: {message}\n")

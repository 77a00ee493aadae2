"""The Figure 1 map's launcher: `python -m repro.stacked --map LEDGER` (`make fig1-map`) runs the ledger's
grid (results/fig1/map/claims.yaml) as one `repro.stacked` process per net, side by side; the report
(repro.report.fig1_map) rebuilds the same overrides to select its runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

# How the map runs (the grid itself is in its ledger): evaluations and probes as the ledger says,
# checkpoints to resume from, one single-threaded process per net on a 2-core machine.
MAP_SETTINGS = ["train.log_every=500", "train.checkpoint_every=5000", "train.threads=1",
                "train.compile=true", "logger.wandb.mode=disabled", "logger.progress=off", "resume=auto"]


def map_commands(ledger: Path, extra: list[str]) -> list[list[str]]:
    """One `python -m repro.stacked` command per net of the ledger's grid (they share batch orders by seed)."""
    g = yaml.safe_load(Path(ledger).read_text())["grid"]
    grid = [f"optim.lr={','.join(map(str, g['lr']))}", f"model.init_std={','.join(map(str, g['init_std']))}",
            f"seed={','.join(map(str, g['seeds']))}", *schedule(g)]
    scale = [] if any(o.startswith("scale=") for o in extra) else ["scale=cpu"]
    return [[sys.executable, "-m", "repro.stacked", f"experiment={e}", *grid, *scale, *MAP_SETTINGS, *extra]
            for e in g["experiments"]]


def schedule(grid: dict) -> list[str]:
    """The ledger's steps, evaluations and probes as overrides."""
    return [f"train.steps={grid['steps']}", f"train.eval_every={grid['eval_every']}",
            f"train.probe_every={grid['probe_every']}"]


def run_map(ledger: Path, extra: list[str]) -> int:
    """Run the map's processes side by side; the exit status of the first that fails, else 0."""
    procs = [subprocess.Popen(c) for c in map_commands(ledger, extra)]
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)
